"""The encryption module on its own: keys, sealing, skeletons, settings, the CLI's key tools."""

from __future__ import annotations

import base64
import io
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sessions import (
    AgentSession,
    AgentSessionSettings,
    ConfigurationError,
    EncryptionKeyError,
    Keyring,
    generate_key,
)
from agent_sessions.cli import main
from agent_sessions.encryption import (
    PLAINTEXT,
    clear_columns,
    decode_stored,
    is_encrypted,
    key_id,
    parse_keys,
    skeleton,
)
from agent_sessions.pruning import is_user_message, pairing
from agent_sessions.settings import load_settings

KEY = generate_key()
OTHER = generate_key()


# --- the skeleton classifies exactly as the item ----------------------------------------------

KEY_VALUES = st.one_of(
    st.none(), st.text(max_size=6), st.integers(-3, 3), st.sampled_from(["k", "k:1", "a:b"])
)
TYPES = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "message",
            "reasoning",
            "function_call",
            "function_call_output",
            "local_shell_call",
            "local_shell_call_output",
            "computer_call_output",
            "mcp_approval_request",
            "mcp_approval_response",
            "web_search_call",
            "_output",
        ]
    ),
    st.text(max_size=8),
    st.integers(0, 2),
)


@st.composite
def arbitrary_items(draw: st.DrawFn) -> dict[str, Any]:
    item: dict[str, Any] = {}
    for field, values in (
        ("role", st.sampled_from(["user", "assistant", "system", "developer", "User", 1])),
        ("type", TYPES),
        ("call_id", KEY_VALUES),
        ("id", KEY_VALUES),
        ("approval_request_id", KEY_VALUES),
    ):
        if draw(st.booleans()):
            item[field] = draw(values)
    return item


def classify(item: dict[str, Any]) -> tuple[bool, tuple[bool, str] | None, bool]:
    return is_user_message(item), pairing(item), item.get("type") == "reasoning"


@settings(max_examples=2000, deadline=None)
@given(arbitrary_items())
def test_a_skeleton_classifies_exactly_as_its_item(item: dict[str, Any]) -> None:
    columns = clear_columns(item)
    assert classify(dict(skeleton(columns))) == classify(item), (item, columns)
    assert clear_columns(skeleton(columns)) == columns


# --- keys -------------------------------------------------------------------------------------


def test_generated_keys_are_32_random_bytes_in_urlsafe_base64() -> None:
    keys = {generate_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert len(base64.urlsafe_b64decode(key)) == 32


def test_keys_newest_first_from_a_comma_separated_string() -> None:
    keyring = Keyring(f" {KEY} , {OTHER} ")
    assert keyring.key_ids == (
        key_id(base64.urlsafe_b64decode(KEY)),
        key_id(base64.urlsafe_b64decode(OTHER)),
    )
    assert keyring.write_key_id == keyring.key_ids[0]
    assert Keyring([KEY, OTHER]).key_ids == keyring.key_ids


@pytest.mark.parametrize(
    "value", ["short", KEY[:-4], f"{KEY},{KEY}", f"{KEY},{PLAINTEXT}", PLAINTEXT, ",", KEY + "x"]
)
def test_bad_keys_are_refused_without_echoing_them(value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_keys(value)
    assert KEY not in str(caught.value)


def test_a_keyring_never_shows_its_keys() -> None:
    keyring = Keyring(f"{KEY},{OTHER}")
    assert KEY not in repr(keyring)
    assert OTHER not in repr(keyring)
    assert keyring.key_ids[0] in repr(keyring)
    session = AgentSession("u", "c", db_path=":memory:", encryption_key=KEY)
    assert KEY not in repr(session)
    assert KEY not in repr(vars(session))
    session.close()


def test_the_setting_is_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_SESSION_ENCRYPTION_KEY", f"{KEY},{OTHER}")
    loaded = load_settings()
    assert loaded.encryption_key is not None
    assert KEY not in repr(loaded)
    assert KEY not in str(loaded.model_dump())
    assert Keyring(loaded.encryption_key).key_ids == Keyring(f"{KEY},{OTHER}").key_ids
    monkeypatch.setenv("AGENT_SESSION_ENCRYPTION_KEY", f"{KEY[:-2]}")
    with pytest.raises(ConfigurationError, match="ENCRYPTION_KEY") as caught:
        load_settings()
    assert KEY[:-2] not in str(caught.value)
    monkeypatch.setenv("AGENT_SESSION_ENCRYPTION_KEY", "")
    assert load_settings().encryption_key is None


# --- sealing ----------------------------------------------------------------------------------


def test_a_sealed_item_opens_only_in_its_session_with_its_columns() -> None:
    keyring = Keyring(KEY)
    item = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
    columns = clear_columns(item)
    sealed = keyring.seal_item("s1", '{"secret": 1}', columns)
    assert is_encrypted(sealed)
    assert "secret" not in sealed
    assert keyring.seal_item("s1", '{"secret": 1}', columns) != sealed  # a fresh nonce
    assert keyring.open_item("s1", sealed, columns) == '{"secret": 1}'
    with pytest.raises(EncryptionKeyError, match="s2"):
        keyring.open_item("s2", sealed, columns)
    with pytest.raises(EncryptionKeyError):
        keyring.open_item("s1", sealed, (True, *columns[1:]))  # a clear column edited
    with pytest.raises(EncryptionKeyError):
        Keyring(OTHER).open_item("s1", sealed, columns)


def test_text_fields_are_bound_to_their_session_and_context() -> None:
    keyring = Keyring(KEY)
    sealed = keyring.encrypt_text("s1", "My trip to Oslo", context="title")
    assert "Oslo" not in sealed
    assert keyring.decrypt_text("s1", sealed, context="title") == "My trip to Oslo"
    assert keyring.decrypt_text("s1", "plain title", context="title") == "plain title"
    for session, context in (("s2", "title"), ("s1", "metadata")):
        with pytest.raises(EncryptionKeyError):
            keyring.decrypt_text(session, sealed, context=context)


def test_plaintext_first_writes_plain_and_reads_sealed_rows() -> None:
    sealed = Keyring(KEY).seal_item(
        "s", '{"role": "user", "content": "x"}', (True, None, None, False)
    )
    keyring = Keyring(f"{PLAINTEXT},{KEY}")
    assert keyring.writes_plaintext
    assert "plaintext" in repr(keyring)
    assert keyring.seal_item("s", "{}", (False, None, None, False)) == "{}"
    rows = [(1, sealed, True, None, None, False), (2, '{"a": 1}', None, None, None, None)]
    assert decode_stored(rows, keyring, "s").items == [{"role": "user", "content": "x"}, {"a": 1}]


def test_reads_fail_closed_but_skip_a_single_bad_row() -> None:
    keyring = Keyring(KEY)
    clear = (False, None, None, False)
    good = [(n, keyring.seal_item("s", f'{{"n": {n}}}', clear), *clear) for n in range(3)]
    tampered = good[1][1][:-6] + ("AAAA==" if not good[1][1].endswith("AAAA==") else "BBBB==")
    rows = [good[0], (1, tampered, *clear), good[2]]
    decoded = decode_stored(rows, keyring, "s")
    assert decoded.items == [{"n": 0}, {"n": 2}]
    assert decoded.corrupt_row_ids == [1]
    for wrong in (None, Keyring(OTHER)):
        with pytest.raises(EncryptionKeyError, match="'s'"):
            decode_stored(good, wrong, "s")


# --- the SDK's EncryptedSession envelopes -----------------------------------------------------


async def test_sdk_envelopes_are_warned_about_once_per_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    envelope = {"__enc__": 1, "v": 1, "kid": "hkdf-v1", "payload": "gAAAA..."}
    with (
        caplog.at_level(logging.WARNING, logger="agent_sessions"),
        AgentSession("u", "c", db_path=":memory:") as session,
    ):
        await session.add_items([envelope, envelope])  # type: ignore[list-item]
        await session.add_items([envelope])  # type: ignore[list-item]
    warnings = [r for r in caplog.records if "EncryptedSession" in r.getMessage()]
    assert len(warnings) == 1
    assert "encryption_key=" in warnings[0].getMessage()


# --- CLI --------------------------------------------------------------------------------------


def test_generate_key_prints_a_usable_key() -> None:
    out = io.StringIO()
    assert main(["generate-key"], out=out) == 0
    Keyring(out.getvalue().strip())


def test_rekey_commands_need_a_key(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "s.db"
    with AgentSession("u", "c", db_path=db):
        pass
    for command in ("rotate-key", "encrypt", "decrypt"):
        assert main(["--db", str(db), command], out=io.StringIO()) == 2
        assert "AGENT_SESSION_ENCRYPTION_KEY" in capsys.readouterr().err


def test_settings_field_is_documented() -> None:
    assert "newest first" in (AgentSessionSettings.model_fields["encryption_key"].description or "")
