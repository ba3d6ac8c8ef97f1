"""Where to cut a conversation so that what is kept stays valid model input.

Pure functions over decoded items; the storage layer only executes the cut. An entry of
``None`` stands for a stored row that could not be decoded: it counts towards the length
but is never a place to cut.

The rule, for a history longer than ``max_items``:

1. keep the longest suffix of length <= ``max_items`` that starts at a user message;
2. else keep the suffix from the newest user message (the current turn stays whole);
3. else (no user message at all) keep the longest suffix of length <= ``max_items`` that is
   *safe* to start at (see ``is_safe_start``);
4. else keep everything: pruning never empties a session and never breaks it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
        return True, f"approval:{item.get('id')}"
    if kind == _APPROVAL_RESPONSE:
        return False, f"approval:{item.get('approval_request_id')}"
    call_id = item.get("call_id")
    if isinstance(kind, str) and kind.endswith("_output"):
        # local_shell_call_output names its call by ``id``; the others by ``call_id``.
        return False, f"call:{call_id if call_id is not None else item.get('id')}"
    if call_id is not None:
        return True, f"call:{call_id}"
    return None


def _unsafe_starts(items: Sequence[Item | None]) -> list[bool]:
    """For each index, whether a suffix starting there would break a pair or a reasoning item."""
    n = len(items)
    unsafe = [False] * n

    def forbid(first: int, last: int) -> None:
        for start in range(max(first, 0), min(last, n - 1) + 1):
            unsafe[start] = True

    calls: dict[str, list[int]] = {}
    outputs: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        half = pairing(item)
        if half is not None:
            is_call, key = half
            (calls if is_call else outputs).setdefault(key, []).append(index)
    for key, positions in outputs.items():
        for output_at in positions:
            # The output needs its call inside the suffix: a start after the latest earlier
            # call (or anywhere, if there is none) would keep the output alone.
            earlier = [call_at for call_at in calls.get(key, ()) if call_at < output_at]
            forbid(max(earlier) + 1 if earlier else 0, output_at)
    for key, positions in calls.items():
        for call_at in positions:
            if not any(output_at > call_at for output_at in outputs.get(key, ())):
                # Its output has not arrived: dropping the call would orphan it later.
                forbid(call_at + 1, n - 1)
    for index, item in enumerate(items):
        if item is None:
            unsafe[index] = True
        elif item.get("type") == "reasoning":
            forbid(index + 1, index + 1)
    return unsafe


def is_safe_start(items: Sequence[Item | None], start: int) -> bool:
    """Return whether ``items[start:]`` is valid history on its own.

    Safe means: no tool output or approval response is kept without its call or request, no
    call is dropped while its output is yet to arrive, ``start`` is not right after a
    reasoning item, and ``items[start]`` is a decodable item.
    """
    if not 0 <= start < len(items):
        return False
    return not _unsafe_starts(items)[start]


def outputs_needing_stored_calls(batch: Sequence[Item]) -> dict[str, list[int]]:
    """Outputs in ``batch`` whose call is not earlier in the same batch, by pairing key.

    Their calls must already be stored; see ``storage.append_items``.
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


def first_user_message(items: Sequence[Item | None], start: int = 0) -> int | None:
    """Index of the first user message at or after ``start``, or ``None``."""
    for index in range(start, len(items)):
        if is_user_message(items[index]):
            return index
    return None


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
    start = first_user_message(items, lowest)
    if start is not None:
        return start
    for index in range(lowest - 1, -1, -1):
        if is_user_message(items[index]):
            return index
    unsafe = _unsafe_starts(items)
    for index in range(lowest, n):
        if not unsafe[index]:
            return index
    return 0
