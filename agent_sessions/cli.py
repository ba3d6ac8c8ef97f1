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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, cast

from .backends import close_server_pools, is_url, open_backend
from .copying import CopyReport
from .errors import (
    AgentSessionsError,
    InvalidArgumentError,
    SessionNotFoundError,
)
from .ids import MAX_COUNT
from .manager import SessionManager
from .models import SessionStats
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
    listing.add_argument("--json", action="store_true", help="print JSON")

    show = commands.add_parser("show", help="one session's details and items")
    show.add_argument("session_id", metavar="SESSION_ID")
    show.add_argument("--json", action="store_true", help="print JSON")

    export = commands.add_parser("export", help="one session's items as JSON or Markdown")
    export.add_argument("session_id", metavar="SESSION_ID")
    export.add_argument("--format", choices=("json", "markdown"), default="json")

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


def _timestamp(moment: datetime) -> str:
    """The CLI's one time format, in text and JSON: ISO 8601 in UTC, to the microsecond.

    Microseconds because cleanup's cutoff is exact to the microsecond; always six digits and
    ``Z``, so every value has the same width and sorts as text.
    """
    return moment.astimezone(UTC).isoformat(timespec="microseconds").removesuffix("+00:00") + "Z"


SETTINGS_HEADING = "settings (not stored in the database)"


def _fields(fields: Mapping[str, object], out: TextIO) -> None:
    width = max(len(key) for key in fields)
    for key, value in fields.items():
        out.write(f"{key.replace('_', ' '):<{width}}  {value}\n")


def _stats_json(stats: SessionStats) -> dict[str, Any]:
    return {
        key: _timestamp(value) if isinstance(value, datetime) else value
        for key, value in stats.model_dump().items()
    }


def _table(rows: Sequence[Sequence[str]], headers: Sequence[str], out: TextIO) -> None:
    lines = [list(headers), *[list(row) for row in rows]]
    widths = [max(len(line[column]) for line in lines) for column in range(len(headers))]
    lines.insert(1, ["-" * width for width in widths])
    for line in lines:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        out.write("  ".join(cells).rstrip())
        out.write("\n")


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text") or part.get("refusal") or f"[{part.get('type', 'part')}]")
            for part in content
            if isinstance(part, Mapping)
        )
    return json.dumps(content)


def _kind(item: Mapping[str, Any]) -> str:
    """An item's type, with the tool's name for a call that names one (``mcp_call``, ...)."""
    kind = str(item.get("type") or "message")
    name = item.get("name")
    if kind == "message" or not isinstance(name, str) or not name.strip():
        return kind
    return f"{kind} {' '.join(name.split())[:40]}"  # one cell: no line breaks, bounded


def render_markdown(stats: SessionStats, items: Sequence[Mapping[str, Any]]) -> str:
    """Render a session's items as a readable Markdown transcript."""
    lines = [
        f"# Session `{stats.session_id}`",
        "",
        f"- user: `{stats.user_id}`",
        f"- conversation: `{stats.conversation_id}`",
        f"- items: {stats.message_count} (corrupt rows skipped: {stats.corrupt_items})",
        f"- created: {_timestamp(stats.created_at)}; "
        f"last activity: {_timestamp(stats.last_activity)}",
        "",
    ]
    for item in items:
        kind = item.get("type")
        role = item.get("role")
        if role is not None and kind in (None, "message"):
            lines.append(f"**{str(role).capitalize()}:** {_text_of(item.get('content'))}")
        elif kind == "function_call":
            lines.append(
                f"**Tool call** `{item.get('name')}({item.get('arguments', '')})` "
                f"(call `{item.get('call_id')}`)"
            )
        elif isinstance(kind, str) and kind.endswith("_output"):
            lines.append(f"**Tool output** (call `{item.get('call_id')}`): {item.get('output')}")
        elif kind == "reasoning":
            lines.append("*[reasoning]*")
        else:
            lines.append(f"*[{kind or 'item'}]* `{json.dumps(item)[:200]}`")
        lines.append("")
    return "\n".join(lines)


# --- commands -------------------------------------------------------------------------------


async def _stats(manager: SessionManager, args: argparse.Namespace, out: TextIO) -> int:
    summary: dict[str, Any] = {
        "database": manager.db_path,
        "sessions": await manager.get_session_count(),
        "active_sessions": await manager.get_active_session_count(),
        "idle_sessions": await manager.cleanup_inactive_sessions(dry_run=True),
        "average_items_per_session": round(await manager.get_average_messages_per_session(), 2),
    }
    # The CLI's own settings, not facts about the file: the sessions in it may have been
    # written with another max_messages. Active and idle are counted with retention_days.
    settings = {"retention_days": manager.retention_days, "max_messages": manager.max_messages}
    if args.json:
        out.write(json.dumps({**summary, "settings": settings}, indent=2) + "\n")
    else:
        _fields(summary, out)
        out.write(f"\n{SETTINGS_HEADING}\n")
        _fields(settings, out)
    return EXIT_OK


def _sessions_table(sessions: Sequence[SessionStats], out: TextIO) -> None:
    _table(
        [
            (
                s.session_id,
                s.user_id or "-",
                s.conversation_id or "-",
                str(s.message_count),
                str(s.corrupt_items),
                _timestamp(s.last_activity),
            )
            for s in sessions
        ],
        ("SESSION", "USER", "CONVERSATION", "ITEMS", "CORRUPT", "LAST ACTIVITY"),
        out,
    )


def _sessions_json(sessions: Sequence[SessionStats], out: TextIO) -> None:
    out.write(json.dumps([_stats_json(s) for s in sessions], indent=2) + "\n")


async def _list(manager: SessionManager, args: argparse.Namespace, out: TextIO) -> int:
    sessions = await manager.list_sessions(args.user, limit=args.limit, offset=args.offset)
    if args.json:
        _sessions_json(sessions, out)
    elif sessions:
        _sessions_table(sessions, out)
    else:
        out.write("no sessions\n")
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
                _text_of(
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
    stats = await manager.get_session_stats(args.session_id)
    items = await manager.get_items(args.session_id)
    if args.format == "json":
        out.write(json.dumps({**_stats_json(stats), "items": items}, indent=2) + "\n")
    else:
        out.write(render_markdown(stats, items))
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


async def _cleanup(manager: SessionManager, args: argparse.Namespace, out: TextIO) -> int:
    days = args.retention_days or manager.retention_days
    if not args.dry_run:
        count = await manager.cleanup_inactive_sessions(retention_days=args.retention_days)
        out.write(f"deleted {count} session(s) idle for more than {days} day(s)\n")
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
    out.write(f"would delete {count} session(s) idle for more than {days} day(s)\n")
    return EXIT_OK


_COMMANDS: dict[str, Callable[[SessionManager, argparse.Namespace, TextIO], Awaitable[int]]] = {
    "stats": _stats,
    "list": _list,
    "show": _show,
    "export": _export,
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
        "items_remaining": report.remaining,
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
