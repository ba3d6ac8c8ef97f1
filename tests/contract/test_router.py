"""``conversations_router`` through httpx, on every backend: owners, pages, renames, deletes.

Requests go to a small app (``tests.router_app``) whose ``X-User`` header stands in for
authentication; the data is written through sessions, as an app's chat turns write it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from agent_sessions import SessionManager, SessionNotFoundError, get_session_id
from tests.conftest import FakeClock
from tests.items import assistant, call, output, user
from tests.router_app import as_user, client_for, make_app

from .helpers import stored_rows, write

pytest.importorskip("fastapi")

NOT_FOUND = {"detail": "conversation not found"}
ADA, BOB = as_user("ada"), as_user("bob")


def manager_for(target: str, clock: FakeClock, **options: Any) -> SessionManager:
    return SessionManager(target, clock=clock, **{"retention_days": 7, **options})


async def test_another_users_conversation_is_not_found(target: str, clock: FakeClock) -> None:
    await write(target, "ada", "c1", [user("ada's secret"), assistant("noted")], clock=clock)
    await write(target, "bob", "c2", [user("bob's")], clock=clock)
    async with manager_for(target, clock) as manager, client_for(make_app(manager)) as client:
        assert (await client.get("/conversations/c1", headers=ADA)).status_code == 200
        for method, body in (("GET", None), ("PATCH", {"title": "mine now"}), ("DELETE", None)):
            others = await client.request(method, "/conversations/c1", headers=BOB, json=body)
            missing = await client.request(method, "/conversations/c9", headers=BOB, json=body)
            assert (others.status_code, others.json()) == (404, NOT_FOUND), method
            # The same answer as for a conversation that does not exist: no id is revealed.
            assert (missing.status_code, missing.json()) == (404, NOT_FOUND), method
            assert others.headers["content-length"] == missing.headers["content-length"]
        listed = (await client.get("/conversations", headers=BOB)).json()["conversations"]
        assert [c["conversation_id"] for c in listed] == ["c2"]
        listed = (await client.get("/conversations", headers=ADA)).json()["conversations"]
        assert [c["conversation_id"] for c in listed] == ["c1"]
        # ada's conversation is untouched by bob's attempts.
        kept = (await client.get("/conversations/c1", headers=ADA)).json()
        assert kept["title"] == "ada's secret"
        assert kept["items"] == [user("ada's secret"), assistant("noted")]


async def test_pages_walk_every_conversation_once_newest_first(
    target: str, clock: FakeClock
) -> None:
    written = []
    for n in range(23):
        await write(target, "ada", f"c{n:02}", [user(f"question {n}")], clock=clock)
        written.append(f"c{n:02}")
        if n % 3 == 0:  # other users' conversations in between, never listed for ada
            await write(target, "bob", f"c{n:02}", [user("bob")], clock=clock)
        if n % 5 != 4:  # and some written in the same instant: ties go by id
            clock.advance(minutes=1)
    async with manager_for(target, clock) as manager:
        listing = [s.conversation_id for s in await manager.list_sessions("ada", limit=100)]
        async with client_for(make_app(manager)) as client:
            pages: list[list[dict[str, Any]]] = []
            cursor = None
            while True:
                params: dict[str, Any] = {"limit": 5}
                if cursor is not None:
                    params["cursor"] = cursor
                response = await client.get("/conversations", headers=ADA, params=params)
                assert response.status_code == 200, response.text
                pages.append(response.json()["conversations"])
                cursor = response.json()["next_cursor"]
                if cursor is None:
                    break
            first = (await client.get("/conversations", headers=ADA)).json()
    seen = [c["conversation_id"] for page in pages for c in page]
    assert [len(page) for page in pages] == [5, 5, 5, 5, 3]
    assert sorted(seen) == written, "every conversation once: none skipped, none repeated"
    assert seen == listing, "the pages are the manager's listing, in its order"
    times = [datetime.fromisoformat(c["last_activity"]) for page in pages for c in page]
    assert times == sorted(times, reverse=True), "newest activity first"
    assert seen[0] == "c22"
    assert len(first["conversations"]) == 20, "20 per page by default"
    assert first["next_cursor"] is not None


async def test_a_page_shows_titles_metadata_and_counts(target: str, clock: FakeClock) -> None:
    created = clock.now
    await write(
        target, "ada", "trip", [user("Plan a trip to Oslo"), assistant("Sure")], clock=clock
    )
    clock.advance(minutes=5)
    await write(target, "ada", "trip", [user("in May")], clock=clock)
    async with manager_for(target, clock) as manager, client_for(make_app(manager)) as client:
        (listed,) = (await client.get("/conversations", headers=ADA)).json()["conversations"]
    assert listed == {
        "conversation_id": "trip",
        "title": "Plan a trip to Oslo",
        "metadata": {},
        "message_count": 3,
        "created_at": created.isoformat().replace("+00:00", "Z"),
        "last_activity": clock.now.isoformat().replace("+00:00", "Z"),
    }


async def test_rename_and_metadata_are_visible_in_the_list(target: str, clock: FakeClock) -> None:
    await write(target, "ada", "c1", [user("first words")], clock=clock)
    async with manager_for(target, clock) as manager, client_for(make_app(manager)) as client:
        renamed = await client.patch("/conversations/c1", headers=ADA, json={"title": " Oslo "})
        assert renamed.status_code == 200, renamed.text
        assert renamed.json()["title"] == "Oslo"
        tagged = await client.patch(
            "/conversations/c1", headers=ADA, json={"metadata": {"channel": "voice"}}
        )
        assert tagged.json()["title"] == "Oslo", "a field left out is left as it was"
        assert tagged.json()["metadata"] == {"channel": "voice"}
        (listed,) = (await client.get("/conversations", headers=ADA)).json()["conversations"]
        assert (listed["title"], listed["metadata"]) == ("Oslo", {"channel": "voice"})
        one = (await client.get("/conversations/c1", headers=ADA)).json()
        assert (one["title"], one["metadata"]) == ("Oslo", {"channel": "voice"})
        reset = await client.patch(
            "/conversations/c1", headers=ADA, json={"title": None, "metadata": None}
        )
        # No title until the next user message gives the default one again.
        assert (reset.json()["title"], reset.json()["metadata"]) == (None, {})
        await write(target, "ada", "c1", [user("next words")], clock=clock)
        (listed,) = (await client.get("/conversations", headers=ADA)).json()["conversations"]
        assert listed["title"] == "next words"
        stats = await manager.get_session_stats(get_session_id("ada", "c1"))
        assert (stats.title, stats.metadata) == ("next words", {})


async def test_a_deleted_conversation_is_really_gone(target: str, clock: FakeClock) -> None:
    gone = await write(
        target, "ada", "c1", [user("weather in Oslo"), call("k1"), output("k1")], clock=clock
    )
    kept = await write(target, "ada", "c2", [user("weather in Rome")], clock=clock)
    async with manager_for(target, clock) as manager, client_for(make_app(manager)) as client:
        deleted = await client.delete("/conversations/c1", headers=ADA)
        assert (deleted.status_code, deleted.content) == (204, b"")
        assert (await client.get("/conversations/c1", headers=ADA)).status_code == 404
        again = await client.delete("/conversations/c1", headers=ADA)
        assert (again.status_code, again.json()) == (404, NOT_FOUND)
        listed = (await client.get("/conversations", headers=ADA)).json()["conversations"]
        assert [c["conversation_id"] for c in listed] == ["c2"]
        with pytest.raises(SessionNotFoundError):
            await manager.get_session_stats(gone)
        if hasattr(manager, "search_sessions"):
            found = await client.get("/conversations/search", headers=ADA, params={"q": "weather"})
            assert [h["conversation_id"] for h in found.json()["hits"]] == ["c2"]
    assert gone not in stored_rows(target), "no item row of it is left"
    assert stored_rows(target)[kept] == 1


async def test_delete_all_mine_leaves_other_users_intact(target: str, clock: FakeClock) -> None:
    for conversation in ("c1", "c2", "c3"):
        await write(target, "ada", conversation, [user("ada")], clock=clock)
    bobs = await write(target, "bob", "c1", [user("bob"), assistant("hi bob")], clock=clock)
    async with manager_for(target, clock) as manager, client_for(make_app(manager)) as client:
        response = await client.delete("/conversations", headers=ADA)
        assert (response.status_code, response.json()) == (200, {"deleted": 3})
        assert (await client.get("/conversations", headers=ADA)).json() == {
            "conversations": [],
            "next_cursor": None,
        }
        assert (await client.delete("/conversations", headers=ADA)).json() == {"deleted": 0}
        bob = (await client.get("/conversations/c1", headers=BOB)).json()
        assert bob["items"] == [user("bob"), assistant("hi bob")]
    assert stored_rows(target) == {bobs: 2}


async def test_export_streams_every_conversation_of_mine(target: str, clock: FakeClock) -> None:
    conversations = {f"c{n}": [user(f"question {n}"), assistant(f"answer {n}")] for n in range(4)}
    for conversation, items in conversations.items():
        await write(target, "ada", conversation, items, clock=clock)
    await write(target, "bob", "c0", [user("bob's")], clock=clock)
    async with manager_for(target, clock) as manager, client_for(make_app(manager)) as client:
        async with client.stream("GET", "/conversations/export", headers=ADA) as response:
            chunks = [chunk async for chunk in response.aiter_text()]
        markdown = await client.get(
            "/conversations/export", headers=ADA, params={"format": "markdown"}
        )
        empty = await client.get("/conversations/export", headers=as_user("carol"))
        bad = await client.get("/conversations/export", headers=ADA, params={"format": "xml"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-disposition"] == 'attachment; filename="conversations.json"'
    document = json.loads("".join(chunks))
    assert document["user_id"] == "ada"
    exported = {c["conversation_id"]: c["items"] for c in document["conversations"]}
    assert exported == conversations
    assert markdown.status_code == 200
    assert markdown.headers["content-type"] == "text/markdown; charset=utf-8"
    assert 'filename="conversations.md"' in markdown.headers["content-disposition"]
    assert markdown.text.count("\n---\n") == 3
    assert "**User:** question 3" in markdown.text
    assert "bob's" not in markdown.text
    assert json.loads(empty.text)["conversations"] == []
    assert bad.status_code == 422


async def test_an_expired_conversation_is_not_found(target: str, clock: FakeClock) -> None:
    await write(target, "ada", "old", [user("old")], clock=clock)
    clock.advance(minutes=10)
    await write(target, "ada", "new", [user("new")], clock=clock)
    clock.advance(minutes=20)  # "old" idle exactly 30 minutes: not yet expired
    async with (
        manager_for(target, clock, retention="30m") as manager,
        client_for(make_app(manager)) as client,
    ):
        assert (await client.get("/conversations/old", headers=ADA)).status_code == 200
        clock.advance(microseconds=1)
        for method, body in (("GET", None), ("PATCH", {"title": "x"}), ("DELETE", None)):
            response = await client.request(method, "/conversations/old", headers=ADA, json=body)
            assert (response.status_code, response.json()) == (404, NOT_FOUND), method
        listed = (await client.get("/conversations", headers=ADA)).json()["conversations"]
        assert [c["conversation_id"] for c in listed] == ["new"]
        # The DELETE above removed what was still stored of it (before the sweep would).
        with pytest.raises(SessionNotFoundError):
            await manager.get_session_stats(get_session_id("ada", "old"))
