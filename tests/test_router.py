"""``conversations_router``: bad input, auth, errors, its own manager, search, the example app.

Owner checks, pages, renames, deletes and export run on every backend in
``tests/contract/test_router.py``; these run on SQLite.
"""

from __future__ import annotations

import gc
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent_sessions import SessionManager, get_agent_session, get_session_id
from agent_sessions.conversations import MAX_METADATA_BYTES, MAX_TITLE_LENGTH
from tests.items import user
from tests.router_app import as_user, client_for, make_app

pytest.importorskip("fastapi")

ROOT = Path(__file__).resolve().parent.parent
ADA = as_user("ada")


async def write(db_path: Path, user_id: str, conversation_id: str, *texts: str, **kw: Any) -> None:
    with get_agent_session(user_id, conversation_id, db_path=db_path, **kw) as session:
        await session.add_items([user(text) for text in texts])  # type: ignore[misc]


@pytest.mark.parametrize(
    ("method", "path", "body", "message"),
    [
        ("GET", "/conversations?limit=0", None, "greater than or equal to 1"),
        ("GET", "/conversations?limit=1000", None, "less than or equal to 100"),
        ("GET", "/conversations?limit=x", None, "valid integer"),
        ("GET", "/conversations?cursor=not-a-cursor", None, "cursor is not a cursor"),
        ("GET", "/conversations/search?limit=5", None, "Field required"),
        ("GET", "/conversations/search?q=", None, "at least 1 character"),
        ("GET", "/conversations/c%0A1", None, "non-printable character"),
        ("GET", "/conversations/%20", None, "must not be empty or whitespace-only"),
        ("GET", "/conversations/" + "x" * 129, None, "the limit is 128"),
        ("DELETE", "/conversations/c%001", None, "non-printable character"),
        ("PATCH", "/conversations/c%1B1", {"title": "t"}, "non-printable character"),
        ("PATCH", "/conversations/c1", {"title": "  "}, "title must not be blank"),
        ("PATCH", "/conversations/c1", {"title": "a\tb"}, "control or non-printable"),
        ("PATCH", "/conversations/c1", {"title": "x" * 201}, f"limit is {MAX_TITLE_LENGTH}"),
        ("PATCH", "/conversations/c1", {"title": 5}, "valid string"),
        ("PATCH", "/conversations/c1", {"metadata": [1]}, "valid dictionary"),
        (
            "PATCH",
            "/conversations/c1",
            {"metadata": {"notes": "x" * MAX_METADATA_BYTES}},
            f"the limit is {MAX_METADATA_BYTES}",
        ),
        ("PATCH", "/conversations/c1", {"name": "t"}, "Extra inputs are not permitted"),
    ],
)
async def test_bad_input_is_422_with_the_reason_and_changes_nothing(
    db_path: Path, method: str, path: str, body: Any, message: str
) -> None:
    await write(db_path, "ada", "c1", "hello")
    async with SessionManager(db_path) as manager, client_for(make_app(manager)) as client:
        response = await client.request(method, path, headers=ADA, json=body)
        assert response.status_code == 422, response.text
        assert message in response.text
        stats = await manager.get_session_stats(get_session_id("ada", "c1"))
    assert (stats.title, stats.metadata, stats.message_count) == ("hello", {}, 1)


async def test_a_bad_field_keeps_the_good_one_from_being_written(db_path: Path) -> None:
    await write(db_path, "ada", "c1", "hello")
    too_big = {"notes": "x" * MAX_METADATA_BYTES}
    async with SessionManager(db_path) as manager, client_for(make_app(manager)) as client:
        response = await client.patch(
            "/conversations/c1", headers=ADA, json={"title": "Fine", "metadata": too_big}
        )
        stats = await manager.get_session_stats(get_session_id("ada", "c1"))
    assert response.status_code == 422
    assert stats.title == "hello"


async def test_an_empty_patch_answers_the_conversation_unchanged(db_path: Path) -> None:
    await write(db_path, "ada", "c1", "hello")
    async with SessionManager(db_path) as manager, client_for(make_app(manager)) as client:
        response = await client.patch("/conversations/c1", headers=ADA, json={})
        missing = await client.patch("/conversations/c2", headers=ADA, json={})
    assert (response.status_code, response.json()["title"]) == (200, "hello")
    assert missing.status_code == 404


ROUTES = [
    ("GET", "/conversations"),
    ("DELETE", "/conversations"),
    ("GET", "/conversations/search?q=hello"),
    ("GET", "/conversations/export"),
    ("GET", "/conversations/c1"),
    ("PATCH", "/conversations/c1"),
    ("DELETE", "/conversations/c1"),
]


async def test_every_route_needs_the_apps_user(db_path: Path) -> None:
    await write(db_path, "ada", "c1", "hello")
    async with SessionManager(db_path) as manager, client_for(make_app(manager)) as client:
        for method, path in ROUTES:
            response = await client.request(method, path, json={"title": "t"})
            assert response.status_code == 401, (method, path)
            blank = await client.request(method, path, headers={"X-User": ""}, json={})
            assert blank.status_code == 401, (method, path)
        assert await manager.get_session_count() == 1


async def test_a_storage_failure_is_503_and_names_no_database(tmp_path: Path) -> None:
    missing = tmp_path / "secret-folder" / "missing.db"
    manager = SessionManager(missing, create=False)  # opens nothing until the first request
    try:
        async with client_for(make_app(manager)) as client:
            for method, path in ROUTES[:2] + ROUTES[4:]:
                response = await client.request(method, path, headers=ADA, json={})
                assert response.status_code == 503, (method, path, response.text)
                assert response.json() == {"detail": "the conversation store is unavailable"}
                assert "secret-folder" not in response.text
    finally:
        await manager.close()
    assert not missing.exists()


async def test_a_user_id_the_library_refuses_is_422(db_path: Path) -> None:
    async with SessionManager(db_path) as manager, client_for(make_app(manager)) as client:
        response = await client.get("/conversations", headers=as_user("u" * 129))
    assert response.status_code == 422
    assert "user_id is 129 characters long" in response.json()["detail"]


async def test_the_router_builds_its_own_manager_and_closes_it_at_shutdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "settings.db"
    monkeypatch.setenv("AGENT_SESSION_DB_PATH", str(db))
    await write(db, "ada", "c1", "hello")
    app = make_app()  # no manager: one from the settings, shared by every request
    for _ in range(2):  # a second start (a test client's) makes a new one
        async with client_for(app) as client:
            listed = (await client.get("/conversations", headers=ADA)).json()
            one = await client.get("/conversations/c1", headers=ADA)
        assert [c["conversation_id"] for c in listed["conversations"]] == ["c1"]
        assert one.status_code == 200
    # A manager left open would warn (ResourceWarning is an error in these tests).
    gc.collect()


async def test_a_manager_dependency_and_a_prefix(db_path: Path) -> None:
    await write(db_path, "ada", "c1", "hello")
    calls = []
    async with SessionManager(db_path) as manager:

        async def from_app() -> SessionManager:
            calls.append(1)
            return manager

        app = make_app(from_app, prefix="/api/chats", tags=["chats"])
        async with client_for(app) as client:
            response = await client.get("/api/chats/c1", headers=ADA)
            schema = (await client.get("/openapi.json")).json()
    assert response.status_code == 200
    assert calls == [1]
    assert schema["paths"]["/api/chats/{conversation_id}"]["get"]["tags"] == ["chats"]


async def test_the_openapi_schema_documents_every_route(db_path: Path) -> None:
    async with SessionManager(db_path) as manager, client_for(make_app(manager)) as client:
        schema = (await client.get("/openapi.json")).json()
    paths = schema["paths"]
    assert set(paths) == {
        "/conversations",
        "/conversations/search",
        "/conversations/export",
        "/conversations/{conversation_id}",
    }
    assert set(paths["/conversations"]) == {"get", "delete"}
    assert set(paths["/conversations/{conversation_id}"]) == {"get", "patch", "delete"}
    listing = paths["/conversations"]["get"]["responses"]
    assert listing["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ConversationPage"
    }
    assert {"401", "422", "503"} <= set(listing)
    assert "404" in paths["/conversations/{conversation_id}"]["get"]["responses"]
    assert "501" in paths["/conversations/search"]["get"]["responses"]
    assert {"Conversation", "ConversationSummary", "ConversationUpdate", "SearchResults"} <= set(
        schema["components"]["schemas"]
    )


HAS_SEARCH = hasattr(SessionManager, "search_sessions")


@pytest.mark.skipif(not HAS_SEARCH, reason="SessionManager.search_sessions is not on this base")
async def test_search_finds_only_my_conversations(db_path: Path) -> None:
    await write(db_path, "ada", "trip", "a trip to Oslo in May")
    await write(db_path, "ada", "food", "pasta recipes")
    await write(db_path, "bob", "trip", "Oslo for bob too")
    async with SessionManager(db_path) as manager, client_for(make_app(manager)) as client:
        found = await client.get("/conversations/search", headers=ADA, params={"q": "oslo"})
        none = await client.get("/conversations/search", headers=ADA, params={"q": "zebra"})
        deleted = await client.delete("/conversations/trip", headers=ADA)
        after = await client.get("/conversations/search", headers=ADA, params={"q": "oslo"})
    assert found.status_code == 200, found.text
    (hit,) = found.json()["hits"]
    assert hit["conversation_id"] == "trip"
    assert hit["title"] == "a trip to Oslo in May"
    assert "Oslo" in hit["snippet"]
    assert set(hit) == {"conversation_id", "title", "snippet", "rank", "last_activity"}
    assert none.json() == {"hits": []}
    assert deleted.status_code == 204
    assert after.json() == {"hits": []}


class _StubbedSearch(SessionManager):
    """A real manager whose ``search_sessions`` answers fixed hits and records its calls.

    It checks only the route's side (arguments in, hits out) and runs on any base; the
    search itself is tested above once ``search_sessions`` exists.
    """

    calls: list[tuple[str, str, int]]

    async def search_sessions(self, user_id: str, query: str, *, limit: int = 20) -> list[Any]:
        self.calls.append((user_id, query, limit))
        moment = datetime(2026, 1, 15, 12, tzinfo=UTC)
        hit = {"title": "Oslo", "snippet": "[Oslo] in May", "rank": 2.5, "last_activity": moment}
        return [
            SimpleNamespace(session_id="user_ada_conv_trip", conversation_id="trip", **hit),
            SimpleNamespace(session_id="adopted", conversation_id=None, **hit),
        ]


async def test_the_search_route_passes_the_user_and_answers_the_hits(db_path: Path) -> None:
    manager = _StubbedSearch(db_path)
    manager.calls = []
    async with manager, client_for(make_app(manager)) as client:
        response = await client.get(
            "/conversations/search", headers=ADA, params={"q": "oslo may", "limit": 7}
        )
        too_many = await client.get(
            "/conversations/search", headers=ADA, params={"q": "oslo", "limit": 101}
        )
    assert manager.calls == [("ada", "oslo may", 7)]
    assert response.json() == {
        "hits": [
            {
                "conversation_id": "trip",
                "title": "Oslo",
                "snippet": "[Oslo] in May",
                "rank": 2.5,
                "last_activity": "2026-01-15T12:00:00Z",
            }
        ]
    }
    assert too_many.status_code == 422


async def test_search_that_is_off_is_501(db_path: Path) -> None:
    await write(db_path, "ada", "trip", "a trip to Oslo")
    if HAS_SEARCH:
        from agent_sessions import AgentSessionSettings

        manager = SessionManager(db_path, settings=AgentSessionSettings(search_index=False))
    else:
        manager = SessionManager(db_path)
    async with manager, client_for(make_app(manager)) as client:
        response = await client.get("/conversations/search", headers=ADA, params={"q": "oslo"})
    assert response.status_code == 501
    assert "search" in response.json()["detail"]


def test_without_fastapi_the_module_says_how_to_install_it() -> None:
    code = (
        "import sys\n"
        "sys.modules['fastapi'] = None\n"  # as if it were not installed
        "try:\n"
        "    import agent_sessions.fastapi\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert "pip install 'agent-sessions[fastapi]'" in result.stdout


async def test_the_example_app_serves_the_conversations_of_its_chats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    from agent_sessions import get_settings

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("AGENT_SESSION_DB_PATH", str(tmp_path / "app.db"))
    get_settings.cache_clear()
    monkeypatch.syspath_prepend(str(ROOT))
    from examples.fastapi_app import app

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            chat = {"user_id": "ada", "conversation_id": "c1", "message": "Plan a trip"}
            assert (await client.post("/chat", json=chat)).status_code == 200
            listed = await client.get("/conversations", headers=ADA)
            one = await client.get("/conversations/c1", headers=ADA)
            bobs = await client.get("/conversations/c1", headers=as_user("bob"))
            anonymous = await client.get("/conversations")
            renamed = await client.patch("/conversations/c1", headers=ADA, json={"title": "Trip"})
            deleted = await client.delete("/conversations/c1", headers=ADA)
            again = await client.post("/chat", json=chat)  # starts the conversation afresh
    (summary,) = listed.json()["conversations"]
    assert (summary["conversation_id"], summary["title"]) == ("c1", "Plan a trip")
    assert summary["message_count"] == 2
    assert one.json()["items"][0] == user("Plan a trip")
    assert one.json()["items"][1]["content"][0]["text"].startswith("You said: Plan a trip")
    assert one.json()["items"][1]["role"] == "assistant"
    assert bobs.status_code == 404
    assert anonymous.status_code == 401
    assert renamed.json()["title"] == "Trip"
    assert deleted.status_code == 204
    assert again.json()["history_items"] == 2
