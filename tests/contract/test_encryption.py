"""Encryption at rest on every backend: pruning stays model-safe, keys, tampering, live rekeying.

Raw SQL is used only to tamper with rows and to look at what is stored behind the library's
back; everything under test goes through the public API (and ``rekeying`` for the CLI's
commands).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from agents import Agent
from agents.extensions.memory import EncryptedSession
from agents.testing import ScriptedModel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_sessions import (
    AgentSessionSettings,
    EncryptionKeyError,
    SearchUnavailableError,
    SessionManager,
    generate_key,
    get_agent_session,
)
from agent_sessions.backends import open_backend
from agent_sessions.copying import copy_database
from agent_sessions.encryption import Keyring, is_encrypted, stored_key_id
from agent_sessions.pruning import cut_index
from agent_sessions.rekeying import count_remaining, reencode_all
from tests.contract.helpers import is_postgres, pg_query
from tests.contract.test_pruning import TOKENS, assert_valid, item_from, orphaned, written
from tests.contract.test_runner import (
    as_dict,
    bounded,
    check_all_model_calls,
    lookup,
    run,
    script_turn,
    turn_items,
)
from tests.items import assistant, call, output, user

Item = dict[str, Any]
KEY = generate_key()
NEW_KEY = generate_key()
_numbers = itertools.count()


def session(target: str, conversation: str, *, key: Any = KEY, n: int = 1000) -> Any:
    return get_agent_session("u", conversation, db_path=target, max_messages=n, encryption_key=key)


def raw_rows(target: str) -> list[tuple[str, str]]:
    """Every stored ``(session_id, message_data)``, in storage order."""
    if is_postgres(target):
        rows = pg_query(
            target, "SELECT session_id, message_data FROM agent_sessions_item ORDER BY 1, seq"
        )
    else:
        with closing(sqlite3.connect(target)) as conn:
            rows = conn.execute("SELECT session_id, message_data FROM agent_messages ORDER BY id")
            rows = rows.fetchall()
    return [(str(sid), str(data)) for sid, data in rows]


def raw_update(target: str, session_id: str, position: int, data: str) -> None:
    """Replace the payload of a session's ``position``-th row (clear columns kept)."""
    if is_postgres(target):
        pg_query(
            target,
            "UPDATE agent_sessions_item SET message_data = %(data)s WHERE session_id = %(sid)s "
            "AND seq = (SELECT seq FROM agent_sessions_item WHERE session_id = %(sid)s "
            "ORDER BY seq OFFSET %(pos)s LIMIT 1)",
            {"sid": session_id, "data": data, "pos": position},
        )
    else:
        with closing(sqlite3.connect(target)) as conn, conn:
            conn.execute(
                "UPDATE agent_messages SET message_data = ? WHERE id = (SELECT id FROM "
                "agent_messages WHERE session_id = ? ORDER BY id LIMIT 1 OFFSET ?)",
                (data, session_id, position),
            )


SIX_TURNS = [
    batch
    for turn in range(6)
    for batch in ([user(f"q{turn}")], [call(f"c{turn}"), output(f"c{turn}"), assistant(f"a{turn}")])
]


# --- the defect of issue 12, and the fix ------------------------------------------------------


@pytest.mark.parametrize("n", [5, 6])
async def test_the_sdk_wrapper_breaks_pruning_and_is_warned_about(
    target: str, n: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The reproduction from the issue: the store sees envelopes and keeps the newest n.

    This documents the defect (the wrapped history starts with an orphaned output at 6, or
    mid-turn at 5); what the library does about it is the warning.
    """
    inner = get_agent_session("u", f"wrapped{n}", db_path=target, max_messages=n)
    wrapped = EncryptedSession(
        session_id=inner.session_id, underlying_session=inner, encryption_key=KEY, ttl=3600
    )
    with caplog.at_level(logging.WARNING, logger="agent_sessions"):
        for batch in SIX_TURNS:
            await wrapped.add_items(batch)  # type: ignore[arg-type]
    history = [as_dict(item) for item in await wrapped.get_items()]
    inner.close()
    warnings = [r for r in caplog.records if "EncryptedSession" in r.getMessage()]
    assert len(warnings) == 1, "one warning per session object"
    if n == 6:
        assert history[0]["type"] == "function_call_output"
        assert orphaned(history) == "call:c4"
    else:
        assert history[0].get("role") == "assistant"


@pytest.mark.parametrize("n", [5, 6])
async def test_native_encryption_prunes_whole_turns(target: str, n: int) -> None:
    with session(target, f"native{n}", n=n) as s:
        for batch in SIX_TURNS:
            await s.add_items(batch)
            history = await s.get_items()
            assert history[0].get("role") == "user", history
            assert orphaned(history) is None
        assert history == [user("q5"), call("c5"), output("c5"), assistant("a5")]
    assert all(stored_key_id(data) for _, data in raw_rows(target))


# --- round trips and the pruning property, with encryption on ---------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
ITEMS = st.lists(st.dictionaries(st.text(max_size=8), JSON, max_size=4), min_size=1, max_size=6)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=st.lists(ITEMS, min_size=1, max_size=3))
async def test_items_round_trip_encrypted(target: str, batches: list[list[Item]]) -> None:
    if is_postgres(target):  # PostgreSQL text holds no NUL: that is tested elsewhere
        batches = [
            [i for i in b if "\x00" not in json.dumps(i, ensure_ascii=False)] for b in batches
        ]
    conversation = f"rt{next(_numbers)}"
    with session(target, conversation) as s:
        stored: list[Item] = []
        for batch in batches:
            if batch:
                await s.add_items(batch)  # type: ignore[arg-type]
            stored = written(stored, batch)
        assert await s.get_items() == stored
    with session(target, conversation) as again:  # another object, as after a restart
        assert await again.get_items() == stored


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=st.lists(st.lists(TOKENS, min_size=1, max_size=4), min_size=1, max_size=8),
    n=st.integers(1, 6),
)
async def test_encrypted_writes_keep_what_cut_index_keeps(
    target: str, batches: list[list[object]], n: int
) -> None:
    """``tests/contract/test_pruning``'s property, with every item encrypted."""
    position = itertools.count()
    expected: list[Item] = []
    with session(target, f"p{next(_numbers)}", n=n) as s:
        for tokens in batches:
            batch = [item_from(token, next(position)) for token in tokens]
            history = written(expected, batch)
            start = cut_index(history, n)
            expected = history[start:]
            await s.add_items(batch)  # type: ignore[arg-type]
            assert await s.get_items() == expected, f"max_messages={n}, after batch {batch}"
            assert_valid(history, start, n)


async def test_runner_end_to_end_with_encryption(target: str) -> None:
    rng = random.Random(12)
    max_messages = 7
    produced: list[Item] = []
    for turn in range(12):
        shape = (
            ["one", "parallel", "sequential", "none"][turn % 4]
            if turn < 4
            else rng.choice(["none", "one", "parallel", "sequential"])
        )
        model = ScriptedModel()
        agent = Agent(name="assistant", model=model, tools=[lookup])
        script_turn(model, turn, shape)
        with session(target, "runner", n=max_messages) as s:
            before = await s.get_items()
            result = await run(agent, f"question {turn}", s, streamed=turn % 2 == 1)
            stored = await s.get_items()
        model.assert_complete()
        first_input = [as_dict(item) for item in model.calls[0].input]
        assert first_input == [*before, {"role": "user", "content": f"question {turn}"}]
        check_all_model_calls(model, 0, f"turn {turn}")
        produced += turn_items(result, f"question {turn}")
        assert stored == bounded(produced, max_messages), f"turn {turn}"
    assert any(item.get("type") == "function_call_output" for item in produced)
    assert all(stored_key_id(data) for _, data in raw_rows(target))


# --- keys: wrong, missing, tampered, swapped --------------------------------------------------


async def test_a_wrong_or_missing_key_raises_naming_the_session(target: str) -> None:
    with session(target, "secret") as s:
        await s.add_items([user("hello"), assistant("hi")])
        session_id = s.session_id
    for key in (generate_key(), None):
        with session(target, "secret", key=key) as other:
            with pytest.raises(EncryptionKeyError, match=session_id):
                await other.get_items()
            with pytest.raises(EncryptionKeyError, match=session_id):
                await other.get_items(limit=1)
            with pytest.raises(EncryptionKeyError):
                await other.pop_item()
    with (
        session(target, "secret", key=None) as plain,
        pytest.raises(EncryptionKeyError, match="nothing was written"),
    ):
        await plain.add_items([user("leak")])
    with session(target, "secret", key=f"{NEW_KEY},{KEY}") as rotated:  # an older key still reads
        assert await rotated.get_items() == [user("hello"), assistant("hi")]


async def test_a_tampered_row_is_skipped_and_counted(
    target: str, caplog: pytest.LogCaptureFixture
) -> None:
    with session(target, "tamper") as s:
        await s.add_items([user("one"), assistant("two"), assistant("three")])
        rows = [data for sid, data in raw_rows(target) if sid == s.session_id]
        body = rows[1][-8:]
        raw_update(
            target, s.session_id, 1, rows[1][:-8] + ("A" * 8 if body != "A" * 8 else "B" * 8)
        )
        with caplog.at_level(logging.WARNING, logger="agent_sessions"):
            assert await s.get_items() == [user("one"), assistant("three")]
    assert any("skipped 1 corrupt row" in r.getMessage() for r in caplog.records)


async def test_a_damaged_only_row_is_skipped_not_a_key_error(
    target: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The key is configured: a row that does not authenticate is damage, not a wrong key,
    # even when it is the only one; the conversation goes on.
    with session(target, "damaged") as s:
        await s.add_items([user("only")])
        (row,) = [data for sid, data in raw_rows(target) if sid == s.session_id]
        raw_update(
            target, s.session_id, 0, row[:-8] + ("A" * 8 if row[-8:] != "A" * 8 else "B" * 8)
        )
        with caplog.at_level(logging.WARNING, logger="agent_sessions"):
            assert await s.get_items() == []
        await s.add_items([user("next")])
        assert await s.get_items() == [user("next")]
    assert any("failed authentication" in r.getMessage() for r in caplog.records)


async def test_a_row_swapped_between_sessions_fails_authentication(target: str) -> None:
    with session(target, "alice") as a, session(target, "bob") as b:
        await a.add_items([user("alice's secret")])
        await b.add_items([user("bob's question"), assistant("bob's answer")])
        alice_row = next(data for sid, data in raw_rows(target) if sid == a.session_id)
        raw_update(target, b.session_id, 1, alice_row)  # same key, same clear columns
        assert await b.get_items() == [user("bob's question")]


# --- nothing in clear ---------------------------------------------------------------------


async def test_no_plaintext_content_is_stored(target: str) -> None:
    marker = f"MARKER-{random.getrandbits(64):016x}"
    items = [
        user(f"my secret {marker}"),
        {
            "type": "function_call",
            "call_id": "c1",
            "name": "f",
            "arguments": json.dumps({"q": marker}),
        },
        {"type": "function_call_output", "call_id": "c1", "output": f"out {marker}"},
        assistant(f"answer {marker}"),
    ]
    with session(target, "marked") as s:
        await s.add_items(items)
        assert await s.get_items() == items
        assert await s.get_title() == f"my secret {marker}"  # the default title: sealed too
        await s.set_metadata({"note": marker})
    if is_postgres(target):
        dump = pg_query(
            target,
            "SELECT (SELECT string_agg(t::text, ' ') FROM agent_sessions_item AS t) || "
            "(SELECT string_agg(s::text, ' ') FROM agent_sessions_session AS s)",
        )
        stored = [str(dump[0][0]).encode()]
    else:
        files = [Path(target), Path(target + "-wal")]
        assert files[1].exists(), "the WAL was checkpointed"
        assert files[1].stat().st_size > 0, "the WAL was checkpointed"
        stored = [path.read_bytes() for path in files]
    assert not any(marker.encode() in data for data in stored)
    # The check can fail: without a key the same marker is found.
    with session(target, "control", key=None) as plain:
        await plain.add_items([user(f"visible {marker}")])
    if is_postgres(target):
        assert marker in str(
            pg_query(target, "SELECT string_agg(message_data, ' ') FROM agent_sessions_item")
        )
    else:
        assert any(marker.encode() in p.read_bytes() for p in (Path(target), Path(target + "-wal")))


# --- encrypt, rotate, decrypt a live database; copy --------------------------------------------


async def _write_turns(
    target: str, key: Any, conversations: int, turns: range, log: dict[str, list[Item]]
) -> None:
    for turn in turns:
        for number in range(conversations):
            conversation = f"live{number}"
            batch = [user(f"q{turn}"), call(f"k{turn}"), output(f"k{turn}"), assistant(f"a{turn}")]
            with session(target, conversation, key=key) as s:
                await s.add_items(batch)
            log.setdefault(conversation, []).extend(batch)
            await asyncio.sleep(0)


async def _rekey(target: str, keys: str, to: str) -> Any:
    keyring = Keyring(keys)
    backend = open_backend(target, create=False, offload=True, keyring=keyring)
    try:
        await backend.open()
        return await reencode_all(backend, keyring, target=to, batch_size=7)  # type: ignore[arg-type]
    finally:
        await backend.close()


async def _remaining(target: str, kid: str | None) -> int:
    backend = open_backend(target, create=False, offload=True)
    try:
        return await count_remaining(backend, kid)
    finally:
        await backend.close()


async def test_encrypt_rotate_and_decrypt_a_live_database(target: str) -> None:
    log: dict[str, list[Item]] = {}
    await _write_turns(target, None, 4, range(3), log)  # a plain database
    phases = [
        # (what the app writes with, what the tool is run with, target, key id expected)
        (KEY, KEY, "newest", Keyring(KEY).write_key_id),
        (f"{NEW_KEY},{KEY}", f"{NEW_KEY},{KEY}", "newest", Keyring(NEW_KEY).write_key_id),
        (f"plaintext,{NEW_KEY}", NEW_KEY, "plaintext", None),
    ]
    turn = 3
    for app_keys, tool_keys, to, kid in phases:
        writer = asyncio.create_task(_write_turns(target, app_keys, 4, range(turn, turn + 3), log))
        report = await _rekey(target, tool_keys, to)
        await writer
        turn += 3
        if not report.verified:  # a row written meanwhile by the app is already in form
            report = await _rekey(target, tool_keys, to)
        assert report.verified, report
        assert report.unreadable == report.unknown_key == 0
        assert await _remaining(target, kid) == 0
        if kid is None:
            assert not any(stored_key_id(data) for _, data in raw_rows(target))
        else:
            assert {stored_key_id(data) for _, data in raw_rows(target)} == {kid}
        for conversation, items in log.items():  # no write lost, none garbled
            with session(target, conversation, key=app_keys) as s:
                assert await s.get_items() == items, conversation
    again = await _rekey(target, NEW_KEY, "plaintext")  # a rerun finds nothing left to do
    assert again.changed == 0
    assert again.already == again.scanned > 0


async def test_an_encrypted_database_copies_as_it_is(target: str, tmp_path: Path) -> None:
    with session(target, "copied") as s:
        await s.add_items([user("q"), call("k"), output("k"), assistant("a")])
        items = await s.get_items()
    copy = str(tmp_path / "copy.db")
    report = await copy_database(target, copy)
    assert report.copied == 1
    assert not report.mismatched
    assert [data for _, data in raw_rows(copy)] == [data for _, data in raw_rows(target)]
    with session(copy, "copied", n=3) as c:
        assert await c.get_items() == items
        await c.add_items([user("q2")])  # pruning works on the copy's clear columns
        assert await c.get_items() == [user("q2")]
    back = await copy_database(copy, target)  # and back again, then a rerun finds it identical
    assert back.copied == 1
    assert not back.mismatched
    assert (await copy_database(copy, target)).skipped == 1
    with session(target, "copied") as s:
        assert await s.get_items() == [user("q2")]


# --- titles, metadata and search of encrypted sessions ----------------------------------------


async def test_titles_and_metadata_are_sealed_and_opened_with_the_key(target: str) -> None:
    with session(target, "titled") as s:
        await s.add_items([user("Trip to Oslo in May"), assistant("Lovely.")])
        await s.set_metadata({"channel": "voice"})
        assert (await s.get_title(), await s.get_metadata()) == (
            "Trip to Oslo in May",
            {"channel": "voice"},
        )
        session_id = s.session_id
    async with SessionManager(target, encryption_key=KEY) as manager:
        (listed,) = await manager.list_sessions("u")
        assert (listed.title, listed.metadata) == ("Trip to Oslo in May", {"channel": "voice"})
        await manager.set_title(session_id, "Oslo")
        assert (await manager.get_session_stats(session_id)).title == "Oslo"
    # Listing needs no key: without one, sealed fields are not shown (never ciphertext).
    async with SessionManager(target) as keyless:
        (listed,) = await keyless.list_sessions("u")
        assert (listed.title, listed.metadata) == (None, {})
    # A session's own read without the key raises, as reading its items does.
    with session(target, "titled", key=None) as s, pytest.raises(EncryptionKeyError):
        await s.get_title()
    with session(target, "titled", key=NEW_KEY) as s, pytest.raises(EncryptionKeyError):
        await s.get_metadata()


async def test_search_needs_the_plaintext_index_opted_in(target: str) -> None:
    with session(target, "sealed") as s:
        await s.add_items([user("Recipe for sourdough bread")])
    async with SessionManager(target, encryption_key=KEY) as manager:
        with pytest.raises(SearchUnavailableError, match="encrypted"):
            await manager.search_sessions("u", "sourdough")
    opted_in = AgentSessionSettings(search_plaintext_index=True)
    with get_agent_session(
        "u", "indexed", db_path=target, encryption_key=KEY, settings=opted_in
    ) as s:
        await s.add_items([user("Recipe for rye bread")])
    async with SessionManager(target, encryption_key=KEY, settings=opted_in) as manager:
        hits = await manager.search_sessions("u", "bread")
    # Only what was written with the plaintext index on is found.
    assert [(hit.conversation_id, hit.title) for hit in hits] == [
        ("indexed", "Recipe for rye bread")
    ]


def raw_fields(target: str) -> list[tuple[str | None, str | None]]:
    """Every session's stored ``(title, metadata)``."""
    if is_postgres(target):
        rows = pg_query(target, "SELECT title, metadata FROM agent_sessions_session ORDER BY 1")
    else:
        with closing(sqlite3.connect(target)) as conn:
            rows = conn.execute("SELECT title, metadata FROM agent_sessions ORDER BY 1").fetchall()
    return [(row[0], row[1]) for row in rows]


async def test_encrypt_rotate_and_decrypt_cover_titles_and_metadata(target: str) -> None:
    for number in range(3):
        with session(target, f"f{number}", key=None) as s:  # a plain database
            await s.add_items([user(f"Title {number} of a plain conversation")])
            await s.set_metadata({"note": f"metadata {number}"})

    async def fields_with(keys: Any) -> list[tuple[str | None, dict[str, Any]]]:
        async with SessionManager(target, encryption_key=keys) as manager:
            return [(s.title, s.metadata) for s in await manager.list_sessions("u")]

    expected = sorted(
        (f"Title {n} of a plain conversation", {"note": f"metadata {n}"}) for n in range(3)
    )
    assert (await _rekey(target, KEY, "newest")).verified
    assert all(is_encrypted(value) for pair in raw_fields(target) for value in pair)
    assert sorted(await fields_with(KEY)) == expected
    assert await fields_with(None) == [(None, {})] * 3  # sealed: not shown without the key
    rotated = await _rekey(target, f"{NEW_KEY},{KEY}", "newest")
    assert (rotated.verified, rotated.fields_changed) == (True, 3)
    assert sorted(await fields_with(NEW_KEY)) == expected  # the old key is no longer needed
    with session(target, "f0", key=NEW_KEY) as s:
        assert await s.get_title() == "Title 0 of a plain conversation"
    assert (await _rekey(target, NEW_KEY, "plaintext")).verified
    assert not any(is_encrypted(value) for pair in raw_fields(target) for value in pair)
    assert sorted(await fields_with(None)) == expected


async def test_encrypting_a_plain_database_leaves_no_text_in_clear(target: str) -> None:
    marker = f"marker{random.getrandbits(48):012x}"
    with session(target, "plain", key=None) as s:
        await s.add_items([user(f"first {marker}"), assistant(f"reply {marker}")])
        await s.set_metadata({"note": marker})
    async with SessionManager(target) as manager:  # searching indexes the text, in clear
        assert [hit.conversation_id for hit in await manager.search_sessions("u", marker)] == [
            "plain"
        ]
    report = await _rekey(target, KEY, "newest")
    assert report.verified
    assert report.search_entries_dropped == 2
    if is_postgres(target):
        dump = pg_query(
            target,
            "SELECT (SELECT string_agg(t::text, ' ') FROM agent_sessions_item AS t) || "
            "(SELECT string_agg(s::text, ' ') FROM agent_sessions_session AS s)",
        )
        assert marker not in str(dump[0][0])
    else:
        stored = [path.read_bytes() for path in (Path(target), Path(target + "-wal"))]
        assert not any(marker.encode() in data for data in stored)
    with session(target, "plain") as s:
        assert await s.get_items() == [user(f"first {marker}"), assistant(f"reply {marker}")]
        assert await s.get_title() == f"first {marker}"
    async with SessionManager(target, encryption_key=KEY) as manager:
        with pytest.raises(SearchUnavailableError):
            await manager.search_sessions("u", marker)
