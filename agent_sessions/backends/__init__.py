"""Storage backends: one package per database kind, behind ``base.Backend``.

``open_backend`` picks one from the database target (a SQLite path or a server URL) and
imports its driver only then, so SQLite apps never import a PostgreSQL driver.
"""

from __future__ import annotations

import os
import re

from ..errors import InvalidArgumentError
from .base import Backend

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
POSTGRES_SCHEMES = ("postgresql", "postgres")


def is_url(target: str | os.PathLike[str]) -> bool:
    """Whether ``target`` is a server URL (``scheme://...``) rather than a SQLite path."""
    text = os.fspath(target) if isinstance(target, os.PathLike) else target
    match = _URL.match(text) if isinstance(text, str) else None
    return match is not None and match.group(1).lower() != "file"


def open_backend(
    target: str | os.PathLike[str], *, create: bool = True, offload: bool = False
) -> Backend:
    """The backend for a database target: a SQLite path, or a ``postgresql://`` URL.

    Args:
        target: A SQLite file path (or ``":memory:"``), or a server URL.
        create: Create the database's tables if needed; with ``False`` refuse a database
            without them.
        offload: SQLite only: run operations in worker threads (the manager's choice).

    Raises:
        InvalidArgumentError: if ``target`` is a URL of a database kind not supported, or
            not a path.
    """
    if is_url(target):
        name = str(target).split("://", 1)[0]
        raise InvalidArgumentError(
            f"unsupported database URL scheme {name!r}: use a SQLite file path"
        )
    from .sqlite import SQLiteBackend

    return SQLiteBackend(target, create=create, offload=offload)


__all__ = ["Backend", "is_url", "open_backend"]
