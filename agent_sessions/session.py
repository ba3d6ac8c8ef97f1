"""``AgentSession``: the SDK's ``SQLiteSession``, keyed by user and conversation, bounded."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from agents import SQLiteSession
from agents.items import TResponseInputItem
from agents.memory import SessionABC, SessionSettings
from agents.memory.session_settings import coerce_session_settings, resolve_session_limit

from . import codec, metrics
from .backends import is_url, open_backend
from .backends.base import UNCHANGED, Backend, SessionKey
from .backends.sqlite import SQLiteBackend
from .backends.sqlite.schema import MESSAGES_TABLE, SESSIONS_TABLE
from .clock import Clock, cutoff_before, now_timestamp, to_timestamp, utc_now
from .conversations import (
    decode_metadata,
    default_title,
    encode_metadata,
    open_field,
    seal_field,
    validate_title,
)
from .durations import parse_duration
from .encryption import Keyring, keyring_for, looks_like_sdk_envelope
from .errors import (
    AgentSessionsError,
    InvalidArgumentError,
    InvalidItemError,
    SessionClosedError,
    StorageError,
    TurnLockTimeoutError,
)
from .ids import get_session_id, normalize_identifier, optional_limit, positive_int, seconds
from .settings import (
    AgentSessionSettings,
    pool_options,
    resolve_database,
    resolve_setting,
    search_enabled,
)

logger = logging.getLogger("agent_sessions")

TURN_LOCK_LEASE = 30.0
"""Default seconds a turn lock is held without renewal; the holder renews every third of it."""

MIN_TURN_LOCK_LEASE = 0.1
"""Shortest lease accepted (its holder renews it every third of it)."""

_FIRST_LOCK_POLL = 0.002
_MAX_LOCK_POLL = 0.05
_releasing: set[asyncio.Future[None]] = set()


class BoundedSessionMixin:
    """The session protocol over a ``Backend``: what every session class of ours shares.

    A subclass sets ``session_id``, ``max_messages``, ``retention``, ``session_settings``,
    ``_backend``, ``_key``, ``_clock``, ``_closed`` and (to encrypt) ``_keyring``.
    """

    session_id: str
    max_messages: int
    retention: timedelta
    session_settings: SessionSettings | None
    _backend: Backend
    _key: SessionKey
    _clock: Clock
    _closed: bool
    _keyring: Keyring | None = None
    _warned_of_envelopes = False

    @property
    def encrypted(self) -> bool:
        """Whether new items are encrypted at rest (an ``encryption_key`` is configured)."""
        return self._keyring is not None and not self._keyring.writes_plaintext

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """Return the history, oldest first; with ``limit``, only the newest ``limit`` items.

        Rows that cannot be decoded as items are skipped and logged, as are encrypted rows
        that fail authentication. As in the SDK, ``None`` or a negative limit reads everything.

        Raises:
            InvalidArgumentError: if ``limit`` is neither ``None`` nor an int.
            EncryptionKeyError: if items are encrypted with a key not configured (or none is).
        """
        session_limit = optional_limit(resolve_session_limit(limit, self.session_settings))
        backend = self._open_backend()
        decoded = await backend.read_items(self.session_id, session_limit, self._active_since())
        if decoded.corrupt_row_ids:
            logger.warning(
                "session %r: skipped %d corrupt row(s) (ids %s)",
                self.session_id,
                len(decoded.corrupt_row_ids),
                decoded.corrupt_row_ids[:10],
            )
        return decoded.items  # type: ignore[return-value]

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Append items, then prune to ``max_messages``, in one transaction.

        A tool output whose call is no longer stored (an approval answered after pruning
        removed the waiting call) is left out with a warning: the model would reject it.

        Raises:
            InvalidItemError: (also a ``TypeError``) if ``items`` is not a list (or iterable)
                of JSON-serialisable dicts; nothing is written.
            StorageError: (a subclass) if the database fails; nothing is written. One
                exception: a PostgreSQL connection lost while the COMMIT is under way
                (``StorageUnavailableError``) cannot tell whether it was applied; the batch
                is then stored whole or not at all, so do not retry it blindly.
            EncryptionKeyError: without a key, if the session holds encrypted items; nothing
                is written (plaintext is never mixed into an encrypted session).
        """
        backend = self._open_backend()
        if not items:
            return
        if not isinstance(items, list):
            items = _as_item_list(items)
        payloads = codec.encode_items(items)
        if not self._warned_of_envelopes and any(map(looks_like_sdk_envelope, items)):
            self._warned_of_envelopes = True
            logger.warning(
                "session %r: received items encrypted by the SDK's EncryptedSession; pruning "
                "cannot see inside them, so it may keep a tool output without its call. Pass "
                "encryption_key= to the session instead of wrapping it",
                self.session_id,
            )
        if self._keyring is not None:
            payloads = self._keyring.seal_items(self.session_id, items, payloads)
        moment = self._clock()
        started = time.perf_counter()  # for health(): latency, not time, so not the clock
        pruned = await backend.append_items(
            self._key,
            items,
            payloads,
            to_timestamp(moment),
            self.max_messages,
            active_since=cutoff_before(moment, self.retention),
            title=seal_field(self._keyring, self.session_id, default_title(items), "title"),
        )
        metrics.write_latency.add(time.perf_counter() - started)
        if pruned:
            logger.debug("session %r: pruned %d item(s)", self.session_id, pruned)

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove and return the newest item, or ``None`` if the session is empty."""
        backend = self._open_backend()
        moment = self._clock()
        item = await backend.pop_item(
            self.session_id, to_timestamp(moment), cutoff_before(moment, self.retention)
        )
        return item  # type: ignore[return-value]

    async def clear_session(self) -> None:
        """Delete every item of this session and its session row."""
        await self._open_backend().delete_session(self.session_id)

    def _active_since(self) -> float:
        """The activity time before which this session has expired (idle past retention)."""
        return cutoff_before(self._clock(), self.retention)

    # --- title and metadata ---

    async def get_title(self) -> str | None:
        """The conversation's title: the one set, else its first user message, shortened.

        ``None`` before the first user message with text (and once it has expired).
        """
        fields = await self._open_backend().read_session_fields(
            self.session_id, self._active_since()
        )
        if fields is None:
            return None
        return open_field(self._keyring, self.session_id, fields.title, "title", strict=True)

    async def set_title(self, title: str | None) -> None:
        """Set the conversation's title; ``None`` returns to the default (the next user message).

        Raises:
            InvalidArgumentError: if ``title`` is blank, longer than ``MAX_TITLE_LENGTH``
                characters, or holds control characters; nothing is written.
        """
        sealed = seal_field(self._keyring, self.session_id, validate_title(title), "title")
        await self._set_fields(title=sealed)

    async def get_metadata(self) -> dict[str, Any]:
        """The app's metadata object of this conversation (``{}`` if none is set)."""
        fields = await self._open_backend().read_session_fields(
            self.session_id, self._active_since()
        )
        if fields is None:
            return {}
        text = open_field(self._keyring, self.session_id, fields.metadata, "metadata", strict=True)
        return decode_metadata(text)

    async def set_metadata(self, metadata: dict[str, Any]) -> None:
        """Replace the app's metadata object (e.g. channel, locale) of this conversation.

        Raises:
            InvalidArgumentError: if it is not a JSON-serialisable dict with str keys, or is
                larger than ``MAX_METADATA_BYTES`` as JSON; nothing is written.
        """
        text = encode_metadata(metadata)
        await self._set_fields(
            metadata=seal_field(self._keyring, self.session_id, text, "metadata")
        )

    async def _set_fields(self, *, title: object = UNCHANGED, metadata: object = UNCHANGED) -> None:
        backend = self._open_backend()
        moment = self._clock()
        await backend.set_session_fields(
            self._key,
            to_timestamp(moment),
            cutoff_before(moment, self.retention),
            create=True,
            title=title,
            metadata=metadata,
        )

    # --- turn lock ---

    def turn_lock(
        self, timeout: float | None = None, *, lease: float = TURN_LOCK_LEASE
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold this session's turn lock for the block: one run at a time per session.

        Runs on one session at once interleave their items (each writes its input, then its
        output); wrap each run in ``async with session.turn_lock(timeout=...):`` to
        serialise them, across tasks and across processes sharing the database. The lock is
        a row in the database with a lease: the holder renews it every ``lease / 3`` seconds
        while the block runs, and deletes it on exit (normal, exception or cancellation). A
        holder that dies without releasing blocks the session until its lease runs out. The
        lock is not reentrant, and waiters are not served in order.

        Args:
            timeout: Seconds to wait for the lock; ``None`` (or ``math.inf``) waits as long
                as it takes, ``0`` tries once.
            lease: Seconds the lock stays held without renewal (at least
                ``MIN_TURN_LOCK_LEASE``); the longest a dead holder blocks the session. Lease
                times come from the session's clock.

        Raises:
            InvalidArgumentError: if ``timeout`` or ``lease`` is not a valid number of seconds.
            TurnLockTimeoutError: on entry, if another holder kept the lock for ``timeout``.
            SessionClosedError: on entry, if the session is closed.
        """
        wait = None if timeout is None else seconds(timeout, "timeout")
        hold = seconds(lease, "lease", minimum=MIN_TURN_LOCK_LEASE, finite=True)
        return self._hold_turn_lock(wait, hold)

    @contextlib.asynccontextmanager
    async def _hold_turn_lock(self, wait: float | None, lease: float) -> AsyncIterator[None]:
        owner = uuid.uuid4().hex  # one per acquisition: tasks of one process exclude each other
        await self._acquire_turn_lock(owner, wait, lease)
        # Nothing awaits between taking the lock and entering the try: a cancellation can
        # only arrive inside it, where the lock is released.
        heartbeat = asyncio.create_task(self._renew_turn_lock(owner, lease))
        try:
            yield
        finally:
            heartbeat.cancel()
            # Shielded: cancelled again here, the caller stops waiting but the row still goes.
            release = asyncio.ensure_future(self._release_turn_lock(owner, lease))
            _releasing.add(release)  # a strong reference while it runs unawaited
            release.add_done_callback(_releasing.discard)
            await asyncio.shield(release)

    async def _acquire_turn_lock(self, owner: str, wait: float | None, lease: float) -> None:
        deadline = None if wait is None else time.monotonic() + wait
        delay = _FIRST_LOCK_POLL
        while True:
            backend = self._open_backend()
            now = now_timestamp(self._clock)
            # Polling reads; only a lock that looks free is tried in a write transaction.
            if await backend.turn_lock_is_free(
                self.session_id, now
            ) and await backend.take_turn_lock(self.session_id, owner, now, now + lease):
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                assert wait is not None
                raise TurnLockTimeoutError(self.session_id, wait, path=self._backend.location)
            await asyncio.sleep(delay if remaining is None else min(delay, remaining))
            delay = min(delay * 2, _MAX_LOCK_POLL)

    async def _renew_turn_lock(self, owner: str, lease: float) -> None:
        # Through the backend even once the session is closed: a lock taken before close()
        # is still renewed and released.
        while True:
            await asyncio.sleep(lease / 3)
            expires = now_timestamp(self._clock) + lease
            try:
                renewed = await self._backend.renew_turn_lock(self.session_id, owner, expires)
            except SessionClosedError:  # an in-memory session closed inside the block
                return
            except AgentSessionsError as exc:  # the lease may still hold: try again next time
                logger.warning(
                    "session %r: could not renew its turn lock: %s", self.session_id, exc
                )
                continue
            if not renewed:
                logger.warning(
                    "session %r: its turn lock was lost (the lease ran out and another run "
                    "took it); runs may now overlap",
                    self.session_id,
                )
                return

    async def _release_turn_lock(self, owner: str, lease: float) -> None:
        try:
            await self._backend.release_turn_lock(self.session_id, owner)
        except SessionClosedError:  # an in-memory session closed inside the block: gone
            pass
        except StorageError as exc:  # not raised over the run's own outcome
            logger.warning(
                "session %r: could not release its turn lock (it expires within %g s): %s",
                self.session_id,
                lease,
                exc,
            )

    def close(self) -> None:
        """Mark the session closed; it cannot be used afterwards."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _open_backend(self) -> Backend:
        if self._closed:
            # The SDK's own wording too: code written for SQLiteSession may match it.
            raise SessionClosedError(
                f"session {self.session_id!r} is closed (SQLiteSession is closed)"
            )
        return self._backend


class AgentSession(BoundedSessionMixin, SQLiteSession):
    """Persistent, bounded conversation history for one user's conversation.

    Pass it as ``session=`` to ``Runner.run``; the agent then sees earlier turns, across
    requests and restarts. After every ``add_items``, in the same transaction, the oldest
    items are pruned so at most ``max_messages`` remain, cutting only where the kept history
    is valid model input (see ``agent_sessions.pruning``).

    Attributes:
        user_id: The user's id, as a string.
        conversation_id: The conversation's id, as a string.
        session_id: ``get_session_id(user_id, conversation_id)``.
        max_messages: How many items are kept after each write.
    """

    _backend: SQLiteBackend

    def __init__(
        self,
        user_id: str | uuid.UUID,
        conversation_id: str | uuid.UUID,
        *,
        db_path: str | Path | None = None,
        max_messages: int | None = None,
        retention: timedelta | str | None = None,
        settings: AgentSessionSettings | None = None,
        session_settings: SessionSettings | dict[str, Any] | None = None,
        clock: Clock | None = None,
        search_index: bool | None = None,
        encryption_key: str | bytes | Sequence[str | bytes] | Keyring | None = None,
    ) -> None:
        """Open (creating if needed) the session's database.

        Args:
            user_id: The user's id (``uuid.UUID`` or a printable string, at most 128 chars).
            conversation_id: The conversation's id, with the same rules.
            db_path: SQLite file; defaults to the settings' ``db_path``. ``":memory:"`` keeps
                everything in this object only.
            max_messages: Items kept after each write; defaults to the settings'.
            retention: How long the conversation may be idle before it expires (reads as
                empty, and the next write starts it afresh): a ``timedelta`` or ``"30m"``,
                ``"12h"``, ``"7d"``; defaults to the settings' (``retention_days``).
            settings: Settings to use instead of ``get_settings()``.
            session_settings: The SDK's ``SessionSettings`` (e.g. a read ``limit``).
            clock: Returns the current aware datetime; activity times are taken from it.
            search_index: Index message text for ``SessionManager.search_sessions``;
                defaults to the settings'.
            encryption_key: Encrypt items at rest: a key from ``generate_key()``, or several
                (a list or a comma-separated string), newest first; defaults to the settings'
                ``encryption_key``. Needs the ``encryption`` extra.

        Raises:
            InvalidIdentifierError: if an id is unusable, or its session id is held in an
                adopted database by a session of another owner.
            ConfigurationError: if a key is malformed, or ``cryptography`` is missing.
            InvalidArgumentError: if ``max_messages`` is not a positive integer, ``db_path``
                is not a path, or ``settings`` is not an ``AgentSessionSettings``.
            TypeError: if ``session_settings`` has unknown fields (the SDK's own check).
            StorageError: (a subclass) naming ``db_path`` if it cannot be opened.
        """
        user = normalize_identifier(user_id, "user_id")
        conversation = normalize_identifier(conversation_id, "conversation_id")
        session_id = get_session_id(user, conversation)
        self.user_id = user
        self.conversation_id = conversation
        self.max_messages = positive_int(
            resolve_setting(max_messages, "max_messages", settings), "max_messages"
        )
        self.retention = parse_duration(
            resolve_setting(retention, "retention_period", settings), "retention"
        )
        self._keyring = keyring_for(resolve_setting(encryption_key, "encryption_key", settings))
        backend = SQLiteBackend(
            resolve_setting(db_path, "db_path", settings),
            search_index=search_enabled(search_index, self._keyring, settings),
            keyring=self._keyring,
        )
        # SQLiteSession.__init__ is deliberately not called: it opens a connection and checks
        # the schema for every object (about 2 ms). The attributes it documents are set here
        # and every method it implements is overridden, on a shared connection instead.
        self.db_path = backend.path
        self.sessions_table = SESSIONS_TABLE
        self.messages_table = MESSAGES_TABLE
        # The SDK's coercion and its errors (TypeError for unknown fields), as in SQLiteSession.
        self.session_settings = (
            coerce_session_settings(session_settings)
            if session_settings is not None
            else SessionSettings()
        )
        self._clock = clock or utc_now
        self._closed = False
        self._backend = backend
        # Opening here makes a bad path fail at construction, naming it.
        self.session_id = backend.open_session(user, conversation, session_id)
        self._key = SessionKey(self.session_id, user, conversation)

    def close(self) -> None:
        """Mark the session closed; it cannot be used afterwards. Idempotent.

        File connections are shared by every session on the file and stay open for the next
        one (see ``agent_sessions.backends.sqlite.engine``); an in-memory database is
        discarded.
        """
        self._closed = True
        self._backend.close_now()

    # --- SQLiteSession internals that must not be reached on this class ---

    def _check_not_closed(self) -> None:
        self._open_backend()

    def _get_connection(self) -> sqlite3.Connection:
        raise AgentSessionsError("AgentSession does not use SQLiteSession's thread connections")

    def _locked_connection(self) -> Any:
        return self._get_connection()

    def _write_connection(self) -> Any:
        return self._get_connection()

    async def _get_compaction_snapshot(self, *args: Any, **kwargs: Any) -> None:
        # Compaction must go through get_items/add_items (and so through pruning); returning
        # None makes the SDK take that generic path, as it does for any subclass.
        return None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(user_id={self.user_id!r}, "
            f"conversation_id={self.conversation_id!r}, db_path={str(self.db_path)!r}, "
            f"max_messages={self.max_messages})"
        )


class PostgresSession(BoundedSessionMixin, SessionABC):
    """``AgentSession`` on PostgreSQL: the same history, pruning and extras, on a server.

    Implements the SDK's session protocol; pass it as ``session=`` to ``Runner.run``. All
    sessions of a process share one connection pool per database and event loop (see
    settings and ``close_server_pools``), so opening one per request costs nothing. Needs
    ``pip install 'agent-sessions[postgres]'``.

    Attributes:
        user_id: The user's id, as a string.
        conversation_id: The conversation's id, as a string.
        session_id: ``get_session_id(user_id, conversation_id)``.
        max_messages: How many items are kept after each write.
        database_url: The database's URL, without its password.
    """

    def __init__(
        self,
        user_id: str | uuid.UUID,
        conversation_id: str | uuid.UUID,
        *,
        database_url: str | None = None,
        max_messages: int | None = None,
        retention: timedelta | str | None = None,
        settings: AgentSessionSettings | None = None,
        session_settings: SessionSettings | dict[str, Any] | None = None,
        clock: Clock | None = None,
        search_index: bool | None = None,
        encryption_key: str | bytes | Sequence[str | bytes] | Keyring | None = None,
    ) -> None:
        """Make the session; the database is reached on first use.

        Args:
            user_id: The user's id (``uuid.UUID`` or a printable string, at most 128 chars).
            conversation_id: The conversation's id, with the same rules.
            database_url: A ``postgresql://`` URL; defaults to the settings' ``database_url``.
            max_messages: Items kept after each write; defaults to the settings'.
            retention: How long the conversation may be idle before it expires (reads as
                empty, and the next write starts it afresh): a ``timedelta`` or ``"30m"``,
                ``"12h"``, ``"7d"``; defaults to the settings' (``retention_days``).
            settings: Settings to use instead of ``get_settings()``.
            session_settings: The SDK's ``SessionSettings`` (e.g. a read ``limit``).
            clock: Returns the current aware datetime; activity times are taken from it.
            search_index: Index message text for ``SessionManager.search_sessions``;
                defaults to the settings'.
            encryption_key: Encrypt items at rest (see ``AgentSession``).

        Raises:
            InvalidIdentifierError: if an id is unusable.
            InvalidArgumentError: if ``max_messages`` is not a positive integer, or no
                ``postgresql://`` URL is given or set.
            ConfigurationError: if the ``postgres`` extra is not installed, a key is
                malformed, or ``cryptography`` is missing.
        """
        user = normalize_identifier(user_id, "user_id")
        conversation = normalize_identifier(conversation_id, "conversation_id")
        url = resolve_setting(database_url, "database_url", settings)
        if not isinstance(url, str) or not is_url(url):
            raise InvalidArgumentError(
                "PostgresSession needs a postgresql:// URL: pass database_url= or set "
                "AGENT_SESSION_DATABASE_URL"
            )
        self.user_id = user
        self.conversation_id = conversation
        self.session_id = get_session_id(user, conversation)
        self.max_messages = positive_int(
            resolve_setting(max_messages, "max_messages", settings), "max_messages"
        )
        self.retention = parse_duration(
            resolve_setting(retention, "retention_period", settings), "retention"
        )
        self.session_settings = (
            coerce_session_settings(session_settings)
            if session_settings is not None
            else SessionSettings()
        )
        self._keyring = keyring_for(resolve_setting(encryption_key, "encryption_key", settings))
        self._backend = open_backend(
            url,
            pool=pool_options(settings),
            search_index=search_enabled(search_index, self._keyring, settings),
            keyring=self._keyring,
        )
        self.database_url = self._backend.location
        self._key = SessionKey(self.session_id, user, conversation)
        self._clock = clock or utc_now
        self._closed = False

    def close(self) -> None:
        """Mark the session closed; it cannot be used afterwards. Idempotent.

        The connection pool is shared by every session of the process and stays open.
        """
        self._closed = True

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(user_id={self.user_id!r}, "
            f"conversation_id={self.conversation_id!r}, database_url={self.database_url!r}, "
            f"max_messages={self.max_messages})"
        )


def get_agent_session(
    user_id: str | uuid.UUID,
    conversation_id: str | uuid.UUID,
    *,
    db_path: str | Path | None = None,
    database_url: str | None = None,
    max_messages: int | None = None,
    retention: timedelta | str | None = None,
    settings: AgentSessionSettings | None = None,
    session_settings: SessionSettings | dict[str, Any] | None = None,
    clock: Clock | None = None,
    search_index: bool | None = None,
    encryption_key: str | bytes | Sequence[str | bytes] | Keyring | None = None,
) -> AgentSession | PostgresSession:
    """Return the session for a (user, conversation) pair, configured from settings.

    A ``PostgresSession`` when a ``postgresql://`` URL is given (``database_url=``, or as
    ``db_path=``) or set (``AGENT_SESSION_DATABASE_URL``), else an ``AgentSession`` on the
    SQLite file. Takes the constructors' keyword arguments; those given win over the
    settings (``settings``, else ``get_settings()``).

    Raises:
        InvalidIdentifierError: if an id is unusable.
        InvalidArgumentError: if an argument is out of range or of the wrong type.
        StorageError: (a subclass) naming the path if the SQLite file cannot be opened.
    """
    target = resolve_database(db_path, database_url, settings)
    if is_url(target):
        return PostgresSession(
            user_id,
            conversation_id,
            database_url=str(target),
            max_messages=max_messages,
            retention=retention,
            settings=settings,
            session_settings=session_settings,
            clock=clock,
            search_index=search_index,
            encryption_key=encryption_key,
        )
    return AgentSession(
        user_id,
        conversation_id,
        db_path=target,  # type: ignore[arg-type]
        max_messages=max_messages,
        retention=retention,
        settings=settings,
        session_settings=session_settings,
        clock=clock,
        search_index=search_index,
        encryption_key=encryption_key,
    )


def _as_item_list(items: object) -> list[TResponseInputItem]:
    if isinstance(items, dict | str | bytes) or not isinstance(items, Iterable):
        raise InvalidItemError(f"items must be a list of items, not a {type(items).__name__}")
    return list(items)
