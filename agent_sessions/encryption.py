"""Encryption at rest: items sealed per session, with what pruning needs kept in clear.

Each item's JSON text is sealed with AES-256-GCM under a key derived for its session
(HKDF-SHA256 over the master key, with the session id as ``info``), a random 96-bit nonce per
row, and associated data binding the session id and the row's clear columns. A row copied
into another session, or whose clear columns were edited, fails authentication.

Only four facts about an item stay in clear, in columns of their own, because the pruning
rule needs them and must not decrypt: whether it is a user message, the pairing key of a call
or approval request (``call_key``), that of a tool output or approval response
(``answer_key``), and whether it is a reasoning item. ``skeleton`` rebuilds from them an item
``pruning`` classifies exactly as the original, so pruning an encrypted session is the same
rule on the same facts.

A stored encrypted payload is ``enc1:<key id>:<base64 of nonce + ciphertext + tag>``; plain
payloads are JSON objects (they start with ``{``), so both kinds coexist in one table while a
database is converted. The key id is the first 8 hex digits of a SHA-256 of the key: it tells
which of the configured keys sealed a row, and reveals nothing of it.

``cryptography`` is an optional extra (``pip install 'agent-sessions[encryption]'``), imported
only when a ``Keyring`` is made.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from pydantic import SecretStr

from .codec import _DECODER, DecodedRows, decode_item, decode_rows
from .errors import ConfigurationError, EncryptionKeyError, InvalidArgumentError
from .pruning import Item, is_user_message, pairing

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

logger = logging.getLogger("agent_sessions")

KEY_BYTES: Final = 32
"""Length of a master key (AES-256), before base64."""
PREFIX: Final = "enc1:"
"""How every encrypted payload starts (version 1 of the format)."""
PLAINTEXT: Final = "plaintext"
"""In a key list, in first place: write plaintext, and read rows sealed with the other keys.

For decrypting a live database: the app keeps reading what is still encrypted while
``agent-sessions decrypt`` converts it."""
KEY_ID_CHARS: Final = 8

_PREFIX_BYTES = PREFIX.encode("ascii")
_BODY_AT = len(PREFIX) + KEY_ID_CHARS + 1  # after "enc1:<kid>:"
_NONCE_BYTES = 12
_HKDF_SALT = b"agent_sessions.session-key.v1"
_AAD_ITEM = b"agent_sessions.item.v1\x00"
_AAD_TEXT = b"agent_sessions.text.v1\x00"
_CACHED_SESSIONS = 4096  # derived keys kept per keyring (HKDF costs ~10 us)
_CACHED_ITEMS = 10_000  # opened rows kept per keyring (see Keyring._opened)
_CACHED_ITEM_CHARS = 16_384  # larger items are opened on every read

ClearColumns = tuple[bool, str | None, str | None, bool]
"""What pruning needs of an item: ``(is_user, call_key, answer_key, is_reasoning)``."""


# --- keys -------------------------------------------------------------------------------------


def generate_key() -> str:
    """Return a new random master key: 32 bytes as URL-safe base64 (44 characters)."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def key_id(key: bytes) -> str:
    """The short, public id of a master key (8 hex digits of a domain-separated SHA-256)."""
    return hashlib.sha256(b"agent_sessions.key-id.v1\x00" + key).hexdigest()[:KEY_ID_CHARS]


def _key_bytes(text: str, position: int) -> bytes:
    # The key itself never appears in a message: only its position in the list.
    try:
        raw = base64.b64decode(text.strip().encode("ascii"), altchars=b"-_", validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise ConfigurationError(
            f"encryption key {position + 1} is not {KEY_BYTES} bytes in URL-safe base64 "
            "(make one with `agent-sessions generate-key`)"
        )
    return raw


def parse_keys(value: object) -> tuple[bytes | None, ...]:
    """Master keys, newest first, from a comma-separated string or a sequence.

    ``None`` stands for ``PLAINTEXT`` (allowed in first place only).

    Raises:
        ConfigurationError: if a key is malformed, the list is empty, or a key repeats; the
            message names the key's position, never the key.
    """
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, bytes | str):
        parts: list[object] = (
            [value] if isinstance(value, bytes) else [p for p in value.split(",") if p.strip()]
        )
    elif isinstance(value, Sequence):
        parts = list(value)
    else:
        raise InvalidArgumentError(
            f"encryption_key must be a key (str or bytes), a list of keys or a Keyring, not "
            f"{type(value).__name__}"
        )
    keys: list[bytes | None] = []
    for position, part in enumerate(parts):
        if isinstance(part, SecretStr):
            part = part.get_secret_value()
        if isinstance(part, str) and part.strip().lower() == PLAINTEXT:
            if position != 0:
                raise ConfigurationError(f"{PLAINTEXT!r} may only be the first encryption key")
            keys.append(None)
        elif isinstance(part, bytes) and len(part) == KEY_BYTES:
            keys.append(part)
        elif isinstance(part, str | bytes):
            text = part if isinstance(part, str) else part.decode("ascii", "replace")
            keys.append(_key_bytes(text, position))
        else:
            raise InvalidArgumentError(
                f"encryption key {position + 1} must be a str or bytes, not {type(part).__name__}"
            )
    real = [key for key in keys if key is not None]
    if not real:
        raise ConfigurationError("no encryption key given")
    if len({key_id(key) for key in real}) != len(real):
        raise ConfigurationError("an encryption key is listed twice")
    return tuple(keys)


# --- what stays in clear ---------------------------------------------------------------------


def clear_columns(item: Item) -> ClearColumns:
    """The facts pruning needs about ``item``, stored in clear next to its sealed payload."""
    half = pairing(item)
    call_key = half[1] if half is not None and half[0] else None
    answer_key = half[1] if half is not None and not half[0] else None
    return is_user_message(item), call_key, answer_key, item.get("type") == "reasoning"


def skeleton(columns: ClearColumns) -> Item:
    """A minimal item that ``pruning`` classifies exactly as the one ``columns`` describe."""
    is_user, call_key, answer_key, is_reasoning = columns
    item: dict[str, object] = {}
    if is_user:
        item["role"] = "user"
    if is_reasoning:
        item["type"] = "reasoning"
    if call_key is not None:
        kind, _, name = call_key.partition(":")
        if kind == "approval":
            item["type"] = "mcp_approval_request"
            item["id"] = name
        else:  # "call:<id>": any type that does not end in _output, e.g. reasoning's
            item["call_id"] = name
    if answer_key is not None:
        kind, _, name = answer_key.partition(":")
        if kind == "approval":
            item["type"] = "mcp_approval_response"
            item["approval_request_id"] = name
        else:
            item["type"] = "function_call_output"
            item["call_id"] = name
    return item


def columns_of(row: Sequence[Any]) -> ClearColumns:
    """``ClearColumns`` from a stored row ``(id, data, is_user, call_key, answer_key, reasoning)``.

    SQLite stores the booleans as integers; ``NULL`` (a plain row written before the columns
    existed) reads as ``False``.
    """
    return bool(row[2]), row[3], row[4], bool(row[5])


def is_encrypted(data: object) -> bool:
    """Whether a stored payload (text or bytes) is sealed rather than plain JSON."""
    if isinstance(data, str):
        return data.startswith(PREFIX)
    return isinstance(data, bytes | bytearray | memoryview) and bytes(data[:5]) == _PREFIX_BYTES


def stored_key_id(data: str | bytes) -> str | None:
    """The key id of a sealed payload, or ``None`` for a plain one."""
    if not is_encrypted(data):
        return None
    head = data[len(PREFIX) : len(PREFIX) + KEY_ID_CHARS]
    return head if isinstance(head, str) else head.decode("ascii", "replace")


def pruning_item(row: Sequence[Any]) -> Item | None:
    """The item pruning sees for a stored row: its skeleton if sealed, else the decoded JSON."""
    data = row[1]
    if is_encrypted(data):
        return skeleton(columns_of(row))
    return decode_item(data)


def _field(value: str | None) -> str:
    # Length-prefixed, so no choice of ids can make two different rows' data equal.
    return "-" if value is None else f"{len(value)}:{value}"


def _aad(session_id: str, columns: ClearColumns) -> bytes:
    is_user, call_key, answer_key, is_reasoning = columns
    flags = f"{is_user:d}{is_reasoning:d}"
    text = f"{_field(session_id)}|{flags}|{_field(call_key)}|{_field(answer_key)}"
    return _AAD_ITEM + text.encode("utf-8", "surrogatepass")


def _text_aad(session_id: str, context: str) -> bytes:
    return _AAD_TEXT + json.dumps([session_id, context]).encode("utf-8", "surrogatepass")


# --- the keyring -------------------------------------------------------------------------------


class _Undecryptable(Exception):
    """A sealed payload that none of the keys opens: ``unknown_key`` or failed authentication."""

    def __init__(self, key: str, unknown_key: bool) -> None:
        super().__init__(key)
        self.key = key
        self.unknown_key = unknown_key


class Keyring:
    """Master keys, newest first: seals with the first, opens with whichever sealed a row.

    Thread-safe; per-session keys are derived once and cached. Its ``repr`` shows key ids
    only. Make one with ``Keyring(generate_key())``, or pass the key(s) as ``encryption_key=``.
    """

    _parsed: tuple[bytes | None, ...]

    def __init__(self, keys: object) -> None:
        """Parse the keys (see ``parse_keys``).

        Raises:
            ConfigurationError: if a key is malformed, or ``cryptography`` is not installed.
        """
        parsed = keys._parsed if isinstance(keys, Keyring) else parse_keys(keys)
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError as exc:
            raise ConfigurationError(
                "encryption needs the cryptography package: pip install "
                "'agent-sessions[encryption]'"
            ) from exc
        self._aesgcm = AESGCM
        self._parsed = parsed
        self._masters = {key_id(key): key for key in parsed if key is not None}
        self.key_ids: tuple[str, ...] = tuple(self._masters)
        """Ids of the keys that can open rows, newest first."""
        self.write_key_id: str | None = None if parsed[0] is None else key_id(parsed[0])
        """Id of the key new rows are sealed with; ``None``: they are written in plaintext."""
        self._derived: dict[tuple[str, str], AESGCM] = {}
        # Rows recently opened, by session, clear columns and sealed bytes (so an edited
        # column or payload misses and is authenticated afresh): a conversation's history is
        # read again on every turn, and opening it again would cost most of get_items.
        self._opened: dict[tuple[str, tuple[Any, ...], bytes], str] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        first = [PLAINTEXT] if self.write_key_id is None else []
        return f"Keyring(key_ids={[*first, *self.key_ids]!r})"

    def _session_aead(self, kid: str, session_id: str) -> AESGCM:
        cached = self._derived.get((kid, session_id))
        if cached is not None:
            return cached
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        derived = HKDF(
            algorithm=hashes.SHA256(),
            length=KEY_BYTES,
            salt=_HKDF_SALT,
            info=session_id.encode("utf-8", "surrogatepass"),
        ).derive(self._masters[kid])
        aead = self._aesgcm(derived)
        with self._lock:
            if len(self._derived) >= _CACHED_SESSIONS:
                self._derived.clear()  # simpler than an LRU; a miss costs one HKDF
            self._derived[(kid, session_id)] = aead
        return aead

    def _seal(self, kid: str, session_id: str, plaintext: str, aad: bytes) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._session_aead(kid, session_id).encrypt(
            nonce, plaintext.encode("utf-8", "surrogatepass"), aad
        )
        return f"{PREFIX}{kid}:{base64.b64encode(nonce + sealed).decode('ascii')}"

    def _open(self, session_id: str, stored: str | bytes, aad: bytes) -> str:
        raw = stored.encode("ascii", "replace") if isinstance(stored, str) else bytes(stored)
        kid = raw[len(PREFIX) : len(PREFIX) + KEY_ID_CHARS].decode("ascii", "replace")
        if kid not in self._masters:
            raise _Undecryptable(kid, unknown_key=True)
        try:
            body = binascii.a2b_base64(raw[_BODY_AT:])
            opened = self._session_aead(kid, session_id).decrypt(
                body[:_NONCE_BYTES], body[_NONCE_BYTES:], aad
            )
            return opened.decode("utf-8", "surrogatepass")
        except Exception as exc:  # InvalidTag, a bad length or base64: not this key's row
            raise _Undecryptable(kid, unknown_key=False) from exc

    def seal_item(self, session_id: str, payload: str, columns: ClearColumns) -> str:
        """Seal one item's JSON text for ``session_id`` with the newest key.

        With ``PLAINTEXT`` first, returns ``payload`` unchanged.
        """
        if self.write_key_id is None:
            return payload
        return self._seal(self.write_key_id, session_id, payload, _aad(session_id, columns))

    def open_item(self, session_id: str, stored: str | bytes, columns: ClearColumns) -> str:
        """The JSON text of a sealed item (see ``seal_item``).

        Raises:
            EncryptionKeyError: if the row was sealed with a key not configured, or cannot be
                authenticated (a wrong key, another session's row, edited columns).
        """
        try:
            return self._open(session_id, stored, _aad(session_id, columns))
        except _Undecryptable as exc:
            raise EncryptionKeyError(session_id, [exc.key], list(self.key_ids)) from None

    def encrypt_text(self, session_id: str, text: str, *, context: str = "text") -> str:
        """Seal a string that belongs to a session (a title, metadata JSON).

        ``context`` is bound too (e.g. ``"title"``, ``"metadata"``), so one field's value
        cannot be passed off as another's. Always uses the newest real key, even when
        ``PLAINTEXT`` is first (callers decide whether to encrypt: ``writes_plaintext``).
        """
        kid = self.write_key_id or self.key_ids[0]
        return self._seal(kid, session_id, text, _text_aad(session_id, context))

    def decrypt_text(self, session_id: str, stored: str, *, context: str = "text") -> str:
        """Open what ``encrypt_text`` sealed; plain text (no ``enc1:`` prefix) is returned as is.

        Raises:
            EncryptionKeyError: if no configured key opens it.
        """
        if not is_encrypted(stored):
            return stored
        try:
            return self._open(session_id, stored, _text_aad(session_id, context))
        except _Undecryptable as exc:
            raise EncryptionKeyError(session_id, [exc.key], list(self.key_ids)) from None

    @property
    def writes_plaintext(self) -> bool:
        """Whether new rows are written in plaintext (``PLAINTEXT`` is first)."""
        return self.write_key_id is None

    def seal_items(self, session_id: str, items: Sequence[Item], payloads: list[str]) -> list[str]:
        """``seal_item`` for a batch (``payloads[i]`` is the JSON text of ``items[i]``)."""
        kid = self.write_key_id
        if kid is None:
            return payloads
        return [
            self._seal(kid, session_id, payload, _aad(session_id, clear_columns(item)))
            for item, payload in zip(items, payloads, strict=True)
        ]


_keyrings: dict[tuple[bytes | None, ...], Keyring] = {}
_keyrings_by_text: dict[str, Keyring] = {}  # a session per request: skip parsing the setting


def keyring_for(value: object) -> Keyring | None:
    """The shared ``Keyring`` for a key setting (``None``, empty: no encryption).

    Sessions opened per request with the same keys share one keyring and its derived keys.
    """
    if value is None or isinstance(value, Keyring):
        return value
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, str) and value in _keyrings_by_text:
        return _keyrings_by_text[value]
    parsed = parse_keys(value)
    keyring = _keyrings.get(parsed)
    if keyring is None:
        keyring = Keyring(value)
        if len(_keyrings) < 64:  # a process uses a handful of key sets
            _keyrings[parsed] = keyring
    if isinstance(value, str) and len(_keyrings_by_text) < 64:
        _keyrings_by_text[value] = keyring
    return keyring


# --- reading stored rows -------------------------------------------------------------------


def decode_stored(
    rows: Iterable[Sequence[Any]], keyring: Keyring | None, session_id: str
) -> DecodedRows:
    """Decode ``(id, data, is_user, call_key, answer_key, is_reasoning)`` rows, in order.

    Plain rows decode as ``codec.decode_rows`` does; sealed ones are opened with ``keyring``.
    A sealed row that fails authentication under a configured key is set aside as corrupt.

    Raises:
        EncryptionKeyError: naming the session, if a row was sealed with a key that is not
            configured (or none is). A row sealed with a configured key that does not
            authenticate (damaged, tampered with, another session's) is skipped as corrupt.
    """
    rows = rows if isinstance(rows, list) else list(rows)
    if not any(is_encrypted(row[1]) for row in rows):  # a plain session: codec's fast loop
        return decode_rows([(row[0], row[1]) for row in rows])
    items: list[Item] = []
    corrupt: list[int] = []
    failed = 0
    missing: set[str] = set()
    # The per-row work is most of get_items' cost: the session's cipher per key id and the
    # associated data per distinct clear columns are looked up once per call.
    aeads: dict[bytes, AESGCM | None] = {}
    aads: dict[tuple[Any, ...], bytes] = {}
    a2b = binascii.a2b_base64
    cache = keyring._opened if keyring is not None else {}
    for row in rows:
        row_id, data = row[0], row[1]
        if type(data) is str:  # PostgreSQL; SQLite's rows come as bytes
            raw = data.encode("ascii", "replace") if data.startswith(PREFIX) else b""
        else:
            raw = data
        if type(raw) is not bytes or raw[:5] != _PREFIX_BYTES:
            item = decode_item(data)
        elif keyring is None:
            missing.add(stored_key_id(data) or "?")
            continue
        else:
            kid = raw[len(PREFIX) : _BODY_AT - 1]
            if kid not in aeads:
                name = kid.decode("ascii", "replace")
                usable = name in keyring._masters
                aeads[kid] = keyring._session_aead(name, session_id) if usable else None
            aead = aeads[kid]
            if aead is None:
                missing.add(kid.decode("ascii", "replace"))
                continue
            columns = tuple(row[2:6])
            cache_key = (session_id, columns, raw)
            document = cache.get(cache_key)
            if document is None:
                aad = aads.get(columns)
                if aad is None:
                    aad = aads[columns] = _aad(session_id, columns_of(row))
                try:
                    body = a2b(raw[_BODY_AT:])
                    text = aead.decrypt(body[:_NONCE_BYTES], body[_NONCE_BYTES:], aad)
                    document = text.decode("utf-8", "surrogatepass")
                except Exception:  # InvalidTag, bad base64 or length: a damaged or foreign row
                    failed += 1
                    corrupt.append(row_id)
                    continue
                if len(document) <= _CACHED_ITEM_CHARS:
                    if len(cache) >= _CACHED_ITEMS:
                        cache.clear()  # simpler than an LRU; a miss costs one decryption
                    cache[cache_key] = document
            try:  # codec.decode_rows' fast path; decode_item for everything else
                item, end = _DECODER.raw_decode(document)
                if end != len(document) or type(item) is not dict:
                    item = decode_item(document)
            except (ValueError, RecursionError):
                item = None
        if item is None:
            corrupt.append(row_id)
        else:
            items.append(item)
    if failed:
        logger.warning(
            "session %r: %d encrypted row(s) failed authentication (damaged, tampered with, or "
            "moved from another session); skipped",
            session_id,
            failed,
        )
    if missing:
        known = [] if keyring is None else list(keyring.key_ids)
        raise EncryptionKeyError(session_id, sorted(missing), known)
    return DecodedRows(items, corrupt)


def open_row(row: Sequence[Any], keyring: Keyring | None, session_id: str) -> Item | None:
    """One stored row as an item, ``None`` if it is corrupt (see ``decode_stored``).

    Raises:
        EncryptionKeyError: if it is sealed with a key that is not configured.
    """
    data = row[1]
    if not is_encrypted(data):
        return decode_item(data)
    if keyring is None:
        raise EncryptionKeyError(session_id, [stored_key_id(data) or "?"], [])
    try:
        return decode_item(keyring._open(session_id, data, _aad(session_id, columns_of(row))))
    except _Undecryptable as exc:
        if exc.unknown_key:
            raise EncryptionKeyError(session_id, [exc.key], list(keyring.key_ids)) from None
        return None


def looks_like_sdk_envelope(item: object) -> bool:
    """Whether ``item`` is an ``agents.extensions.memory.EncryptedSession`` envelope."""
    return (
        isinstance(item, Mapping)
        and item.get("__enc__") == 1
        and "payload" in item
        and "kid" in item
        and "v" in item
    )
