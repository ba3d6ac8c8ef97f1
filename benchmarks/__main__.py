"""``python -m benchmarks``: run the workloads, print markdown tables, write a JSON file.

Candidates (``benchmarks/candidates.py``): ``agent`` (AgentSession, pruning at 200), ``sdk``
(SQLiteSession), ``sdk_async`` (AsyncSQLiteSession), and two plain-sqlite3 baselines running
the library's own statements in the event-loop thread, with and without pruning.

With ``--postgres [URL]`` it runs the PostgreSQL suite instead (``benchmarks/postgres/``):
``PostgresSession`` against the SDK's ``SQLAlchemySession`` on one server, in a database made
for the run; URL defaults to ``AGENT_SESSIONS_TEST_PG_URL``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latest.json"


def workloads() -> dict[str, Callable[[Any], Any]]:
    from . import cleanup, conversations, memory, multiprocess, reads, search, turns

    return {
        "turn_1task": turns.turn_1task,
        "turn_16tasks": turns.turn_16tasks,
        "get_items_200": reads.get_items_200,
        "get_items_20": reads.get_items_20,
        "open_per_request": reads.open_per_request,
        "cleanup": cleanup.cleanup,
        "multiprocess": multiprocess.multiprocess,
        "memory": memory.memory,
        "search": search.search,
        "turn_search_index": search.turn_search_index,
        "list_sessions": conversations.list_sessions,
        "delete_user": conversations.delete_user,
    }


def parse_args(
    argv: list[str] | None, names: list[str], postgres_names: list[str] | None = None
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes (CI; SQLite under ~90 s, PostgreSQL under ~60 s)",
    )
    parser.add_argument(
        "--postgres",
        nargs="?",
        const=os.environ.get("AGENT_SESSIONS_TEST_PG_URL") or "",
        metavar="URL",
        help="run the PostgreSQL suite on this server instead (default: "
        "$AGENT_SESSIONS_TEST_PG_URL; the role needs CREATEDB): 5 rounds, quick 1; results "
        f"to results/postgres-latest.json; its workloads: {', '.join(postgres_names or [])}",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="rounds per workload (default 5, quick 2; multiprocess at most 3, quick 1; "
        "cleanup and memory run once)",
    )
    parser.add_argument(
        "--only", help=f"comma-separated workloads to run, from: {', '.join(names)}"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.postgres is not None:
        if not args.postgres:
            parser.error("--postgres needs a URL (or set AGENT_SESSIONS_TEST_PG_URL)")
        names = postgres_names or []
    if args.only:
        chosen = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in chosen if name not in names]
        if unknown:
            parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {names}")
        args.only = chosen
    return args


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_revision() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "agent_sessions"],
            cwd=root,
            capture_output=True,
            text=True,
        )
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + (" (agent_sessions modified)" if dirty.stdout.strip() else "")


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "openai_agents": _version("openai-agents"),
        "aiosqlite": _version("aiosqlite"),
        "agent_sessions": _version("agent-sessions"),
        "git": _git_revision(),
        "load_average_at_start": os.getloadavg(),
    }


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def main(argv: list[str] | None = None) -> int:
    os.environ["OPENAI_AGENTS_DISABLE_TRACING"] = "1"
    from . import candidates, sizes, targets
    from .core import Context
    from .postgres import sizes as postgres_sizes

    available = workloads()
    args = parse_args(argv, list(available), list(postgres_sizes.FULL))
    if args.postgres is not None:
        from .postgres.suite import run  # needs psycopg and SQLAlchemy

        return run(args)
    # Import everything now, so no workload's first candidate pays for the imports.
    import agents  # noqa: F401
    from agents.extensions.memory import AsyncSQLiteSession  # noqa: F401

    from agent_sessions import AgentSession  # noqa: F401

    mode = "quick" if args.quick else "full"
    rounds = args.rounds or sizes.ROUNDS[mode]
    chosen = args.only or list(available)
    started = time.perf_counter()
    info = machine()

    print(f"# agent_sessions benchmarks ({mode}, {rounds} round(s))\n")
    print(
        f"machine: {info['cores']} cores ({info['usable_cores']} usable), {info['platform']}; "
        f"Python {info['python']}, SQLite {info['sqlite']}, openai-agents "
        f"{info['openai_agents']}, aiosqlite {info['aiosqlite']}, agent_sessions "
        f"{info['agent_sessions']} at {info['git']}; load average at start "
        f"{info['load_average_at_start'][0]:.2f}\n"
    )
    print("candidates:")
    for name, description in candidates.DESCRIPTIONS.items():
        print(f"- `{name}`: {description}")
    print(
        "\nrates and latencies are medians over rounds; 'x sdk' and 'x baseline_prune' are "
        "medians of the ratios taken within each round\n",
        flush=True,
    )

    tmp = Path(tempfile.mkdtemp(prefix="agent-sessions-bench-"))
    ctx = Context(
        quick=args.quick, rounds=rounds, tmp=tmp, sizes=sizes.QUICK if args.quick else sizes.FULL
    )
    sections = {}
    try:
        for name in chosen:
            print(f"  .. {name}", file=sys.stderr, flush=True)
            began = time.perf_counter()
            section = available[name](ctx)
            section.seconds = time.perf_counter() - began
            sections[name] = section
            print(f"## {section.title}\n")
            print(markdown_table(section.headers, section.rows))
            for note in section.notes:
                print(f"\n- {note}")
            print(f"\n({section.seconds:.1f} s)\n", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    verdicts = targets.evaluate(sections)
    print("## targets\n")
    for verdict in verdicts:
        print(verdict.line())
    total = time.perf_counter() - started
    info["load_average_at_end"] = os.getloadavg()
    report = {
        "mode": mode,
        "rounds": rounds,
        "machine": info,
        "sizes": {name: ctx.sizes[name] for name in chosen},
        "started_unix": time.time() - total,
        "seconds": total,
        "targets": [verdict.as_dict() for verdict in verdicts],
        "workloads": {
            name: {
                "title": section.title,
                "seconds": section.seconds,
                "summary": section.summary,
                "rounds": section.raw,
                "notes": section.notes,
            }
            for name, section in sections.items()
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_json_safe(report), indent=1) + "\n")
    print(
        f"\nraw figures: {args.out}\ntotal: {total:.1f} s; load average at end "
        f"{info['load_average_at_end'][0]:.2f} (other processes on the machine add noise)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
