"""Session ids: exact format, injectivity, round trips, rejection, legacy parsing, isolation."""

from __future__ import annotations

import asyncio
import itertools
import re
import uuid
from pathlib import Path
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sessions import AgentSession, AgentSessionsError, InvalidIdentifierError
from agent_sessions.ids import MAX_ID_LENGTH, get_session_id, legacy_owner

Ident = str | uuid.UUID

# --- strategies -------------------------------------------------------------------------------

PIECES = (
    "_conv_", "_", "user_", "conv", "%", "%25", "%5F", "%zz", "|", "@", ".", "+", "-", "'",
    '"', ";", "--", "/*", "DROP TABLE agent_messages;", "\\", " ", "*", "?", "é", "e\u0301",
    "日本", "🙂", "a", "Z", "0", "\u200b", "\n",
)  # fmt: skip

identifiers = st.one_of(
    st.text(max_size=MAX_ID_LENGTH + 4),
    st.lists(st.sampled_from(PIECES), max_size=12).map("".join),
    st.from_regex(r"[A-Za-z0-9-]{1,20}", fullmatch=True),
    st.uuids(),
    st.uuids().map(str),
)
pairs = st.tuples(identifiers, identifiers)


_DERIVED = re.compile(r"user_([A-Za-z0-9.@+%-]+)_conv_([A-Za-z0-9.@+%-]+)")


def parse_session_id(session_id: str) -> tuple[str, str] | None:
    """The test's own decoder: the pair an id came from, to prove ids are injective.

    Ids made by ``get_session_id`` parse back to their pair; hand-built ones are read
    literally when only one split is possible (``legacy_owner``).
    """
    derived = _DERIVED.fullmatch(session_id)
    if derived is not None:
        user, conversation = unquote(derived[1]), unquote(derived[2])
        try:
            if get_session_id(user, conversation) == session_id:
                return user, conversation
        except InvalidIdentifierError:
            pass
    return legacy_owner(session_id)


def is_valid(value: Ident) -> bool:
    """The documented validity rule, restated."""
    if isinstance(value, uuid.UUID):
        return True
    return bool(value.strip()) and len(value) <= MAX_ID_LENGTH and value.isprintable()


def normalized(value: Ident) -> str:
    return str(value) if isinstance(value, uuid.UUID) else value


def legacy_readings(session_id: str) -> set[tuple[str, str]]:
    """Every valid (user, conversation) with ``f"user_{user}_conv_{conversation}" == id``."""
    if not session_id.startswith("user_"):
        return set()
    body = session_id.removeprefix("user_")
    return {
        (body[:at], body[at + len("_conv_") :])
        for at in range(len(body))
        if body.startswith("_conv_", at)
        and is_valid(body[:at])
        and is_valid(body[at + len("_conv_") :])
    }


DERIVED_SHAPE = re.compile(r"user_[A-Za-z0-9.@+%-]+_conv_[A-Za-z0-9.@+%-]+")


# --- exact format -----------------------------------------------------------------------------


def test_uuids_give_the_readable_form() -> None:
    user, conversation = uuid.uuid4(), uuid.uuid4()
    expected = f"user_{user}_conv_{conversation}"
    assert get_session_id(user, conversation) == expected
    assert get_session_id(str(user), str(conversation)) == expected
    assert parse_session_id(expected) == (str(user), str(conversation))


@pytest.mark.parametrize(
    ("user", "conversation", "expected"),
    [
        ("alice", "c1", "user_alice_conv_c1"),
        ("42", "abc", "user_42_conv_abc"),
        ("A-b-9", "x-1-Y", "user_A-b-9_conv_x-1-Y"),
        ("alice@example.com", "v1.2+3", "user_alice@example.com_conv_v1.2+3"),
    ],
)
def test_plain_tokens_give_the_readable_form(user: str, conversation: str, expected: str) -> None:
    assert get_session_id(user, conversation) == expected
    assert parse_session_id(expected) == (user, conversation)


@pytest.mark.parametrize(
    ("user", "conversation", "expected"),
    [
        ("a_b", "c", "user_a%5Fb_conv_c"),
        ("a_conv_b", "c", "user_a%5Fconv%5Fb_conv_c"),
        ("a", "b_conv_c", "user_a_conv_b%5Fconv%5Fc"),
        ("100%", "x", "user_100%25_conv_x"),
        ("%5F", "x", "user_%255F_conv_x"),
        ("a b", "c|d", "user_a%20b_conv_c%7Cd"),
        ("é", "日", "user_%C3%A9_conv_%E6%97%A5"),
        ("🙂", "x", "user_%F0%9F%99%82_conv_x"),
        ("' OR 1=1; --", "x", "user_%27%20OR%201%3D1%3B%20--_conv_x"),
    ],
)
def test_other_printable_ids_are_percent_encoded(
    user: str, conversation: str, expected: str
) -> None:
    assert get_session_id(user, conversation) == expected
    assert parse_session_id(expected) == (user, conversation)


def test_ids_that_naive_formatting_would_merge_stay_apart() -> None:
    naive = {f"user_{u}_conv_{c}" for u, c in [("a_conv_b", "c"), ("a", "b_conv_c")]}
    assert len(naive) == 1, "the naive format does collide here"
    ours = {get_session_id("a_conv_b", "c"), get_session_id("a", "b_conv_c")}
    assert len(ours) == 2, f"derived ids collide: {ours}"


# --- properties -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(pairs)
def test_valid_pairs_get_a_well_formed_id_that_round_trips(pair: tuple[Ident, Ident]) -> None:
    user, conversation = pair
    if not (is_valid(user) and is_valid(conversation)):
        with pytest.raises(InvalidIdentifierError):
            get_session_id(user, conversation)
        return
    session_id = get_session_id(user, conversation)
    expected = (normalized(user), normalized(conversation))
    assert DERIVED_SHAPE.fullmatch(session_id), f"{session_id!r} is not of the derived shape"
    assert session_id.count("_conv_") == 1, f"{session_id!r} holds _conv_ more than once"
    assert session_id.isascii(), repr(session_id)
    assert session_id.isprintable(), repr(session_id)
    # Decoded with the standard library alone, the id gives the pair back: injective.
    head, tail = session_id.removeprefix("user_").split("_conv_")
    assert (unquote(head, errors="strict"), unquote(tail, errors="strict")) == expected
    assert parse_session_id(session_id) == expected, f"{session_id!r} does not parse back"


@settings(max_examples=200, deadline=None)
@given(st.lists(pairs, min_size=2, max_size=12))
def test_distinct_pairs_never_share_an_id(batch: list[tuple[Ident, Ident]]) -> None:
    owners: dict[str, tuple[str, str]] = {}
    for user, conversation in batch:
        try:
            session_id = get_session_id(user, conversation)
        except InvalidIdentifierError:
            assert not (is_valid(user) and is_valid(conversation)), (user, conversation)
            continue
        pair = (normalized(user), normalized(conversation))
        previous = owners.setdefault(session_id, pair)
        assert previous == pair, f"{previous!r} and {pair!r} both map to {session_id!r}"


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=300),
        st.tuples(identifiers, identifiers).map(lambda p: f"user_{p[0]}_conv_{p[1]}"),
        st.lists(st.sampled_from(PIECES), max_size=14).map("".join),
    )
)
def test_parse_never_raises_and_explains_its_answer(session_id: str) -> None:
    parsed = parse_session_id(session_id)
    if parsed is None:
        return
    user, conversation = parsed
    assert is_valid(user), f"{session_id!r} parsed to {parsed!r}"
    assert is_valid(conversation), f"{session_id!r} parsed to {parsed!r}"
    # Either the id is the one derived from the pair, or the literal legacy spelling of it.
    assert session_id in (get_session_id(user, conversation), f"user_{user}_conv_{conversation}")
    if session_id != get_session_id(user, conversation):
        # A hand-written id is only read when it has one reading.
        readings = legacy_readings(session_id)
        assert readings == {parsed}, f"{session_id!r} parsed to {parsed!r}; readings {readings}"


@settings(max_examples=100, deadline=None)
@given(st.from_regex(r"[A-Za-z0-9-]{1,128}", fullmatch=True), st.uuids())
def test_plain_tokens_and_uuids_are_never_encoded(token: str, conversation: uuid.UUID) -> None:
    assert get_session_id(token, conversation) == f"user_{token}_conv_{conversation}"
    assert get_session_id(conversation, token) == f"user_{conversation}_conv_{token}"


# --- rejection --------------------------------------------------------------------------------

BAD_IDS = [
    "",
    " ",
    "\t \n",
    "\u3000",
    "line\nbreak",
    "nul\x00byte",
    "\x1b[31mred",
    "tab\tinside",
    "zero\u200bwidth",
    "x" * (MAX_ID_LENGTH + 1),
    "é" * (MAX_ID_LENGTH + 1),
    42,
    None,
    b"bytes",
    4.5,
    ["alice"],
]


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
@pytest.mark.parametrize("position", ["user_id", "conversation_id"])
def test_unusable_ids_are_rejected_naming_the_argument(bad: object, position: str) -> None:
    args: list[object] = ["alice", "chat"]
    args[position == "conversation_id"] = bad
    with pytest.raises(InvalidIdentifierError, match=position) as caught:
        get_session_id(*args)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, AgentSessionsError)


def test_invalid_identifier_error_is_a_value_error() -> None:
    assert issubclass(InvalidIdentifierError, ValueError)
    assert issubclass(InvalidIdentifierError, AgentSessionsError)


def test_longest_accepted_id() -> None:
    longest = "x" * MAX_ID_LENGTH
    assert get_session_id(longest, "c") == f"user_{longest}_conv_c"
    wide = "é" * MAX_ID_LENGTH  # the limit is in characters, not bytes
    assert parse_session_id(get_session_id(wide, "c")) == (wide, "c")


# --- parsing hand-written and foreign ids --------------------------------------------------


@pytest.mark.parametrize(
    ("session_id", "expected"),
    [
        ("user_42_conv_abc", ("42", "abc")),
        ("user_my_user_conv_chat", ("my_user", "chat")),
        ("user_alice_conv_my_chat_1", ("alice", "my_chat_1")),
        ("user_a b_conv_c", ("a b", "c")),
        ("user_a%zz_conv_b", ("a%zz", "b")),  # not a valid encoding: read literally
        ("user_a%5Fb_conv_c", ("a_b", "c")),  # a derived id
        ("user_a_conv_b_conv_c", None),  # ("a_conv_b", "c") or ("a", "b_conv_c")?
        ("user_a_conv_b_conv_", None),
        ("user__conv_c", None),
        ("user_a_conv_", None),
        ("user_ _conv_c", None),
        ("user_a\nb_conv_c", None),
        (f"user_{'x' * (MAX_ID_LENGTH + 1)}_conv_c", None),
        ("USER_a_CONV_b", None),
        ("session-123", None),
        ("", None),
    ],
)
def test_parse_session_id(session_id: str, expected: tuple[str, str] | None) -> None:
    assert parse_session_id(session_id) == expected


def test_overlap_with_the_user_prefix_is_not_an_ambiguity() -> None:
    # "user_conv_conv_b": the first "_conv_" overlaps "user_", so only one reading exists.
    assert legacy_readings("user_conv_conv_b") == {("conv", "b")}
    assert parse_session_id("user_conv_conv_b") == ("conv", "b")


def test_overlapping_conv_markers_are_ambiguous() -> None:
    session_id = "user_a_conv_conv_b"
    assert session_id == "user_" + "a" + "_conv_" + "conv_b"  # user "a", conversation "conv_b"
    assert session_id == "user_" + "a_conv" + "_conv_" + "b"  # user "a_conv", conversation "b"
    assert legacy_readings(session_id) == {("a", "conv_b"), ("a_conv", "b")}
    assert parse_session_id(session_id) is None


# --- isolation on one database file ---------------------------------------------------------

ADVERSARIAL_PAIRS: list[tuple[Ident, str]] = [
    ("alice", "chat"),
    ("bob", "chat"),
    ("Alice", "chat"),
    ("alice ", "chat"),
    ("a_conv_b", "c"),
    ("a", "b_conv_c"),
    ("a_conv_b", "chat"),
    ("a%5Fconv%5Fb", "c"),
    ("a_conv_b_conv_c", "chat"),
    ("%", "chat"),
    ("_", "chat"),
    ("'; DROP TABLE agent_messages; --", "chat"),
    ("é", "chat"),
    ("e\u0301", "chat"),
    (uuid.UUID(int=1), "chat"),
]


def note(user: Ident, conversation: str) -> dict[str, str]:
    return {"role": "user", "content": f"from {user!r} in {conversation!r}"}


def round_item(number: int) -> dict[str, str]:
    return {"role": "user", "content": f"round {number}"}


async def test_users_sharing_a_conversation_id_never_see_each_other(db_path: Path) -> None:
    sessions = [
        AgentSession(u, c, db_path=db_path, max_messages=1000) for u, c in ADVERSARIAL_PAIRS
    ]
    try:
        ids = {session.session_id for session in sessions}
        assert len(ids) == len(ADVERSARIAL_PAIRS), f"{len(ids)} ids for {len(sessions)} pairs"
        for round_number in range(2):
            await asyncio.gather(
                *(
                    session.add_items([note(u, c), round_item(round_number)])
                    for session, (u, c) in zip(sessions, ADVERSARIAL_PAIRS, strict=True)
                )
            )
        for session, (u, c) in zip(sessions, ADVERSARIAL_PAIRS, strict=True):
            own = [note(u, c), round_item(0), note(u, c), round_item(1)]
            got = await session.get_items()
            assert got == own, f"{session.session_id!r} sees {got}"
        await sessions[0].clear_session()
        for session in sessions[1:]:
            assert len(await session.get_items()) == 4, f"{session.session_id!r} lost items"
    finally:
        for session in sessions:
            session.close()


_file_numbers = itertools.count()


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("isolation")


valid_pairs = st.tuples(identifiers.filter(is_valid), identifiers.filter(is_valid))


@settings(max_examples=30, deadline=None)
@given(valid_pairs, valid_pairs)
def test_generated_pairs_are_isolated_on_one_file(
    shared_dir: Path, first: tuple[Ident, Ident], second: tuple[Ident, Ident]
) -> None:
    same = tuple(map(normalized, first)) == tuple(map(normalized, second))
    path = shared_dir / f"pairs-{next(_file_numbers)}.db"

    async def run() -> tuple[list[object], list[object]]:
        with (
            AgentSession(*first, db_path=path, max_messages=1000) as one,
            AgentSession(*second, db_path=path, max_messages=1000) as two,
        ):
            await one.add_items([{"role": "user", "content": "one"}])
            await two.add_items([{"role": "user", "content": "two"}])
            return list(await one.get_items()), list(await two.get_items())

    seen_by_first, seen_by_second = asyncio.run(run())
    both = [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}]
    if same:
        assert seen_by_first == seen_by_second == both
    else:
        assert seen_by_first == [both[0]], f"{first!r} sees {seen_by_first}"
        assert seen_by_second == [both[1]], f"{second!r} sees {seen_by_second}"


# --- owners of adopted ids ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("session_id", "expected"),
    [
        ("user_42_conv_abc", ("42", "abc")),
        ("user_my_user_conv_chat", ("my_user", "chat")),
        ("user_auth0|x_conv_c9", ("auth0|x", "c9")),
        ("user_a%zz_conv_b", ("a%zz", "b")),
        ("user_a%5Fb_conv_c", ("a%5Fb", "c")),  # read literally, never decoded
        ("user_100%25_conv_x", ("100%25", "x")),
        ("user_a_conv_b_conv_c", None),
        ("legacy-free-form-id", None),
    ],
)
def test_legacy_owner(session_id: str, expected: tuple[str, str] | None) -> None:
    assert legacy_owner(session_id) == expected


@settings(max_examples=300, deadline=None)
@given(st.tuples(identifiers, identifiers))
def test_legacy_owner_is_the_pair_a_hand_built_id_came_from(pair: tuple[Ident, Ident]) -> None:
    user, conversation = pair
    hand_built = f"user_{user}_conv_{conversation}"
    owner = legacy_owner(hand_built)
    if owner is not None:
        assert hand_built == f"user_{owner[0]}_conv_{owner[1]}"
    # Attributed whenever it could not have been written from another pair: "_conv_" once
    # after the prefix (overlapping occurrences count, valid or not) and valid parts.
    markers = sum(
        hand_built.startswith("_conv_", at) for at in range(len("user_"), len(hand_built))
    )
    if markers == 1 and all(map(is_valid, pair)):
        assert owner == (normalized(user), normalized(conversation)), hand_built
    elif markers > 1:
        assert owner is None, hand_built
