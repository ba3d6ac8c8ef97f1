"""The ``agent-sessions`` command: inspect and maintain a session database.

Exit codes: 0 success, 1 an unknown session or a storage failure, 2 bad input. Database
commands import neither the Agents SDK nor the scheduler, so they start quickly.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO, cast

from .backends import close_server_pools, is_url, open_backend
from .copying import CopyReport
from .durations import format_duration
from .errors import (
    AgentSessionsError,
    InvalidArgumentError,
    SessionNotFoundError,
)
from .exporting import (
    content_text,
    conversation_markdown,
    json_chunks,
    markdown_file_name,
    render_markdown,
    stats_json,
    timestamp,
)
from .ids import MAX_COUNT
from .manager import SessionManager
from .models import SearchHit, SessionStats, SweepRecord
from .rekeying import RekeyReport
from .settings import MAX_RETENTION_DAYS, AgentSessionSettings, load_settings, pool_options

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own usage errors: exit 2, no traceback
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _integer(minimum: int, maximum: int = MAX_COUNT) -> Callable[[str], int]:
    """An argparse type accepting integers in ``[minimum, maximum]``, the library's own bounds."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if minimum <= value <= maximum:
            return value
        if maximum == MAX_COUNT:  # an internal bound, no one's choice: not worth printing
            too_large = " (too large)" if value > maximum else ""
            raise argparse.ArgumentTypeError(
                f"expected an integer of at least {minimum}, got {value}{too_large}"
            )
        raise argparse.ArgumentTypeError(
            f"expected an integer from {minimum} to {maximum}, got {value}"
        )

    return parse


def _database_target(text: str) -> str | Path:
    """A SQLite path, or a server URL kept as text (``Path`` would fold its ``//``)."""
    # Path("") is the working directory: an empty --db is a mistake, not a folder to open.
    if not text.strip():
        raise argparse.ArgumentTypeError("the database path must not be empty")
    return text if is_url(text) else Path(text)


_positive = _integer(1)
_non_negative = _integer(0)
_retention_days = _integer(1, MAX_RETENTION_DAYS)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``agent-sessions``."""
    parser = _Parser(
        prog="agent-sessions",
        description="Inspect and maintain agent_sessions conversation databases.",
    )
    parser.add_argument(
        "--db",
        metavar="PATH_OR_URL",
        type=_database_target,
        help="SQLite file or postgresql:// URL (default: AGENT_SESSION_DATABASE_URL, else "
        "AGENT_SESSION_DB_PATH, else ./data/agent_sessions.db)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    stats = commands.add_parser("stats", help="totals for the whole database")
    stats.add_argument("--json", action="store_true", help="print JSON")

    listing = commands.add_parser("list", help="sessions, most recent activity first")
    listing.add_argument("--user", metavar="ID", help="only this user's sessions")
    listing.add_argument("--limit", type=_positive, default=50, help="at most this many (50)")
    listing.add_argument("--offset", type=_non_negative, default=0, help="skip this many (0)")
    listing.add_argument(
        "--cursor", help="continue after the page that printed this cursor (keyset paging)"
    )
    listing.add_argument(
        "--active",
        action="store_true",
        help="only sessions not idle past retention (the default lists all stored)",
    )
    listing.add_argument("--json", action="store_true", help="print JSON")

    show = commands.add_parser("show", help="one session's details and items")
    show.add_argument("session_id", metavar="SESSION_ID")
    show.add_argument("--json", action="store_true", help="print JSON")

    search = commands.add_parser("search", help="a user's conversations holding some words")
    search.add_argument("--user", metavar="ID", required=True, help="whose conversations")
    search.add_argument("query", metavar="QUERY", help="the words to find (all of them)")
    search.add_argument("--limit", type=_positive, default=20, help="at most this many (20)")
    search.add_argument("--json", action="store_true", help="print JSON")

    export = commands.add_parser(
        "export", help="one session, or all of a user's, as JSON or Markdown"
    )
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("session_id", metavar="SESSION_ID", nargs="?")
    which.add_argument("--user", metavar="ID", help="every conversation of this user")
    export.add_argument("--format", choices=("json", "markdown"), default="json")
    export.add_argument(
        "--output",
        metavar="PATH",
        type=Path,
        help="with --user: the JSON file, or the folder for one Markdown file per "
        "conversation (default: stdout)",
    )

    delete_user = commands.add_parser(
        "delete-user", help="delete every conversation of a user (asks first)"
    )
    delete_user.add_argument("user", metavar="USER_ID")
    delete_user.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    prune = commands.add_parser("prune", help="apply the pruning rule now")
    target = prune.add_mutually_exclusive_group(required=True)
    target.add_argument("session_id", metavar="SESSION_ID", nargs="?")
    target.add_argument("--all", action="store_true", help="every session")
    prune.add_argument(
        "--max-messages", type=_positive, help="bound to apply (default: the settings')"
    )

    clear = commands.add_parser("clear", help="delete one session and its items")
    clear.add_argument("session_id", metavar="SESSION_ID")

    cleanup = commands.add_parser("cleanup", help="delete sessions idle beyond retention")
    cleanup.add_argument("--dry-run", action="store_true", help="only list them")
    cleanup.add_argument("--json", action="store_true", help="with --dry-run: print JSON")
    cleanup.add_argument(
        "--limit",
        type=_positive,
        default=100,
        help="with --dry-run: list at most this many, the oldest (100)",
    )
    cleanup.add_argument(
        "--retention-days", type=_retention_days, help="idle days allowed (default: the settings')"
    )

    commands.add_parser("daemon", help="run the scheduled cleanup until SIGINT/SIGTERM")

    commands.add_parser(
        "migrate", help="create the tables or apply pending schema migrations, then exit"
    )

    copy = commands.add_parser(
        "copy", help="copy every session between databases (resumable, verified)"
    )
    copy.add_argument(
        "--from",
        dest="source",
        metavar="PATH_OR_URL",
        required=True,
        type=_database_target,
        help="the database to copy from (not changed)",
    )
    copy.add_argument(
        "--to",
        dest="destination",
        metavar="PATH_OR_URL",
        required=True,
        type=_database_target,
        help="the database to copy into (created if needed)",
    )
    copy.add_argument("--json", action="store_true", help="print the report as JSON")

    commands.add_parser(
        "generate-key", help="print a new random encryption key (for AGENT_SESSION_ENCRYPTION_KEY)"
    )
    for name, text in (
        ("rotate-key", "re-encrypt every item with the newest key (live, resumable, verified)"),
        ("encrypt", "encrypt every plaintext item in place (live, resumable, verified)"),
        ("decrypt", "write every encrypted item back in plaintext (live, resumable, verified)"),
    ):
        rekey = commands.add_parser(
            name, help=text, description=f"{text[0].upper()}{text[1:]}. {_KEYS_FROM_ENV}"
        )
        rekey.add_argument(
            "--batch-size",
            type=_integer(1, 10_000),
            default=200,
            help="items per transaction (200)",
        )
        rekey.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


_KEYS_FROM_ENV = (
    "Keys are read from AGENT_SESSION_ENCRYPTION_KEY (newest first, comma-separated), never "
    "from the command line, where other users could see them."
)


# --- output ---------------------------------------------------------------------------------


_timestamp = timestamp


SETTINGS_HEADING = "settings (not stored in the database)"


def _fields(fields: Mapping[str, object], out: TextIO) -> None:
    width = max(len(key) for key in fields)
    for key, value in fields.items():
        out.write(f"{key.replace('_', ' '):<{width}}  {value}\n")


_stats_json = stats_json


def _table(rows: Sequence[Sequence[str]], headers: Sequence[str], out: TextIO) -> None:
    lines = [list(headers), *[list(row) for row in rows]]
    widths = [max(len(line[column]) for line in lines) for column in range(len(headers))]
    lines.insert(1, ["-" * width for width in widths])
    for line in lines:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        out.write("  ".join(cells).rstrip())
        out.write("\n")


def _kind(item: Mapping[str, Any]) -> str:
    """An item's type, with the tool's name for a call that names one (``mcp_call``, ...)."""
    kind = str(item.get("type") or "message")
    name = item.get("name")
    if kind == "message" or not isinstance(name, str) or not name.strip():
        return kind
    return f"{kind} {' '.join(name.split())[:40]}"  # one cell: no line breaks, bounded


# --- commands -------------------------------------------------------------------------------


def _sweep_json(sweep: SweepRecord | None) -> dict[str, Any] | None:
    if sweep is None:
        return None
    return {
        key: _timestamp(value) if isinstance(value, datetime) else value
        for key, value in sweep.model_dump().items()
    }


def _sweep_text(sweep: SweepRecord | None) -> str:
    if sweep is None:
        return "never"
    text = f"{_timestamp(sweep.started_at)} {sweep.outcome}, {sweep.sessions_deleted} deleted"
    if sweep.finished_at is not None:
        text += f" in {(sweep.finished_at - sweep.started_at).total_seconds():.1f} s"
    return text + (f" ({sweep.error})" if sweep.error else "")


def _size(count: int | None) -> str:
    if count is None:
        return "-"
    size, unit = float(count), "bytes"
    for larger in ("kB", "MB", "GB", "TB"):
        if size < 1000:
            break
        size, unit = size / 1000, larger
    return f"{count} bytes" if unit == "bytes" else f"{size:.1f} {unit} ({count} bytes)"


async def _stats(manager: SessionManager, args: argparse.Namespace, out: TextIO) -> int:
    health = await manager.health()
    summary: dict[str, Any] = {
        "database": manager.db_path,
        "sessions": health.sessions,
        "active_sessions": health.active_sessions,
        "idle_sessions": await manager.cleanup_inactive_sessions(dry_run=True),
        "average_items_per_session": round(health.average_items, 2),
        "items": health.items,
    }
    oldest = health.oldest_activity
    # The CLI's own settings, not facts about the file: the sessions in it may have been
    # written with another max_messages. Active and idle are counted with the retention.
    settings: dict[str, Any] = {
        "retention": format_duration(manager.retention),
        "max_messages": manager.max_messages,
    }
    for name in ("warn_average_items", "warn_active_sessions"):
        if getattr(manager, name) is not None:  # shown when set: they decide what is crossed
            settings[name] = getattr(manager, name)
    if args.json:
        # Every field of manager.health(), write latency included, although it is this
        # process's and the CLI writes nothing (so it is null; the text leaves it out).
        document = {
            **summary,
            "database_bytes": health.database_bytes,
            "oldest_activity": None if oldest is None else _timestamp(oldest),
            "last_sweep": _sweep_json(health.last_sweep),
            "thresholds_crossed": list(health.thresholds_crossed),
            "write_latency_p50": health.write_latency_p50,
            "write_latency_p95": health.write_latency_p95,
            "write_samples": health.write_samples,
            "settings": settings,
        }
        out.write(json.dumps(document, indent=2) + "\n")
    else:
        shown = {
            "database_size": _size(health.database_bytes),
            "oldest_activity": "-" if oldest is None else _timestamp(oldest),
            "last_sweep": _sweep_text(health.last_sweep),
            "thresholds_crossed": ", ".join(health.thresholds_crossed) or "none",
        }
        _fields({**summary, **shown}, out)
        out.write(f"\n{SETTINGS_HEADING}\n")
        _fields(settings, out)
    return EXIT_OK


def _cell(text: str | None, width: int = 40) -> str:
    """Text for one table cell: one line, at most ``width`` characters."""
    if not text:
        return "-"
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _sessions_table(sessions: Sequence[SessionStats], out: TextIO) -> None:
    _table(
        [
            (
                s.session_id,
                s.user_id or "-",
                s.conversation_id or "-",
                str(s.message_count),
                "-" if s.corrupt_items is None else str(s.corrupt_items),
                _timestamp(s.last_activity),
                _cell(s.title),
            )
            for s in sessions
        ],
        ("SESSION", "USER", "CONVERSATION", "ITEMS", "CORRUPT", "LAST ACTIVITY", "TITLE"),
        out,
    )


def _sessions_json(sessions: Sequence[SessionStats], out: TextIO) -> None:
    out.write(json.dumps([_stats_json(s) for s in sessions], indent=2) + "\n")


async def _list(manager: SessionManager, args: argparse.Namespace, out: TextIO) -> int:
    sessions = await manager.list_sessions(
        args.user,
        limit=args.limit,
        offset=args.offset,
        cursor=args.cursor,
        include_expired=not args.active,
    )
    if args.json:
        _sessions_json(sessions, out)
    elif sessions:
        _sessions_table(sessions, out)
    else:
        out.write("no sessions\n")
    if sessions.next_cursor is not None:
        # On stderr: stdout stays the listing alone (a JSON array with --json).
        print(f"next page: --cursor {sessions.next_cursor}", file=sys.stderr)
    return EXIT_OK


def _hit_json(hit: SearchHit) -> dict[str, Any]:
    return {
        key: _timestamp(value) if isinstance(value, datetime) else value
        for key, value in hit.model_dump().items()
    }


async def _search(manager: SessionManager, args: argparse.Namespace, out: TextIO) -> int:
    hits = await manager.search_sessions(args.user, args.query, limit=args.limit)
    if args.json:
        out.write(json.dumps([_hit_json(hit) for hit in hits], indent=2) + "\n")
    elif hits:
        _table(
            [
                (
                    hit.session_id,
                    " ".join((hit.title or "-").split())[:40],  # cells: one line, bounded
                    _timestamp(hit.last_activity),
                    " ".join(hit.snippet.split())[:80],
                )
                for hit in hits
            ],
            ("SESSION", "TITLE", "LAST ACTIVITY", "SNIPPET"),
            out,
        )
    else:
        out.write("no matching sessions\n")
    return EXIT_OK


async def _show(manager: SessionManager, args: argparse.Namespace, out: TextIO) -> int:
    stats = await manager.get_session_stats(args.session_id)
    items = await manager.get_items(args.session_id)
    if args.json:
        out.write(json.dumps({**_stats_json(stats), "items": items}, indent=2) + "\n")
        return EXIT_OK
    for key, value in _stats_json(stats).items():
        out.write(f"{key}: {value}\n")
    out.write("\n")
    _table(
        [
            (
                str(position),
                _kind(item),
                str(item.get("role") or "-"),
                content_text(
                    item.get("content", item.get("output", item.get("arguments", "")))
                ).replace("\n", " ")[:60],
            )
            for position, item in enumerate(items)
        ],
        ("#", "TYPE", "ROLE", "CONTENT"),
        out,
    )
    return EXIT_OK


async def _export(manager: SessionManager, args: argparse.Namespace, out: TextIO) -> int:
    if args.user is not None:
        return await _export_user(manager, args, out)
    if args.output is not None:
        raise InvalidArgumentError("--output is for --user; redirect one session's export")
    stats = await manager.get_session_stats(args.session_id)
    items = await manager.get_items(args.session_id)
    if args.format == "json":
        out.write(json.dumps({**_stats_json(stats), "items": items}, indent=2) + "\n")
    else:
        out.write(render_markdown(stats, items))
    return EXIT_OK


async def _export_user(manager: SessionManager, args: argparse.Namespace, out: TextIO) -> int:
    conversations = manager.export_user(args.user)
    count = 0
    if args.format == "markdown" and args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
        used: set[str] = set()
        async for conversation in conversations:
            name = markdown_file_name(conversation.session)
            while name in used:  # two ids that differ only in unsafe characters
                name = f"{name.removesuffix('.md')}-{len(used)}.md"
            used.add(name)
            (args.output / name).write_text(conversation_markdown(conversation), "utf-8")
            count += 1
        print(f"exported {count} conversation(s) to {args.output}", file=sys.stderr)
        return EXIT_OK
    target = out if args.output is None else args.output.open("w", encoding="utf-8")
    try:
        if args.format == "markdown":
            async for conversation in conversations:
                target.write(("\n---\n\n" if count else "") + conversation_markdown(conversation))
                count += 1
        else:
            chunks = json_chunks(args.user, conversations, exported_at=datetime.now(UTC))
            async for chunk in chunks:
                target.write(chunk)
    finally:
        if target is not out:
            target.close()
    return EXIT_OK


async def _delete_user(manager: SessionManager, args: argparse.Namespace, out: TextIO) -> int:
    if not args.yes:
        page = await manager.list_sessions(args.user, limit=1, include_expired=True)
        if not page:
            out.write(f"user {args.user!r} has no sessions\n")
            return EXIT_OK
        if not sys.stdin.isatty():
            raise InvalidArgumentError(
                "delete-user asks for confirmation on a terminal; pass --yes to run it unattended"
            )
        prompt = f"Delete every conversation of user {args.user!r}? [y/N] "
        answer = await asyncio.to_thread(input, prompt)
        if answer.strip().lower() not in ("y", "yes"):
            out.write("nothing deleted\n")
            return EXIT_FAILURE
    deleted = await manager.delete_user(args.user)
    out.write(f"deleted {deleted} session(s) of user {args.user!r}\n")
    return EXIT_OK


async def _prune(manager: SessionManager, args: argparse.Namespace, out: TextIO) -> int:
    if args.all:
        deleted = await manager.prune_all_sessions()
        out.write(f"pruned {deleted} item(s) across all sessions\n")
    else:
        deleted = await manager.prune_session_messages(args.session_id)
        out.write(f"pruned {deleted} item(s) from {args.session_id}\n")
    return EXIT_OK


async def _clear(manager: SessionManager, args: argparse.Namespace, out: TextIO) -> int:
    deleted = await manager.clear_session(args.session_id)
    out.write(f"cleared {args.session_id} ({deleted} item(s) deleted)\n")
    return EXIT_OK


def _idle_period(manager: SessionManager, days: int | None) -> str:
    """The idle time cleanup uses, as a person reads it: ``7 day(s)``, or ``30m``."""
    if days is not None:
        return f"{days} day(s)"
    period = manager.retention
    if period % timedelta(days=1) == timedelta(0):
        return f"{period.days} day(s)"
    return format_duration(period)


async def _cleanup(manager: SessionManager, args: argparse.Namespace, out: TextIO) -> int:
    period = _idle_period(manager, args.retention_days)
    if not args.dry_run:
        count = await manager.cleanup_inactive_sessions(retention_days=args.retention_days)
        out.write(f"deleted {count} session(s) idle for more than {period}\n")
        return EXIT_OK
    # Listing reads every item of each session listed; the count is one indexed query.
    idle = await manager.list_inactive_sessions(
        retention_days=args.retention_days, limit=args.limit
    )
    if args.json:
        _sessions_json(idle, out)
        return EXIT_OK
    count = await manager.cleanup_inactive_sessions(
        retention_days=args.retention_days, dry_run=True
    )
    if idle:
        _sessions_table(idle, out)
        if count > len(idle):
            out.write(f"... and {count - len(idle)} more (--limit {args.limit})\n")
        out.write("\n")
    out.write(f"would delete {count} session(s) idle for more than {period}\n")
    return EXIT_OK


_COMMANDS: dict[str, Callable[[SessionManager, argparse.Namespace, TextIO], Awaitable[int]]] = {
    "stats": _stats,
    "list": _list,
    "search": _search,
    "show": _show,
    "export": _export,
    "delete-user": _delete_user,
    "prune": _prune,
    "clear": _clear,
    "cleanup": _cleanup,
}


async def _migrate(settings: AgentSessionSettings, out: TextIO) -> int:
    backend = open_backend(
        settings.database, create=True, offload=True, pool=pool_options(settings)
    )
    try:
        applied, version = await backend.migrate()
    finally:
        await backend.close()
    out.write(f"{backend.location}: applied {applied} migration(s); schema version {version}\n")
    return EXIT_OK


async def _copy(settings: AgentSessionSettings, args: argparse.Namespace, out: TextIO) -> int:
    from .copying import copy_database

    def progress(report: CopyReport) -> None:
        done = report.copied + report.skipped
        if done and done % 1000 == 0:
            print(f"agent-sessions: copy: {done} session(s) so far", file=sys.stderr)

    report = await copy_database(
        args.source, args.destination, pool=pool_options(settings), progress=progress
    )
    summary = {
        "from": report.source,
        "to": report.destination,
        "sessions_copied": report.copied,
        "sessions_already_there": report.skipped,
        "items": report.items,
        "corrupt_rows_left_out": report.corrupt_rows,
        "sessions_deleted_meanwhile": report.vanished,
        "refused": report.refused,
        "mismatched": report.mismatched,
        "verified": not report.mismatched,
    }
    if args.json:
        out.write(json.dumps(summary, indent=2) + "\n")
    else:
        _fields({k: v for k, v in summary.items() if k not in ("mismatched", "refused")}, out)
        for session_id in report.refused:
            out.write(f"refused: {session_id!r} (the destination cannot hold this id)\n")
        for session_id in report.mismatched:
            out.write(f"mismatched: {session_id} (written to during the copy; run it again)\n")
    return EXIT_OK if not report.mismatched else EXIT_FAILURE


async def _rekey(settings: AgentSessionSettings, args: argparse.Namespace, out: TextIO) -> int:
    from .encryption import keyring_for
    from .errors import ConfigurationError
    from .rekeying import reencode_all

    keyring = keyring_for(settings.encryption_key)
    if keyring is None:
        raise ConfigurationError(
            f"{args.command} needs AGENT_SESSION_ENCRYPTION_KEY (the keys, newest first)"
        )
    backend = open_backend(
        settings.database, create=False, offload=True, pool=pool_options(settings), keyring=keyring
    )

    def progress(report: RekeyReport) -> None:
        if report.scanned % 10_000 < args.batch_size:
            print(
                f"agent-sessions: {args.command}: {report.scanned} item(s) so far", file=sys.stderr
            )

    try:
        await backend.open()
        report = await reencode_all(
            backend,
            keyring,
            target="plaintext" if args.command == "decrypt" else "newest",
            batch_size=args.batch_size,
            progress=progress,
            keep_search_index=settings.search_plaintext_index,
        )
    finally:
        await backend.close()
    summary = {
        "database": report.location,
        "target": report.target,
        "items_scanned": report.scanned,
        "items_changed": report.changed,
        "items_already_done": report.already,
        "items_changed_meanwhile": report.raced,
        "items_with_unknown_key": report.unknown_key,
        "items_unreadable": report.unreadable,
        "titles_and_metadata_changed": report.fields_changed,
        "titles_and_metadata_unreadable": report.fields_unreadable,
        "search_entries_dropped": report.search_entries_dropped,
        "remaining": report.remaining,
        "verified": report.verified,
    }
    if args.json:
        out.write(json.dumps(summary, indent=2) + "\n")
    else:
        _fields(summary, out)
        if not report.verified:
            out.write(
                "some items are not done yet (written meanwhile with an older key, or "
                "unreadable): run it again once every app process has the new key\n"
            )
    return EXIT_OK if report.verified else EXIT_FAILURE


async def _run(settings: AgentSessionSettings, args: argparse.Namespace, out: TextIO) -> int:
    try:
        return await _run_command(settings, args, out)
    finally:
        await close_server_pools()  # before asyncio.run ends: an opening pool holds up exit


async def _run_command(
    settings: AgentSessionSettings, args: argparse.Namespace, out: TextIO
) -> int:
    if args.command == "migrate":
        return await _migrate(settings, out)
    if args.command == "copy":
        return await _copy(settings, args, out)
    if args.command == "generate-key":
        from .encryption import generate_key

        out.write(generate_key() + "\n")
        return EXIT_OK
    if args.command in ("rotate-key", "encrypt", "decrypt"):
        return await _rekey(settings, args, out)
    if args.command == "daemon":
        from .scheduler import run_daemon  # APScheduler is only needed here

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        await run_daemon(settings, create=False)  # like every command: a typo creates nothing
        return EXIT_OK
    max_messages = getattr(args, "max_messages", None)
    # A mistyped --db must not create a database (and its folders) as a side effect.
    async with SessionManager(
        settings=settings, max_messages=max_messages, create=False
    ) as manager:
        return await _COMMANDS[args.command](manager, args, out)


class _OutputError(Exception):
    """The command's output could not be written (a full disk, a closed stdout)."""


class _GuardedOutput:
    """A text stream whose write failures are told apart from every other ``OSError``."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        written: int = self._guard(lambda stream: stream.write(text))
        return written

    def flush(self) -> None:
        if self._stream is not None:  # nothing was written to a closed stdout (e.g. daemon)
            self._guard(lambda stream: stream.flush())

    def _guard(self, operation: Callable[[TextIO], Any]) -> Any:
        if self._stream is None:
            raise _OutputError("standard output is closed")
        try:
            return operation(self._stream)
        except BrokenPipeError:
            raise  # the reader went away (e.g. `| head`): not an error
        except OSError as exc:
            raise _OutputError(exc.strerror or str(exc)) from exc


def _discard_stdout() -> None:
    # What is still buffered would fail again when Python flushes stdout at exit, printing
    # a traceback-like message: send it to the null device instead.
    if sys.stdout is None:
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "cleanup" and args.json and not args.dry_run:
        # A real cleanup cannot list what it deleted without racing the writers it spares.
        parser.error("cleanup: --json lists the sessions --dry-run finds; add --dry-run")
    return args


def _one_line(error: BaseException) -> str:
    # Driver messages (libpq's) run over several lines; a failure is one line on stderr.
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run ``agent-sessions`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    to_stdout = out is None
    if out is None and sys.stdout is not None:
        out = sys.stdout
        # Stored text may hold lone surrogates (the SDK stores what it is given): print them
        # escaped, as stderr does, rather than fail half-way through a table.
        if isinstance(out, io.TextIOWrapper):
            out.reconfigure(errors="backslashreplace")
    output = cast(TextIO, _GuardedOutput(out))
    try:
        args = _parse(argv)
    except SystemExit as exc:  # usage errors (2), --help (0): returned, not raised
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        settings = load_settings()
        if isinstance(args.db, str):  # a URL
            settings = settings.model_copy(update={"database_url": args.db})
        elif args.db is not None:  # a path wins over AGENT_SESSION_DATABASE_URL too
            settings = settings.model_copy(update={"db_path": args.db, "database_url": None})
        code = asyncio.run(_run(settings, args, output))
        output.flush()
        return code
    except _OutputError as exc:
        print(f"agent-sessions: cannot write the output: {exc}", file=sys.stderr)
        if to_stdout:
            _discard_stdout()
        return EXIT_FAILURE
    except SessionNotFoundError as exc:
        print(f"agent-sessions: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    except InvalidArgumentError as exc:
        print(f"agent-sessions: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except AgentSessionsError as exc:
        print(f"agent-sessions: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        if to_stdout:
            _discard_stdout()
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
