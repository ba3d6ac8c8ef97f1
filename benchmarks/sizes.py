"""Workload sizes: full (about 10-15 minutes on 2 cores) and ``--quick`` (CI, under 90 s)."""

from __future__ import annotations

from typing import Any

FULL: dict[str, dict[str, Any]] = {
    "turn_1task": {"turns": 300, "warmup": 20},
    "turn_16tasks": {"tasks": 16, "sessions": 100, "turns": 640, "warmup_per_task": 2},
    "get_items_200": {"items": 200, "ops": 1000, "warmup": 50},
    "get_items_20": {"items": 200, "ops": 1000, "warmup": 50},
    "open_per_request": {"sessions": 100, "items": 50, "ops": 1000, "warmup": 50},
    "cleanup": {"idle": 100_000, "active": 1000, "items": 50},
    "multiprocess": {"processes": 4, "duration_s": 10.0, "max_rounds": 3},
    "memory": {"opens": 100_000, "turns": 10_000},
    "search": {"conversations": 1000, "items": 200, "ops": 500, "warmup": 25},
    "turn_search_index": {"turns": 300, "warmup": 20},
    "list_sessions": {
        "sessions": 100_000,
        "per_user": 100,
        "items": 20,
        "users": 1000,
        "warmup": 50,
    },
    "delete_user": {"others": 20_000, "sessions": 1000, "items": [20, 200], "repeats": 3},
}

QUICK: dict[str, dict[str, Any]] = {
    "turn_1task": {"turns": 60, "warmup": 5},
    "turn_16tasks": {"tasks": 16, "sessions": 100, "turns": 160, "warmup_per_task": 1},
    "get_items_200": {"items": 200, "ops": 300, "warmup": 20},
    "get_items_20": {"items": 200, "ops": 300, "warmup": 20},
    "open_per_request": {"sessions": 50, "items": 50, "ops": 300, "warmup": 20},
    "cleanup": {"idle": 2000, "active": 1000, "items": 50},
    "multiprocess": {"processes": 4, "duration_s": 2.0, "max_rounds": 1},
    "memory": {"opens": 10_000, "turns": 1000},
    "search": {"conversations": 100, "items": 50, "ops": 100, "warmup": 10},
    "turn_search_index": {"turns": 60, "warmup": 5},
    "list_sessions": {"sessions": 5000, "per_user": 100, "items": 10, "users": 100, "warmup": 10},
    "delete_user": {"others": 1000, "sessions": 100, "items": [20], "repeats": 1},
}

ROUNDS = {"full": 5, "quick": 2}
