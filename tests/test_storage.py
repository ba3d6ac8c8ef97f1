"""The storage layer's transaction helper and schema set-up, on real SQLite files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent_sessions.backends.sqlite import connection, schema
from agent_sessions.errors import (
    CorruptDatabaseError,
    StorageBusyError,
    StorageError,
    StorageFullError,
    StorageUnavailableError,
)


def test_failed_commit_rolls_back_and_leaves_no_transaction(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        conn.execute(
            "CREATE TABLE child (parent_id INTEGER REFERENCES parent (id) "
            "DEFERRABLE INITIALLY DEFERRED)"
        )
        # A deferred constraint fails at COMMIT, like a full disk or an I/O error can.
        with pytest.raises(sqlite3.IntegrityError), connection.write_transaction(conn):
            conn.execute("INSERT INTO child VALUES (42)")
        assert not conn.in_transaction
        assert conn.execute("SELECT COUNT(*) FROM child").fetchone() == (0,)
        with connection.write_transaction(conn):  # the connection is usable again
            conn.execute("INSERT INTO parent VALUES (1)")
    finally:
        conn.close()


def test_write_transaction_does_not_inherit_an_open_transaction(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    try:
        conn.execute("CREATE TABLE t (v INTEGER)")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t VALUES (1)")  # left behind by some earlier failure
        with connection.write_transaction(conn):
            conn.execute("INSERT INTO t VALUES (2)")
        assert conn.execute("SELECT v FROM t").fetchall() == [(2,)]
    finally:
        conn.close()


def test_connect_migrates_once_and_switches_to_wal(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    first = schema.connect(path)
    try:
        assert first.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert schema.schema_version(first) == schema.LATEST_VERSION
        assert schema.migrate(first) == 0
    finally:
        first.close()


def _driver_error(text: str, code: int, name: str) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError(text)
    exc.sqlite_errorcode = code  # what the driver sets on errors it raises itself
    exc.sqlite_errorname = name
    return exc


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_driver_error("database or disk is full", 13, "SQLITE_FULL"), StorageFullError),
        # A growing WAL on a full filesystem fails to extend its -shm index this way
        # (seen on tmpfs by the disk-full soak in tests/reliability/test_storage_faults.py).
        (_driver_error("disk I/O error", 4874, "SQLITE_IOERR_SHMSIZE"), StorageFullError),
        (_driver_error("disk I/O error", 266, "SQLITE_IOERR_READ"), StorageUnavailableError),
        (_driver_error("database is locked", 5, "SQLITE_BUSY"), StorageBusyError),
        (_driver_error("file is not a database", 26, "SQLITE_NOTADB"), CorruptDatabaseError),
    ],
)
def test_driver_errors_map_to_the_storage_error_tree(
    exc: sqlite3.OperationalError, expected: type[StorageError]
) -> None:
    error = connection.translate_error(exc, "/data/app.db")
    assert type(error) is expected
    assert error.path == "/data/app.db"
    assert "'/data/app.db'" in str(error)
