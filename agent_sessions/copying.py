"""Copying every session between two databases (SQLite and PostgreSQL, either way).

Resumable and verified: sessions already copied whole are skipped, each copied session is
read back and compared by item count and checksum, so a run stopped half-way (or repeated)
ends with identical sessions on both sides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from .backends import PoolOptions, open_backend
from .backends.base import Backend, SessionDump
from .errors import InvalidArgumentError


def checksum(dump: SessionDump) -> str:
    """SHA-256 of a session's owner, times and stored items (length-prefixed, in order).

    With encrypted items, their clear columns too.
    """
    digest = hashlib.sha256()
    head = (
        dump.session_id,
        dump.user_id,
        dump.conversation_id,
        dump.created_at,
        dump.last_activity,
    )
    # An encrypted payload's clear columns are part of it (they authenticate it).
    clear = [repr(columns) for columns in dump.clear]
    for part in (*map(repr, head), *dump.payloads, *clear):
        data = part.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


@dataclass
class CopyReport:
    """What a copy did."""

    source: str = ""
    """The database copied from (a path, or a URL without its password)."""
    destination: str = ""
    copied: int = 0
    """Sessions written to the destination."""
    skipped: int = 0
    """Sessions already identical there (an earlier run copied them)."""
    items: int = 0
    """Items in the sessions copied or skipped."""
    corrupt_rows: int = 0
    """Source rows left out because they do not decode (they cannot be copied faithfully)."""
    vanished: int = 0
    """Sessions deleted at the source between listing and reading them."""
    refused: list[str] = field(default_factory=list)
    """Sessions the destination cannot hold (e.g. an id with a NUL character, on
    PostgreSQL); left out."""
    mismatched: list[str] = field(default_factory=list)
    """Sessions that read back differently (none, unless something wrote during the copy)."""


async def copy_sessions(
    source: Backend,
    destination: Backend,
    *,
    progress: Callable[[CopyReport], None] | None = None,
) -> CopyReport:
    """Copy every session of ``source`` into ``destination``, verifying each.

    Writing to a session at the source while it is copied can leave the two apart; such a
    session is reported in ``mismatched`` and a second run copies it again.

    Raises:
        StorageError: (a subclass) if either database fails; what was copied stays.
    """
    report = CopyReport(source=source.location, destination=destination.location)
    for session_id in await source.session_ids():
        dump = await source.dump_session(session_id)
        if dump is None:
            report.vanished += 1
            continue
        report.corrupt_rows += dump.corrupt_rows
        report.items += len(dump.payloads)
        wanted = checksum(dump)
        try:
            present = await destination.dump_session(session_id)
            if present is not None and checksum(present) == wanted:
                report.skipped += 1
            else:
                await destination.load_session(dump)
                written = await destination.dump_session(session_id)
                if written is None or checksum(written) != wanted:
                    report.mismatched.append(session_id)
                report.copied += 1
        except InvalidArgumentError:  # an id the destination cannot hold
            report.refused.append(session_id)
        if progress is not None:
            progress(report)
    return report


__all__ = ["CopyReport", "checksum", "copy_database", "copy_sessions"]


async def copy_database(
    source: object,
    destination: object,
    *,
    pool: PoolOptions | None = None,
    progress: Callable[[CopyReport], None] | None = None,
) -> CopyReport:
    """Copy every session from one database (a SQLite path or URL) into another.

    The source must exist; its schema is migrated like any database this library opens, and
    its sessions are only read. The destination's tables are created if needed. A session at
    the destination that differs from the source's is replaced by it (newer turns written
    there included): stop the writers, or point them at the destination, before the copy.

    Raises:
        InvalidArgumentError: if a target is neither a path nor a supported URL, or both
            name the same database.
        StorageError: (a subclass) if either database fails; what was copied stays.
    """
    reader = open_backend(source, create=False, offload=True, pool=pool)
    writer = open_backend(destination, create=True, offload=True, pool=pool)
    try:
        if reader.location == writer.location:
            raise InvalidArgumentError(
                f"the source and destination are one database: {reader.location}"
            )
        await reader.open()
        await writer.open()
        return await copy_sessions(reader, writer, progress=progress)
    finally:
        await reader.close()
        await writer.close()
