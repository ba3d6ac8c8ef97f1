"""What a conversation carries besides its items: a title, the app's metadata, list cursors.

Pure functions shared by every backend and by the sessions and the manager: the default
title made from the first user message, validation of what an app sets, and the opaque
keyset cursor of ``SessionManager.list_sessions``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from .backends.base import ListPosition
from .encryption import is_encrypted, stored_key_id
from .errors import EncryptionKeyError, InvalidArgumentError
from .pruning import Item
from .text import item_text

DEFAULT_TITLE_LENGTH = 80
"""Characters of the first user message kept as a conversation's default title."""

MAX_TITLE_LENGTH = 200
"""Longest title an app may set, in characters."""

MAX_METADATA_BYTES = 4096
"""Largest metadata object an app may set, as compact UTF-8 JSON."""

if TYPE_CHECKING:
    from .encryption import Keyring

FieldName = Literal["title", "metadata"]
"""A session field an encrypted session keeps sealed (bound into its encryption)."""

_SPACE = re.compile(r"\s+")
_CURSOR_VERSION = 1


def default_title(items: Iterable[Item]) -> str | None:
    """The title a conversation gets from its first user message, or ``None`` if none has text.

    Whitespace runs become one space; text longer than ``DEFAULT_TITLE_LENGTH`` is cut at a
    word boundary where there is one, and ends with an ellipsis.
    """
    for item in items:
        if item.get("role") != "user":
            continue
        text = item_text(item)
        if text is None:
            continue
        # Only the start can make the title: a 1 MB message must not cost a pass over it all.
        head = text[: DEFAULT_TITLE_LENGTH * 4]
        flat = _SPACE.sub(" ", "".join(c for c in head if _printable(c) or c.isspace())).strip()
        if not flat:
            continue
        if len(flat) <= DEFAULT_TITLE_LENGTH:
            return flat
        cut = flat[: DEFAULT_TITLE_LENGTH - 1]
        space = cut.rfind(" ")
        if space >= DEFAULT_TITLE_LENGTH // 2:
            cut = cut[:space]
        return cut.rstrip() + "…"
    return None


def _printable(char: str) -> bool:
    return unicodedata.category(char)[0] != "C"


def validate_title(title: object) -> str | None:
    """``title`` as stored: stripped text, or ``None`` to return to the default title.

    Raises:
        InvalidArgumentError: if it is not a str or ``None``, is blank, longer than
            ``MAX_TITLE_LENGTH``, or holds control characters.
    """
    if title is None:
        return None
    if not isinstance(title, str):
        raise InvalidArgumentError(f"title must be a str or None, not {type(title).__name__}")
    text = title.strip()
    if not text:
        raise InvalidArgumentError("title must not be blank (pass None for the default title)")
    if len(text) > MAX_TITLE_LENGTH:
        raise InvalidArgumentError(
            f"title is {len(text)} characters long; the limit is {MAX_TITLE_LENGTH}"
        )
    if not all((_printable(char) and char not in "\u2028\u2029") or char == " " for char in text):
        raise InvalidArgumentError("title must not contain control or non-printable characters")
    return text


def encode_metadata(metadata: object) -> str:
    """``metadata`` as the compact JSON text stored for it.

    Raises:
        InvalidArgumentError: if it is not a dict with str keys, does not serialise to JSON,
            or is larger than ``MAX_METADATA_BYTES``.
    """
    if not isinstance(metadata, Mapping):
        raise InvalidArgumentError(f"metadata must be a dict, not {type(metadata).__name__}")
    if not all(isinstance(key, str) for key in metadata):
        raise InvalidArgumentError("metadata keys must be str")
    try:
        text = json.dumps(
            dict(metadata), separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidArgumentError(f"metadata must be JSON-serialisable: {exc}") from None
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_METADATA_BYTES:
        raise InvalidArgumentError(
            f"metadata is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError("metadata must not contain lone surrogates") from None
    return text


def decode_metadata(text: str | None) -> dict[str, Any]:
    """Stored metadata text as a dict; ``{}`` when none is stored or it does not decode."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def encode_cursor(position: ListPosition) -> str:
    """An opaque, URL-safe cursor for the page after ``position``."""
    raw = json.dumps(
        [_CURSOR_VERSION, position.activity, position.session_id], separators=(",", ":")
    )
    return base64.urlsafe_b64encode(raw.encode("utf-8")).decode("ascii").rstrip("=")


# A position is POSIX seconds (SQLite) or microseconds (PostgreSQL) of a datetime: within
# what datetime holds in microseconds, anything a backend made fits, and nothing overflows.
_EARLIEST_POSITION = -62_135_596_800 * 10**6
_LATEST_POSITION = 253_402_300_799 * 10**6


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no stored id holds one
        return False
    return True


def decode_cursor(cursor: object) -> ListPosition:
    """The position a cursor from ``encode_cursor`` names.

    Raises:
        InvalidArgumentError: if ``cursor`` is not one this library made.
    """
    if not isinstance(cursor, str) or not cursor or len(cursor) > 8192:
        raise InvalidArgumentError("cursor must be a cursor string from list_sessions")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, activity, session_id = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise InvalidArgumentError("cursor is not a cursor from list_sessions") from None
    if (
        version != _CURSOR_VERSION
        or isinstance(activity, bool)
        or not isinstance(activity, int | float)
        or not _EARLIEST_POSITION <= activity <= _LATEST_POSITION
        or not isinstance(session_id, str)
        or "\x00" in session_id
        or not _utf8(session_id)
    ):
        raise InvalidArgumentError("cursor is not a cursor from list_sessions")
    return ListPosition(activity=activity, session_id=session_id)


# --- titles and metadata of encrypted sessions -------------------------------------------------


def seal_field(
    keyring: Keyring | None, session_id: str, value: str | None, context: FieldName
) -> str | None:
    """``value`` as stored: encrypted when ``keyring`` encrypts writes, else as it is."""
    if value is None or keyring is None or keyring.writes_plaintext:
        return value
    return keyring.encrypt_text(session_id, value, context=context)


def open_field(
    keyring: Keyring | None,
    session_id: str,
    stored: str | None,
    context: FieldName,
    *,
    strict: bool,
) -> str | None:
    """A stored title or metadata text, decrypted where it was encrypted.

    Without the key that sealed it, ``None`` in listings (``strict=False``: they need no key);
    with ``strict``, ``EncryptionKeyError`` names the session, as reading its items does.
    """
    if stored is None or not is_encrypted(stored):
        return stored
    if keyring is None:
        if strict:
            raise EncryptionKeyError(session_id, [stored_key_id(stored) or "?"], [])
        return None
    try:
        return keyring.decrypt_text(session_id, stored, context=context)
    except EncryptionKeyError:
        if strict:
            raise
        return None
