"""PostgreSQL workload sizes: full (meant to finish within ~10 minutes on 2 cores) and quick.

Quick (under ~60 s) runs one round, and 4 processes instead of 8 (starting each one imports
the SDK, seconds of CPU); its figures only show that the suite works.
"""

from __future__ import annotations

from typing import Any

FULL: dict[str, dict[str, Any]] = {
    "round_trips": {},
    "turn_1task": {"turns": 300, "warmup": 20},
    "turn_16tasks": {"tasks": 16, "sessions": 100, "turns": 640, "warmup_per_task": 2},
    "get_items_200": {"items": 200, "ops": 1000, "warmup": 50},
    "open_per_request": {"sessions": 100, "items": 50, "ops": 500, "warmup": 20},
    "multiprocess": {"processes": 8, "duration_s": 10.0, "max_rounds": 3},
    "cleanup": {"idle": 100_000, "active": 1000, "items": 50},
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
    "round_trips": {},
    "turn_1task": {"turns": 40, "warmup": 5},
    "turn_16tasks": {"tasks": 16, "sessions": 100, "turns": 160, "warmup_per_task": 1},
    "get_items_200": {"items": 200, "ops": 200, "warmup": 20},
    "open_per_request": {"sessions": 20, "items": 50, "ops": 100, "warmup": 10},
    "multiprocess": {"processes": 4, "duration_s": 1.5, "max_rounds": 1},
    "cleanup": {"idle": 2000, "active": 20, "items": 50},
    "list_sessions": {"sessions": 5000, "per_user": 100, "items": 10, "users": 100, "warmup": 10},
    "delete_user": {"others": 1000, "sessions": 100, "items": [20], "repeats": 1},
}

ROUNDS = {"full": 5, "quick": 1}
