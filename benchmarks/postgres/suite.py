"""``python -m benchmarks --postgres [URL]``: the PostgreSQL suite, as the SQLite one prints.

The URL (default ``AGENT_SESSIONS_TEST_PG_URL``) names a server and a database to connect to
for administration; the run creates a database of its own next to it (the role needs
``CREATEDB``) and drops it at the end. Candidates (``candidates.py``): ``agent``
(``PostgresSession``, pruning at 200) and ``sdk_sqlalchemy`` (the SDK's ``SQLAlchemySession``
on one shared ``postgresql+psycopg`` engine); ``open_per_request`` adds
``sdk_sqlalchemy_from_url`` (an engine per session, as ``SQLAlchemySession.from_url`` makes).

Workloads: ``round_trips`` (counted through a proxy, not timed), ``turn_1task``,
``turn_16tasks``, ``get_items_200``, ``open_per_request`` (``workloads.py``), ``multiprocess``
(``multiprocess.py``), ``cleanup`` on bulk-loaded tables (``bulk.py``), ``list_sessions`` and
``delete_user`` on bulk-loaded tables (``conversations.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from ..core import Section, progress
from . import candidates, server, sizes, targets
from .rounds import PgContext

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "results" / "postgres-latest.json"


def workloads() -> dict[str, Callable[[PgContext], Section]]:
    from . import bulk, conversations, multiprocess, workloads

    return {
        "round_trips": workloads.round_trips,
        "turn_1task": workloads.turn_1task,
        "turn_16tasks": workloads.turn_16tasks,
        "get_items_200": workloads.get_items_200,
        "open_per_request": workloads.open_per_request,
        "multiprocess": multiprocess.multiprocess,
        "cleanup": bulk.cleanup,
        "list_sessions": conversations.list_sessions,
        "delete_user": conversations.delete_user,
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def run(args: argparse.Namespace) -> int:
    # Import everything now, so no workload's first candidate pays for the imports.
    import agents  # noqa: F401
    from agents.extensions.memory import SQLAlchemySession  # noqa: F401
    from sqlalchemy.ext.asyncio import create_async_engine  # noqa: F401

    from agent_sessions.session import PostgresSession  # noqa: F401

    from .. import __main__ as harness

    url: str = args.postgres
    available = workloads()
    chosen = args.only or list(available)
    mode = "quick" if args.quick else "full"
    rounds = args.rounds or sizes.ROUNDS[mode]
    out: Path = DEFAULT_OUT if args.out == harness.DEFAULT_OUT else args.out
    started = time.perf_counter()
    info = harness.machine()
    for package in ("psycopg", "psycopg-pool", "sqlalchemy"):
        info[package] = _version(package)
    info["postgres"] = server_settings = server.server_info(url)

    print(f"# agent_sessions PostgreSQL benchmarks ({mode}, {rounds} round(s))\n")
    print(
        f"machine: {info['cores']} cores ({info['usable_cores']} usable), {info['platform']}; "
        f"Python {info['python']}, openai-agents {info['openai_agents']}, psycopg "
        f"{info['psycopg']}, psycopg-pool {info['psycopg-pool']}, SQLAlchemy "
        f"{info['sqlalchemy']}, agent_sessions {info['agent_sessions']} at {info['git']}; "
        f"load average at start {info['load_average_at_start'][0]:.2f}\n"
    )
    print(
        "server: PostgreSQL "
        + "; ".join(f"{key} {value}" for key, value in server_settings.items())
        + f"; at {server.redact(url)} (a fresh database per run, tables emptied before every "
        "measured block)\n"
    )
    print("candidates:")
    for name, description in candidates.DESCRIPTIONS.items():
        print(f"- `{name}`: {description}")
    print(
        "\nrates and latencies are medians over rounds; 'x sdk_sqlalchemy' is the median of "
        "the ratios taken within each round\n",
        flush=True,
    )

    sections: dict[str, Section] = {}
    with server.fresh_database(url) as bench_url:
        progress(f"database {server.redact(bench_url)}")
        asyncio.run(candidates.create_tables(bench_url))
        ctx = PgContext(
            quick=args.quick,
            rounds=rounds,
            url=bench_url,
            sizes=sizes.QUICK if args.quick else sizes.FULL,
        )
        for name in chosen:
            progress(name)
            began = time.perf_counter()
            section = available[name](ctx)
            section.seconds = time.perf_counter() - began
            sections[name] = section
            print(f"## {section.title}\n")
            print(harness.markdown_table(section.headers, section.rows))
            for note in section.notes:
                print(f"\n- {note}")
            print(f"\n({section.seconds:.1f} s)\n", flush=True)

    verdicts = targets.evaluate(sections)
    print("## targets\n")
    for verdict in verdicts:
        print(verdict.line())
    total = time.perf_counter() - started
    info["load_average_at_end"] = os.getloadavg()
    report = {
        "suite": "postgres",
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
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(harness._json_safe(report), indent=1) + "\n")
    print(
        f"\nraw figures: {out}\ntotal: {total:.1f} s; load average at end "
        f"{info['load_average_at_end'][0]:.2f} (other processes on the machine add noise)"
    )
    return 0
