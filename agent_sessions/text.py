"""The readable text of an item: what titles and the search index are made from.

Only messages count, from the user and the assistant: tool calls, their arguments and
outputs, reasoning and hosted-tool payloads are not conversation text.
"""

from __future__ import annotations

from .pruning import Item

_TEXT_PART_TYPES = frozenset({"input_text", "output_text", "text"})
_TEXT_ROLES = frozenset({"user", "assistant"})


def item_text(item: Item | None) -> str | None:
    """The text of a user or assistant message, or ``None`` for any other item.

    A message's ``content`` is either a string or a list of parts; the text parts
    (``input_text``, ``output_text``) are joined with a space. Refusals, images and files are
    not text.
    """
    if item is None or item.get("role") not in _TEXT_ROLES:
        return None
    kind = item.get("type")
    if kind is not None and kind != "message":
        return None
    content = item.get("content")
    if isinstance(content, str):
        return content if content.strip() else None
    if not isinstance(content, list):
        return None
    texts = [
        part["text"]
        for part in content
        if isinstance(part, dict)
        and part.get("type") in _TEXT_PART_TYPES
        and isinstance(part.get("text"), str)
        and part["text"].strip()
    ]
    return " ".join(texts) if texts else None


def is_user_text(item: Item | None) -> bool:
    """Whether ``item`` is a user message with text (what a default title is made from)."""
    return item is not None and item.get("role") == "user" and item_text(item) is not None
