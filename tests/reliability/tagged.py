"""Tagged items for the reliability batteries: every item carries a unique tag, so a stored
history can be compared, item by item, with what the writers acknowledged.

A turn tagged ``t`` is a user message ``t:u``, then ``pairs`` function calls ``t:c1..`` with
outputs ``t:o1..``, then an assistant message ``t:a``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

Item = dict[str, Any]
T = TypeVar("T")


def user(tag: str) -> Item:
    return {"role": "user", "content": f"{tag}:u"}


def tool_batch(tag: str, pairs: int) -> list[Item]:
    """What a run adds after the user message: ``pairs`` calls with outputs, then a reply."""
    items: list[Item] = []
    for k in range(1, pairs + 1):
        call_id = f"{tag}:c{k}"
        items.append(
            {"type": "function_call", "call_id": call_id, "name": "lookup", "arguments": "{}"}
        )
        items.append({"type": "function_call_output", "call_id": call_id, "output": f"{tag}:o{k}"})
    items.append(
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": f"{tag}:a"}],
        }
    )
    return items


def tag_of(item: Item) -> str:
    if item.get("role") == "user":
        return str(item["content"])
    kind = item.get("type")
    if kind == "function_call":
        return str(item["call_id"])
    if kind == "function_call_output":
        return str(item["output"])
    return str(item["content"][0]["text"])


def is_user_tag(tag: str) -> bool:
    return tag.endswith(":u")


def bounded(history: Sequence[T], max_messages: int, starts_turn: Callable[[T], bool]) -> list[T]:
    """Reference pruning rule: the longest suffix <= max from a user message, else the last turn.

    Written independently of ``agent_sessions.pruning`` (histories here always hold a user
    message), so the batteries check the library against the rule, not against itself.
    """
    if len(history) <= max_messages:
        return list(history)
    starts = [i for i, entry in enumerate(history) if starts_turn(entry)]
    assert starts, "test bug: a history without user messages"
    fitting = [i for i in starts if len(history) - i <= max_messages]
    return list(history[min(fitting) if fitting else starts[-1] :])
