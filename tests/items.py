"""Item builders shared by the tests: the shapes the Runner writes, at their smallest.

``tests/test_pruning.py`` keeps its own, richer builders (ids, tool kinds, reasoning).
"""

from __future__ import annotations

from typing import Any

Item = dict[str, Any]


def user(text: str) -> Item:
    """A user message in the SDK's easy input form (what ``Runner.run("...")`` stores)."""
    return {"role": "user", "content": text}


def assistant(text: str) -> Item:
    """An assistant output message."""
    return {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text}],
    }


def call(call_id: str) -> Item:
    """A function call named ``lookup``."""
    return {"type": "function_call", "call_id": call_id, "name": "lookup", "arguments": "{}"}


def output(call_id: str) -> Item:
    """The output of the function call ``call_id``."""
    return {"type": "function_call_output", "call_id": call_id, "output": f"out-{call_id}"}
