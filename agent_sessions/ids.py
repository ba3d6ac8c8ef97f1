"""Session ids derived from (user, conversation), collision-free by construction.

Plain ids (UUIDs, and tokens of ASCII letters, digits and ``-``) map to the readable form
``user_{user_id}_conv_{conversation_id}``. Any other printable id is percent-encoded first:
every character outside ``[A-Za-z0-9.@+-]`` (``_`` and ``%`` included) becomes ``%XX`` per
UTF-8 byte. Encoded components therefore never contain ``_``, so ``_conv_`` occurs exactly
once in a derived id and the mapping is injective: two different pairs never share an id.
"""

from __future__ import annotations

import math
import string
import uuid

from .errors import InvalidArgumentError, InvalidIdentifierError

MAX_ID_LENGTH = 128
"""Longest user or conversation id accepted, in characters."""

MAX_COUNT = 2**62
"""Upper bound of every count and limit: they are bound as 64-bit signed SQLite integers."""

_SAFE = frozenset(string.ascii_letters + string.digits + ".@+-")


def normalize_identifier(value: object, what: str = "id") -> str:
    """Return ``value`` as a validated id string.

    Raises:
        InvalidIdentifierError: if ``value`` is not a ``str``/``uuid.UUID``, is empty or
            whitespace-only, contains control or other non-printable characters, or is longer
            than ``MAX_ID_LENGTH`` characters.
    """
    if isinstance(value, uuid.UUID):
        return str(value)
    if not isinstance(value, str):
        raise InvalidIdentifierError(
            f"{what} must be a str or uuid.UUID, not {type(value).__name__}"
        )
    if not value.strip():
        raise InvalidIdentifierError(f"{what} must not be empty or whitespace-only")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidIdentifierError(
            f"{what} is {len(value)} characters long; the limit is {MAX_ID_LENGTH}"
        )
    if not value.isprintable():
        bad = next(ch for ch in value if not ch.isprintable())
        raise InvalidIdentifierError(
            f"{what} contains a non-printable character {bad!r}: {value!r}"
        )
    return value


def _encode(component: str) -> str:
    if all(ch in _SAFE for ch in component):
        return component
    return "".join(
        ch if ch in _SAFE else "".join(f"%{byte:02X}" for byte in ch.encode("utf-8"))
        for ch in component
    )


def get_session_id(user_id: str | uuid.UUID, conversation_id: str | uuid.UUID) -> str:
    """Return the session id for a (user, conversation) pair.

    Args:
        user_id: The user's id: a ``uuid.UUID`` or a printable string of at most 128 characters.
        conversation_id: The conversation's id, with the same rules.

    Returns:
        ``user_{user_id}_conv_{conversation_id}`` for UUIDs and tokens of letters, digits and
        ``-``; a percent-encoded variant of the same form for any other printable id.

    Raises:
        InvalidIdentifierError: if either id is unusable (see ``normalize_identifier``).
    """
    user = normalize_identifier(user_id, "user_id")
    conversation = normalize_identifier(conversation_id, "conversation_id")
    return f"user_{_encode(user)}_conv_{_encode(conversation)}"


def _literal_pair(session_id: str) -> tuple[str, str] | None:
    """The pair ``f"user_{u}_conv_{c}"`` was written from, if only one could have been."""
    if not session_id.startswith("user_"):
        return None
    # Every marker after the prefix, overlapping ones included: more than one means the id
    # could have been written from more than one pair.
    splits = [
        at for at in range(len("user_"), len(session_id)) if session_id.startswith("_conv_", at)
    ]
    if len(splits) != 1:
        return None
    try:
        return (
            normalize_identifier(session_id[len("user_") : splits[0]], "user_id"),
            normalize_identifier(session_id[splits[0] + len("_conv_") :], "conversation_id"),
        )
    except InvalidIdentifierError:
        return None


def legacy_owner(session_id: str) -> tuple[str, str] | None:
    """The pair an id written without this library was built from, or ``None`` if unsure.

    Used to attribute the sessions of an adopted ``SQLiteSession`` database, whose ids were
    built by hand as ``f"user_{u}_conv_{c}"``: it reads them literally, never
    percent-decoding (``user_a%5Fb_conv_c`` belongs to user ``a%5Fb``, even
    though it is also ``get_session_id("a_b", "c")``; ``AgentSession`` refuses to open it for
    ``a_b``).
    """
    return _literal_pair(session_id)


def positive_int(value: object, what: str, *, minimum: int = 1, maximum: int = MAX_COUNT) -> int:
    """Return ``value`` if it is an int in ``[minimum, maximum]`` (bools are refused).

    Raises:
        InvalidArgumentError: naming ``what`` otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or value > maximum:
        # MAX_COUNT is a storage limit, not a bound anyone chose: name it only as "too large".
        bounds = f"from {minimum} to {maximum}" if maximum < MAX_COUNT else f"of at least {minimum}"
        too_large = " (too large)" if isinstance(value, int) and value > maximum else ""
        raise InvalidArgumentError(f"{what} must be an integer {bounds}, got {value!r}{too_large}")
    return value


def optional_limit(value: object, what: str = "limit") -> int | None:
    """Return a read limit with the SDK's meaning: ``None`` or negative reads everything.

    A limit beyond ``MAX_COUNT`` also reads everything (no session holds that many items).

    Raises:
        InvalidArgumentError: if ``value`` is neither ``None`` nor an int.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{what} must be an int or None, got {value!r}")
    return None if value < 0 or value > MAX_COUNT else value


def seconds(value: object, what: str, *, minimum: float = 0.0, finite: bool = False) -> float:
    """Return ``value``, an int or float of at least ``minimum`` (not NaN), as a float.

    Raises:
        InvalidArgumentError: naming ``what`` if it is not such a number, or is infinite
            when ``finite`` is asked for.
    """
    number = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int beyond float's range
            number = math.inf
    if math.isnan(number) or number < minimum or (finite and math.isinf(number)):
        rule = f"a number of seconds of at least {minimum:g}" + (", finite" if finite else "")
        raise InvalidArgumentError(f"{what} must be {rule}, got {value!r}")
    return number
