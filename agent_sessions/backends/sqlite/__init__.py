"""The SQLite backend: a file shared by every session, worker and process on one machine.

``connection`` (errors, paths, pragmas, transactions), ``schema`` (tables, migrations,
adoption of the SDK's tables), ``sql`` (every statement), ``engine`` (one connection per
file and thread) and ``backend`` (the ``Backend`` built on them).
"""

from .backend import SQLiteBackend

__all__ = ["SQLiteBackend"]
