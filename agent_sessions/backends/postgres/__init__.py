"""The PostgreSQL backend: psycopg 3 with a shared ``AsyncConnectionPool``.

Needs the ``psycopg`` and ``psycopg-pool`` packages; nothing else in the library imports this
package, so SQLite users do not need them. Works directly against a server and through
PgBouncer in transaction mode: no server-side prepared statements, no session-level locks or
settings.

Modules: ``backend`` (``PostgresBackend``), ``batch`` (what a write's batch needs, worked out
in Python), ``sql`` (every statement), ``schema`` (tables and migrations), ``transaction``
(one pipelined transaction), ``pool`` (one pool per process, event loop and URL) and
``errors`` (driver errors to ``StorageError``).
"""

from __future__ import annotations

from .backend import PostgresBackend
from .pool import close_pools

__all__ = ["PostgresBackend", "close_pools"]
