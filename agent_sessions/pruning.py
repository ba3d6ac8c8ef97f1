"""Where to cut a conversation so that what is kept stays valid model input.

Pure functions over decoded items; the storage layer only executes the cut. An entry of
``None`` stands for a stored row that could not be decoded: it counts towards the length
but is never a place to cut.

The rule, for a history longer than ``max_items``:

1. keep the longest suffix of length <= ``max_items`` that starts at a user message;
2. else keep the suffix from the newest user message (the current turn stays whole);
3. else (no user message at all) keep the longest suffix of length <= ``max_items`` that is
   *safe* to start at: no tool output or approval response is kept without its call or
   request, no call is dropped while its output is yet to arrive, the start does not follow a
   reasoning item, and the item there decodes;
4. else keep everything: pruning never empties a session and never breaks it.

In rules 1 and 2 a user message is passed over if starting there would keep a tool output
whose call it cuts away. That only happens when an approval was answered after the user
had moved on (a user message between a call and its output); without it the kept history
would hold an output the model rejects.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

Item = Mapping[str, Any]
"""A decoded session item (a JSON object)."""

_APPROVAL_REQUEST = "mcp_approval_request"
_APPROVAL_RESPONSE = "mcp_approval_response"


def is_user_message(item: Item | None) -> bool:
    """Return whether ``item`` is a message from the user (a turn starts there)."""
    return item is not None and item.get("role") == "user"


def pairing(item: Item | None) -> tuple[bool, str] | None:
    """Classify ``item`` as one half of a call/output pair.

    Returns:
        ``(True, key)`` for a call or approval request, ``(False, key)`` for a tool output or
        approval response, ``None`` for anything else. Halves of one pair share ``key``.
    """
    if item is None:
        return None
    kind = item.get("type")
    if kind == _APPROVAL_REQUEST:
        request = item.get("id")
        return None if request is None else (True, f"approval:{request}")
    if kind == _APPROVAL_RESPONSE:
        request = item.get("approval_request_id")
        return None if request is None else (False, f"approval:{request}")
    call_id = item.get("call_id")
    if isinstance(kind, str) and kind.endswith("_output"):
        # local_shell_call_output names its call by ``id``; the others by ``call_id``. An
        # output with neither (e.g. a hosted tool's, executed server-side) pairs with nothing.
        if call_id is None and kind == "local_shell_call_output":
            call_id = item.get("id")
        return None if call_id is None else (False, f"call:{call_id}")
    if call_id is not None:
        return True, f"call:{call_id}"
    return None


def _pairs(items: Sequence[Item | None]) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    calls: dict[str, list[int]] = {}
    outputs: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        half = pairing(item)
        if half is not None:
            is_call, key = half
            (calls if is_call else outputs).setdefault(key, []).append(index)
    return calls, outputs


def _orphaning_starts(items: Sequence[Item | None]) -> list[bool]:
    """For each index, whether a suffix starting there keeps an output but cuts its call."""
    orphaning = [False] * len(items)
    calls, outputs = _pairs(items)
    for key, positions in outputs.items():
        for output_at in positions:
            earlier = [call_at for call_at in calls.get(key, ()) if call_at < output_at]
            if earlier:
                for start in range(max(earlier) + 1, output_at + 1):
                    orphaning[start] = True
    return orphaning


def _unsafe_starts(items: Sequence[Item | None]) -> list[bool]:
    """For each index, whether a suffix starting there would break a pair or a reasoning item."""
    n = len(items)
    unsafe = _orphaning_starts(items)
    calls, outputs = _pairs(items)
    for key, positions in outputs.items():
        for output_at in positions:
            if not any(call_at < output_at for call_at in calls.get(key, ())):
                # Already without its call: any suffix that still holds it is invalid.
                for start in range(output_at + 1):
                    unsafe[start] = True
    for key, positions in calls.items():
        for call_at in positions:
            if not any(output_at > call_at for output_at in outputs.get(key, ())):
                # Its output has not arrived: dropping the call would orphan it later.
                for start in range(call_at + 1, n):
                    unsafe[start] = True
    for index, item in enumerate(items):
        if item is None:
            unsafe[index] = True
        elif item.get("type") == "reasoning" and index + 1 < n:
            unsafe[index + 1] = True
    return unsafe


def outputs_needing_stored_calls(batch: Sequence[Item]) -> dict[str, list[int]]:
    """Outputs in ``batch`` whose call is not earlier in the same batch, by pairing key.

    Their calls must already be stored; see the backends' ``append_items``.
    """
    called: set[str] = set()
    needing: dict[str, list[int]] = {}
    for position, item in enumerate(batch):
        half = pairing(item)
        if half is None:
            continue
        is_call, key = half
        if is_call:
            called.add(key)
        elif key not in called:
            needing.setdefault(key, []).append(position)
    return needing


def answers_late(batch: Sequence[Item], stored_calls: Collection[str]) -> bool:
    """Whether ``batch`` answers a call after a later user message (see ``late_call_index``).

    Within the batch, or for a stored call (its key in ``stored_calls``) with a user message
    earlier in the batch. A stored user message after a stored call is not seen here.
    """
    if late_call_index(batch) is not None:
        return True
    seen_user = False
    called: set[str] = set()
    for item in batch:
        half = pairing(item)
        if half is not None:
            is_call, key = half
            if is_call:
                called.add(key)
            # An output with role "user" counts as a user message after its own call.
            elif key not in called and key in stored_calls and (seen_user or is_user_message(item)):
                return True
        seen_user = seen_user or is_user_message(item)
    return False


def cut_index(items: Sequence[Item | None], max_items: int) -> int:
    """Index of the first item to keep when bounding ``items`` to ``max_items``.

    ``0`` means keep everything. See the module docstring for the rule.
    """
    if max_items < 1:
        raise ValueError(f"max_items must be at least 1, got {max_items}")
    n = len(items)
    if n <= max_items:
        return 0
    lowest = n - max_items
    orphaning = _orphaning_starts(items)
    for index in range(lowest, n):
        if is_user_message(items[index]) and not orphaning[index]:
            return index
    for index in range(lowest - 1, -1, -1):
        if is_user_message(items[index]) and not orphaning[index]:
            return index
    unsafe = _unsafe_starts(items)
    for index in range(lowest, n):
        if not unsafe[index]:
            return index
    return 0


def late_call_index(items: Sequence[Item | None]) -> int | None:
    """Index of the oldest call answered only after a later user message, or ``None``.

    An output that itself has role ``"user"`` counts as answered after a user message.

    While such a pair is stored, the cut must be chosen with ``cut_index`` on the whole
    history; otherwise the first user message in the window is always a valid cut.
    """
    calls, outputs = _pairs(items)
    late: int | None = None
    for key, positions in outputs.items():
        for output_at in positions:
            earlier = [call_at for call_at in calls.get(key, ()) if call_at < output_at]
            # Up to and including the output: one with role "user" would be a cut point
            # that keeps it without its call.
            if earlier and any(
                is_user_message(items[index]) for index in range(max(earlier) + 1, output_at + 1)
            ):
                late = max(earlier) if late is None else min(late, max(earlier))
    return late
