"""Re-encoding every stored item in place: ``rotate-key``, ``encrypt`` and ``decrypt``.

Live and resumable: rows are read in batches, re-encoded in Python outside any transaction,
and written back in one short transaction per batch with a compare-and-set on the old
payload, so a row a running app pruned or changed meanwhile is left alone, and no writer
waits longer than one batch's ``UPDATE``. Rows already in the wanted form are skipped
without decrypting, so a second run continues where a stopped one ended. Every new payload
is opened again before it is written, and a final pass counts the rows still not in the
wanted form (``remaining``): run it again after the last app process writes with the new
key, until that is 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .backends.base import Backend, FieldsChange, RowChange, StoredFields, StoredRow
from .codec import decode_item
from .encryption import (
    PLAINTEXT,
    Keyring,
    _aad,
    _text_aad,
    _Undecryptable,
    clear_columns,
    is_encrypted,
    stored_key_id,
)
from .errors import EncryptionKeyError, StorageBusyError

logger = logging.getLogger("agent_sessions")

BATCH_SIZE = 200
"""Rows per transaction: a few milliseconds of writing, so live writers barely wait."""

Target = Literal["newest", "plaintext"]


@dataclass
class RekeyReport:
    """What a re-encoding run did."""

    location: str
    target: str
    """The key id every row now uses, or ``"plaintext"``."""
    scanned: int = 0
    changed: int = 0
    """Rows re-encoded and written by this run."""
    already: int = 0
    """Rows already in the wanted form."""
    raced: int = 0
    """Rows a writer pruned or changed between this run's read and write (left alone)."""
    unknown_key: int = 0
    """Rows sealed with a key that is not configured (left alone)."""
    unreadable: int = 0
    """Rows that fail authentication (tampered or damaged; left alone)."""
    fields_changed: int = 0
    """Sessions whose title or metadata this run re-encoded."""
    fields_unreadable: int = 0
    """Sessions whose title or metadata no configured key opens (left alone)."""
    search_entries_dropped: int = 0
    """Search index entries deleted (their text was in clear; see ``keep_search_index``)."""
    remaining: int = 0
    """Rows, and sessions' titles or metadata, not in the wanted form at the final check (0:
    done and verified)."""

    @property
    def verified(self) -> bool:
        """Whether the final check found every row in the wanted form."""
        return self.remaining == 0


def _in_target(data: str, kid: str | None) -> bool:
    return not is_encrypted(data) if kid is None else stored_key_id(data) == kid


def _reencode(
    row: StoredRow, keyring: Keyring, kid: str | None, report: RekeyReport
) -> RowChange | None:
    """The change that puts ``row`` in the wanted form, or ``None`` if it cannot be made."""
    if is_encrypted(row.data):
        try:
            text = keyring._open(row.session_id, row.data, _aad(row.session_id, row.clear))
        except _Undecryptable as exc:
            if exc.unknown_key:
                report.unknown_key += 1
            else:
                report.unreadable += 1
            return None
    else:
        text = row.data
    item = decode_item(text)
    # A row that is not an item (a corrupt row) is re-encoded as it is: it stays corrupt for
    # readers, but no plaintext of it is left behind.
    columns = clear_columns(item) if item is not None else (False, None, None, False)
    if kid is None:
        new = text
    else:
        new = keyring._seal(kid, row.session_id, text, _aad(row.session_id, columns))
        # Verified before it is written: the new payload opens to the same text.
        if keyring._open(row.session_id, new, _aad(row.session_id, columns)) != text:
            raise AssertionError(f"re-encoding a row of {row.session_id!r} did not round-trip")
    return RowChange(row.session_id, row.ref, row.data, new, columns)


async def _replace(backend: Backend, changes: list[RowChange]) -> int:
    for attempt in range(5):  # a busy database (a long write elsewhere): try the batch again
        try:
            return await backend.replace_rows(changes)
        except StorageBusyError:
            if attempt == 4:
                raise
    return 0  # pragma: no cover


_FIELDS = ("title", "metadata")


def _reencode_fields(
    stored: StoredFields, keyring: Keyring, kid: str | None, report: RekeyReport
) -> FieldsChange | None:
    """The change that puts a session's title and metadata in the wanted form, if any."""
    sid = stored.session_id
    new: dict[str, str | None] = {}
    for name in _FIELDS:
        value = getattr(stored, name)
        if value is None or _in_target(value, kid):
            new[name] = value
            continue
        try:
            text = keyring.decrypt_text(sid, value, context=name)
        except EncryptionKeyError:
            report.fields_unreadable += 1
            return None
        sealed = text if kid is None else keyring._seal(kid, sid, text, _text_aad(sid, name))
        if keyring.decrypt_text(sid, sealed, context=name) != text:  # verified before written
            raise AssertionError(f"re-encoding the {name} of {sid!r} did not round-trip")
        new[name] = sealed
    if (new["title"], new["metadata"]) == (stored.title, stored.metadata):
        return None
    return FieldsChange(sid, stored, new["title"], new["metadata"])


async def _reencode_all_fields(
    backend: Backend, keyring: Keyring, kid: str | None, report: RekeyReport, batch_size: int
) -> None:
    after: str | None = None
    while fields := await backend.scan_session_fields(after, batch_size):
        after = fields[-1].session_id
        changes = [
            change
            for stored in fields
            if (change := _reencode_fields(stored, keyring, kid, report)) is not None
        ]
        if changes:
            written = await backend.replace_session_fields(changes)
            report.fields_changed += written
            report.raced += len(changes) - written


async def reencode_all(
    backend: Backend,
    keyring: Keyring,
    *,
    target: Target = "newest",
    batch_size: int = BATCH_SIZE,
    progress: Callable[[RekeyReport], None] | None = None,
    keep_search_index: bool = False,
) -> RekeyReport:
    """Re-encode every item row to ``target``: sealed with the newest key, or plaintext.

    ``keyring`` opens the rows sealed so far; with ``target="newest"`` its first key must be
    a real one (not ``PLAINTEXT``). Encrypting also deletes the search index, whose entries
    hold message text in clear, unless ``keep_search_index`` (the app opted in to a plaintext
    index: ``search_plaintext_index``).

    Raises:
        StorageError: (a subclass) if the database fails; what was written stays.
    """
    kid = None if target == "plaintext" else keyring.write_key_id
    if target == "newest" and kid is None:
        from .errors import ConfigurationError

        raise ConfigurationError(
            f"the first encryption key is {PLAINTEXT!r}: nothing to encrypt with; "
            "use decrypt to write every row in plaintext"
        )
    report = RekeyReport(location=backend.location, target=kid or PLAINTEXT)
    await backend.begin_rewrite()
    after: tuple[str, int] | None = None
    while True:
        rows = await backend.scan_rows(after, batch_size)
        if not rows:
            break
        after = (rows[-1].session_id, rows[-1].ref)
        report.scanned += len(rows)
        changes: list[RowChange] = []
        for row in rows:
            if _in_target(row.data, kid):
                report.already += 1
                continue
            change = _reencode(row, keyring, kid, report)
            if change is not None:
                changes.append(change)
        if changes:
            written = await _replace(backend, changes)
            report.changed += written
            report.raced += len(changes) - written
        if progress is not None:
            progress(report)
    await _reencode_all_fields(backend, keyring, kid, report, batch_size)
    if kid is not None and not keep_search_index:
        report.search_entries_dropped = await backend.drop_search_index()
    await backend.finish_rewrite()
    report.remaining = await count_remaining(backend, kid, batch_size)
    logger.info(
        "re-encoding %s to %s: %d row(s) changed, %d remaining",
        report.location,
        report.target,
        report.changed,
        report.remaining,
    )
    return report


async def count_remaining(backend: Backend, kid: str | None, batch_size: int = 1000) -> int:
    """How many item rows, titles and metadata are not in the wanted form.

    The wanted form is sealed with ``kid``, or plain for ``None``.
    """
    remaining = 0
    after: tuple[str, int] | None = None
    while rows := await backend.scan_rows(after, batch_size):
        after = (rows[-1].session_id, rows[-1].ref)
        remaining += sum(1 for row in rows if not _in_target(row.data, kid))
    session_after: str | None = None
    while fields := await backend.scan_session_fields(session_after, batch_size):
        session_after = fields[-1].session_id
        remaining += sum(
            1
            for stored in fields
            for value in (stored.title, stored.metadata)
            if value is not None and not _in_target(value, kid)
        )
    return remaining
