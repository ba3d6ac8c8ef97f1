"""The item codec: items to the JSON text every backend stores, and stored text back to items.

Shared by every backend so that what one accepts, another stores byte for byte: encoding
refuses anything that would not read back as the same item, and decoding sets aside rows
that are not exactly one JSON object rather than failing the read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import InvalidItemError
from .pruning import Item

MAX_ITEM_DEPTH = 200
"""Deepest nesting of lists and objects accepted in an item.

Python's JSON decoder recurses once per level and fails past the interpreter's recursion
limit (about 1,000, less the caller's own stack), so a deeper item could be written but not
read back. SDK items nest a handful of levels.
"""


def _structure_problem(item: object) -> str | None:
    """Why ``item`` would not read back as it was written, or ``None`` if it would.

    Two things JSON itself does not catch: nesting deeper than ``MAX_ITEM_DEPTH``, and keys
    that become equal once converted to JSON strings (``{1: "a", "1": "b"}`` would come back
    as ``{"1": "b"}``, losing a value).
    """
    stack: list[tuple[object, int]] = [(item, 1)]
    while stack:
        value, level = stack.pop()
        if type(value) is dict or isinstance(value, dict):
            if level > MAX_ITEM_DEPTH:
                return f"nests deeper than {MAX_ITEM_DEPTH} levels; it could not be read back"
            keys = value.keys()
            if any(type(key) is not str for key in keys):
                converted = json.loads(json.dumps(dict.fromkeys(keys, 0)))
                if len(converted) < len(value):
                    return "has keys that are equal as JSON strings (e.g. 1 and '1')"
            stack.extend((child, level + 1) for child in value.values())
        elif isinstance(value, list | tuple):
            if level > MAX_ITEM_DEPTH:
                return f"nests deeper than {MAX_ITEM_DEPTH} levels; it could not be read back"
            stack.extend((child, level + 1) for child in value)
    return None


def encode_items(items: Iterable[Any]) -> list[str]:
    """Serialise items to JSON text, rejecting anything that would not read back as an item.

    Raises:
        InvalidItemError: naming the position of the first item that is not a JSON object, is
            not serialisable, nests deeper than ``MAX_ITEM_DEPTH`` or has keys that collide
            as JSON strings; nothing is written then.
    """
    payloads = []
    for position, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidItemError(
                f"item {position} is a {type(item).__name__}, not a dict (a JSON object)"
            )
        try:
            payload = json.dumps(item, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidItemError(f"item {position} cannot be stored as JSON: {exc}") from exc
        problem = _structure_problem(item)
        if problem is not None:
            raise InvalidItemError(f"item {position} {problem}")
        payloads.append(payload)
    return payloads


_DECODER = json.JSONDecoder()


def decode_item(data: object) -> Item | None:
    """Decode one stored row, or return ``None`` if it is not exactly one JSON object."""
    try:
        if isinstance(data, bytes):
            data = data.decode("utf-8")
        if not isinstance(data, str):
            return None
        # raw_decode skips json.loads' per-call set-up (most of its cost on small items);
        # the end offset proves the row holds one whole value and nothing after it.
        item, end = _DECODER.raw_decode(data)
        if end != len(data):
            item = json.loads(data)  # trailing whitespace is fine; anything else raises
    except (ValueError, RecursionError):
        return None
    return item if isinstance(item, dict) else None


@dataclass(frozen=True)
class DecodedRows:
    """Items decoded from stored rows, and the ids of rows that could not be decoded."""

    items: list[Item]
    corrupt_row_ids: list[int]


def decode_rows(rows: Iterable[tuple[int, object]]) -> DecodedRows:
    """Decode ``(row_id, message_data)`` rows in order, setting aside corrupt ones.

    Each row is decoded on its own, so no combination of corrupt rows can pass for items.
    """
    items: list[Item] = []
    corrupt: list[int] = []
    raw_decode = _DECODER.raw_decode
    for row_id, data in rows:
        # The common case inline (this loop is most of get_items' cost), the rest through
        # decode_item, which also handles bytes, trailing whitespace and errors.
        try:
            text = data.decode("utf-8") if type(data) is bytes else data
            item, end = raw_decode(text)  # type: ignore[arg-type]
            if end != len(text) or type(item) is not dict:  # type: ignore[arg-type]
                item = decode_item(text)
        except (ValueError, TypeError, RecursionError):  # UnicodeDecodeError is a ValueError
            item = decode_item(data)
        if item is None:
            corrupt.append(row_id)
        else:
            items.append(item)
    return DecodedRows(items, corrupt)
