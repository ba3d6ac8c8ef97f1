"""What an ``append_items`` batch tells the database, worked out once in Python.

The statements of a write are sent together, before any result comes back, so every decision
that depends only on the batch is made here (with the same ``pruning`` functions SQLite's
``sqlite.sql.append_items`` uses), and the database makes the ones that depend on what is stored.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence
from dataclasses import dataclass

from ...pruning import (
    Item,
    is_user_message,
    late_call_index,
    outputs_needing_stored_calls,
    pairing,
)
from ...search import folded_words, indexed_text


def search_columns(items: Sequence[Item | None]) -> tuple[list[str | None], list[str | None]]:
    """Each item's indexed text and its folded words (``None`` for items without text)."""
    texts = [indexed_text(item) for item in items]
    words = [None if text is None else " ".join(folded_words(text)) for text in texts]
    return texts, words


@dataclass(frozen=True)
class Batch:
    """Per-row columns and the late-call facts of one batch."""

    payloads: list[str]
    is_user: list[bool]
    call_keys: list[str | None]
    """The pairing key of each call or approval request, else ``None``."""
    answer_keys: list[str | None]
    """The pairing key of each tool output or approval response, else ``None``."""
    is_reasoning: list[bool]
    needs: list[str | None]
    """For each output whose call is not earlier in the batch: the key of the stored call it
    needs (it is left out if there is none)."""
    needing: dict[str, list[int]]
    """``pruning.outputs_needing_stored_calls``: positions of those outputs, by key."""
    answers_late: bool
    """The batch holds a call answered after a later user message (``late_call_index``)."""
    late_if_stored: list[str]
    """Keys whose stored call, if there is one, this batch answers after a user message."""
    search_text: list[str | None] | None
    """What is indexed of each item (``search_columns``); ``None``: nothing is indexed."""
    search_words: list[str | None] | None

    @classmethod
    def of(cls, items: Sequence[Item], payloads: Sequence[str], *, index: bool = True) -> Batch:
        """Classify ``items`` (``payloads[i]`` is the JSON text of ``items[i]``).

        With ``index``, their message text is prepared for the search index.
        """
        if len(items) != len(payloads):
            raise ValueError(f"{len(items)} items but {len(payloads)} payloads")
        is_user = [is_user_message(item) for item in items]
        call_keys: list[str | None] = []
        answer_keys: list[str | None] = []
        for item in items:
            half = pairing(item)
            call_keys.append(half[1] if half is not None and half[0] else None)
            answer_keys.append(half[1] if half is not None and not half[0] else None)
        needing = outputs_needing_stored_calls(items)
        needs: list[str | None] = [None] * len(items)
        for key, positions in needing.items():
            for position in positions:
                needs[position] = key
        # As pruning.answers_late sees a stored call: answered late if a user message comes
        # before its output in the batch, or the output is one itself.
        user_so_far = list(itertools.accumulate(is_user, operator.or_))
        late_if_stored = sorted(
            key
            for key, positions in needing.items()
            if any(user_so_far[position] for position in positions)
        )
        search_text, search_words = search_columns(items) if index else (None, None)
        return cls(
            payloads=list(payloads),
            is_user=is_user,
            call_keys=call_keys,
            answer_keys=answer_keys,
            is_reasoning=[item.get("type") == "reasoning" for item in items],
            needs=needs,
            needing=needing,
            answers_late=late_call_index(items) is not None,
            late_if_stored=late_if_stored,
            search_text=search_text,
            search_words=search_words,
        )

    def dropped(self, found: set[str]) -> tuple[list[str], int]:
        """The keys of outputs left out when only ``found`` calls are stored, and how many."""
        orphans = sorted(set(self.needing) - found)
        return orphans, sum(len(self.needing[key]) for key in orphans)
