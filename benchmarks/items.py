"""Realistic session items: a turn is a user message, then a tool call, its output and a reply."""

from __future__ import annotations

import json
from typing import Any

Item = dict[str, Any]

PRELOAD_ITEMS = 190
"""Items already in a session when a turn workload starts: the 200-item cap is near."""


def user_message(n: int) -> Item:
    return {
        "role": "user",
        "content": f"Question {n}: where is my order #{100000 + n}, and can it still be changed "
        "to express delivery before Friday?",
    }


def run_items(n: int) -> list[Item]:
    """What a run adds after the user message: function_call, its output, the reply."""
    call_id = f"call_{n:08d}"
    return [
        {
            "type": "function_call",
            "id": f"fc_{n:08d}",
            "call_id": call_id,
            "name": "lookup_order",
            "arguments": json.dumps({"order_id": 100000 + n, "fields": ["status", "eta"]}),
            "status": "completed",
        },
        {
            "type": "function_call_output",
            "call_id": call_id,
            "output": json.dumps(
                {
                    "order_id": 100000 + n,
                    "status": "in_transit",
                    "carrier": "ACME Logistics",
                    "eta": "2026-11-27",
                    "history": [f"scanned at hub {k}" for k in range(6)],
                }
            ),
        },
        {
            "type": "message",
            "id": f"msg_{n:08d}",
            "role": "assistant",
            "status": "completed",
            "content": [
                {
                    "type": "output_text",
                    "annotations": [],
                    "text": f"Your order #{100000 + n} is in transit with ACME Logistics and "
                    "should arrive on 27 November. It can still be switched to express "
                    "delivery until Thursday noon; shall I do that for you?",
                }
            ],
        },
    ]


def turn(n: int) -> tuple[list[Item], list[Item]]:
    """The two ``add_items`` batches of turn ``n``, as the Runner writes them."""
    return [user_message(n)], run_items(n)


def history(count: int, start: int = 0) -> list[Item]:
    """``count`` items of whole turns (the oldest one shortened), starting at a user message."""
    items: list[Item] = []
    n = start
    while len(items) < count:
        user, run = turn(n)
        items.extend(user + run)
        n += 1
    head = len(items) - count  # drop from the oldest turn's run items, keep its user message
    return [items[0], *items[1 + head :]] if head else items
