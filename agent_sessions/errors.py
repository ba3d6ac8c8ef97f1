"""Exceptions raised by agent_sessions.

Every error the library raises on purpose derives from one base, so an app can catch
``AgentSessionsError`` and get a message that names what failed::

    AgentSessionsError
    ├── InvalidArgumentError      (also ValueError)  an argument is out of range or of a bad type
    │   ├── ConfigurationError                       a setting is invalid
    │   ├── InvalidIdentifierError                   a user or conversation id is unusable
    │   └── InvalidItemError      (also TypeError)   an item cannot be stored as JSON
    ├── SessionNotFoundError      (also LookupError) no session has that id
    ├── SessionClosedError        (also RuntimeError) the session or manager was closed
    ├── SchedulerError            (also RuntimeError) the cleanup scheduler cannot start
    ├── EventLoopMismatchError    (also RuntimeError) a manager used by two running loops
    ├── TurnLockTimeoutError      (also TimeoutError) another run held the session's turn lock
    ├── SearchUnavailableError    (also RuntimeError) search is off (search_index=False)
    ├── EncryptionKeyError                           a session's rows need a key not configured
    └── StorageError                                 the database failed
        ├── StorageUnavailableError                  the file cannot be opened or written
        ├── StorageBusyError                         the database stayed locked too long
        ├── StorageFullError                         the disk or database is full
        └── CorruptDatabaseError                     the file is not a usable SQLite database

Driver errors are translated into ``StorageError`` subclasses at one boundary per backend
(``agent_sessions.backends.sqlite.connection.translate_errors`` for ``sqlite3``), with the
original as ``__cause__``.
"""

from __future__ import annotations


class AgentSessionsError(Exception):
    """Base class of every error raised by agent_sessions."""


class InvalidArgumentError(AgentSessionsError, ValueError):
    """An argument is out of range or of the wrong type; nothing was changed."""


class ConfigurationError(InvalidArgumentError):
    """A setting (from the environment or ``.env``) is invalid."""


class InvalidIdentifierError(InvalidArgumentError):
    """A user id, conversation id or session id cannot be used."""


class InvalidItemError(InvalidArgumentError, TypeError):
    """An item passed to ``add_items`` is not a JSON object that can be stored.

    Also a ``TypeError``, as the SDK's ``SQLiteSession`` raises for an item that is not
    JSON-serialisable, so code written for it catches this the same way.
    """


class SessionNotFoundError(AgentSessionsError, LookupError):
    """No stored session has the given id."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"no session with id {session_id!r}")
        self.session_id = session_id


class SessionClosedError(AgentSessionsError, RuntimeError):
    """The session or manager was used after ``close()``.

    A closed ``AgentSession``'s message contains the SDK's wording, ``SQLiteSession is
    closed``, so code matching ``SQLiteSession``'s ``RuntimeError`` keeps working.
    """


class SchedulerError(AgentSessionsError, RuntimeError):
    """The cleanup scheduler cannot be started (e.g. no event loop is running)."""


class EventLoopMismatchError(AgentSessionsError, RuntimeError):
    """A ``SessionManager`` was used from a second event loop while its first still runs."""


class TurnLockTimeoutError(AgentSessionsError, TimeoutError):
    """``AgentSession.turn_lock`` waited ``timeout`` seconds while another run held the lock."""

    def __init__(self, session_id: str, timeout: float, *, path: str) -> None:
        super().__init__(
            f"session {session_id!r} in {path!r} is in use by another run: its turn lock was "
            f"not free within {timeout:g} s"
        )
        self.session_id = session_id
        self.timeout = timeout
        self.path = path


class SearchUnavailableError(AgentSessionsError, RuntimeError):
    """``search_sessions`` was called while the search index is off (``search_index=False``).

    Nothing is indexed while it is off, so a search could not find what was written then.
    Enable it (``AGENT_SESSION_SEARCH_INDEX=true``) to index messages written from then on.
    """


class EncryptionKeyError(AgentSessionsError):
    """A session's stored items are encrypted with a key that is not configured (or none is).

    Raised by reads (nothing garbled is ever returned) and by a write without a key to a
    session holding encrypted items (nothing is written). Names the session and the key ids
    involved, never a key.
    """

    def __init__(
        self, session_id: str, needed: list[str], configured: list[str], *, writing: bool = False
    ) -> None:
        given = (
            f"the configured key ids are {', '.join(configured)}"
            if configured
            else "no encryption key is configured (encryption_key= or AGENT_SESSION_ENCRYPTION_KEY)"
        )
        if writing:
            message = (
                f"session {session_id!r} holds encrypted items and {given}: nothing was "
                "written (plaintext is not mixed into an encrypted session)"
            )
        else:
            ids = ", ".join(needed) or "?"
            message = (
                f"session {session_id!r} holds items encrypted with key id {ids} that "
                f"cannot be decrypted: {given}"
            )
        super().__init__(message)
        self.session_id = session_id
        self.needed_key_ids = needed
        self.configured_key_ids = configured


class StorageError(AgentSessionsError):
    """The database could not complete an operation."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class StorageUnavailableError(StorageError):
    """The database file cannot be opened, created or written."""


class StorageBusyError(StorageError):
    """The database stayed locked by other writers for longer than the busy timeout."""


class StorageFullError(StorageError):
    """The disk, or the database's page limit, is full; nothing from the failed write was kept."""


class CorruptDatabaseError(StorageError):
    """The file is not a SQLite database, or its structure is damaged."""
