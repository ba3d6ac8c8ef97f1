"""A ready REST API for a user's conversations: ``conversations_router`` (needs FastAPI).

::

    from agent_sessions.fastapi import conversations_router

    app.include_router(conversations_router(get_user_id=current_user))

Every route is scoped to the user the app's own dependency returns: a conversation is
addressed by its ``conversation_id`` and found under ``get_session_id(user, conversation_id)``,
so another user's conversation, a missing one and an expired one all answer the same 404.
Bad input answers 422 with the library's message; a database failure 503, without details.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations at
# runtime, and they name the dependencies given to ``conversations_router`` (its locals).

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from enum import Enum
from typing import Annotated, Any, Literal, NoReturn

try:
    from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Response, status
    from fastapi.responses import StreamingResponse
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without FastAPI
    raise ImportError(
        "agent_sessions.fastapi needs FastAPI, an optional dependency: "
        "pip install 'agent-sessions[fastapi]'"
    ) from exc
from pydantic import BaseModel, ConfigDict, Field

from . import errors
from .conversations import encode_metadata, validate_title
from .errors import (
    ConfigurationError,
    EncryptionKeyError,
    InvalidArgumentError,
    SessionClosedError,
    SessionNotFoundError,
    StorageError,
)
from .exporting import conversation_markdown, json_chunks, utf8_safe
from .ids import get_session_id, normalize_identifier
from .manager import SessionManager
from .models import SessionStats
from .settings import get_settings

__all__ = [
    "Conversation",
    "ConversationPage",
    "ConversationSummary",
    "ConversationUpdate",
    "DeletedConversations",
    "SearchResult",
    "SearchResults",
    "conversations_router",
]

logger = logging.getLogger("agent_sessions")

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100

NOT_FOUND = "conversation not found"
"""The one 404 detail: a missing, expired or other user's conversation look alike."""

# search_sessions and its error arrive with the search feature; until then the search route
# answers 501 and this module still imports.
_SEARCH_UNAVAILABLE: tuple[type[Exception], ...] = tuple(
    cls for cls in (getattr(errors, "SearchUnavailableError", None),) if cls is not None
)

ManagerDependency = Callable[..., SessionManager | Awaitable[SessionManager]]
UserDependency = Callable[..., str | Awaitable[str]]


class ConversationSummary(BaseModel):
    """One conversation as listed: no items."""

    conversation_id: str
    title: str | None = Field(description="Set by the app, else the first user message.")
    metadata: dict[str, Any] = Field(description="The app's small JSON object.")
    message_count: int
    created_at: datetime
    last_activity: datetime


class Conversation(ConversationSummary):
    """One conversation with its items, oldest first."""

    items: list[dict[str, Any]]


class ConversationPage(BaseModel):
    """A page of conversations, most recent activity first."""

    conversations: list[ConversationSummary]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null on the last page."
    )


class ConversationUpdate(BaseModel):
    """What to change; a field left out is left as it is."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(
        default=None,
        description="The new title; null clears it (the next user message sets the default).",
    )
    metadata: dict[str, Any] | None = Field(
        default=None, description="Replaces the metadata object; null empties it."
    )


class SearchResult(BaseModel):
    """A conversation with a message holding every word searched for."""

    conversation_id: str
    title: str | None
    snippet: str
    rank: float = Field(description="Higher is better; compare within one result list only.")
    last_activity: datetime


class SearchResults(BaseModel):
    """Search results, best rank first."""

    hits: list[SearchResult]


class DeletedConversations(BaseModel):
    """How many conversations were deleted."""

    deleted: int


class _Detail(BaseModel):
    detail: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    status.HTTP_401_UNAUTHORIZED: {"description": "Not authenticated (by the app's dependency)"},
    422: {"description": "Bad input: an id, cursor, title or metadata the library refuses"},
    status.HTTP_503_SERVICE_UNAVAILABLE: {
        "model": _Detail,
        "description": "The conversation store failed; try again later",
    },
}
_NOT_FOUND_RESPONSE: dict[int | str, dict[str, Any]] = {
    status.HTTP_404_NOT_FOUND: {
        "model": _Detail,
        "description": "No such conversation of this user (missing, expired or another's)",
    }
}


@contextmanager
def _http_errors() -> Iterator[None]:
    """Translate the library's errors into HTTP errors, at this one boundary."""
    try:
        yield
    except SessionNotFoundError:
        _not_found()
    except ConfigurationError:
        raise  # the server's settings are wrong, not the request: a 500
    except InvalidArgumentError as exc:
        raise HTTPException(422, str(exc)) from exc
    except (StorageError, SessionClosedError) as exc:
        # The message may name the database (host, file); it is logged, never sent.
        logger.warning("conversations API: %s", exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "the conversation store is unavailable"
        ) from exc
    except EncryptionKeyError as exc:
        # The server lacks the key the conversation was sealed with: its setup, not the
        # request. Logged (key ids only, never a key); the client learns nothing of keys.
        logger.error("conversations API: %s", exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "the conversation cannot be read"
        ) from exc


def _not_found() -> NoReturn:
    raise HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)


def _summary(stats: SessionStats, conversation_id: str) -> ConversationSummary:
    return ConversationSummary(
        conversation_id=conversation_id,
        title=stats.title,
        metadata=stats.metadata,
        message_count=stats.message_count,
        created_at=stats.created_at,
        last_activity=stats.last_activity,
    )


async def _owned(
    manager: SessionManager, user: str, conversation_id: str, *, expired: bool = False
) -> SessionStats:
    """The user's conversation, unexpired unless ``expired``; else ``SessionNotFoundError``.

    The stored owner is checked too: an id adopted from a hand-built ``SQLiteSession``
    database can equal the derived id of another pair (see ``ids.legacy_owner``).
    """
    session_id = get_session_id(user, conversation_id)
    stats = await manager.get_session_stats(session_id)
    if (
        stats.user_id != user
        or stats.conversation_id != conversation_id
        or (not expired and manager.has_expired(stats))
    ):
        raise SessionNotFoundError(session_id)
    return stats


class _SharedManager:
    """The router's own manager, built from the settings on first use, closed at shutdown."""

    def __init__(self) -> None:
        self._manager: SessionManager | None = None

    def __call__(self) -> SessionManager:
        if self._manager is None:
            self._manager = SessionManager(settings=get_settings())
        return self._manager

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            manager, self._manager = self._manager, None
            if manager is not None:
                await manager.close()


def _as_dependency(manager: SessionManager | ManagerDependency) -> ManagerDependency:
    if not isinstance(manager, SessionManager):
        return manager

    def given() -> SessionManager:
        return manager

    return given


def conversations_router(
    get_user_id: UserDependency,
    *,
    manager: SessionManager | ManagerDependency | None = None,
    prefix: str = "/conversations",
    tags: Sequence[str | Enum] | None = ("conversations",),
) -> APIRouter:
    """A FastAPI router for the authenticated user's conversations.

    Routes (under ``prefix``): ``GET /`` list (``?limit=&cursor=``), ``GET /search?q=``,
    ``GET /export`` (``?format=json|markdown``, streamed), ``DELETE /`` delete all mine,
    ``GET /{conversation_id}`` one with its items, ``PATCH /{conversation_id}`` rename or set
    metadata, ``DELETE /{conversation_id}``. ``GET`` cannot read conversations whose id is
    ``search`` or ``export`` (those are routes), nor ids holding ``/``.

    Args:
        get_user_id: A FastAPI dependency returning the authenticated user's id (sync or
            async); it answers 401 itself when there is none.
        manager: The ``SessionManager`` to use, or a dependency returning one (e.g. one
            reading ``request.app.state``); the app owns and closes it. By default the
            router builds one from the settings on first use and closes it when the app
            shuts down (include the router with ``app.include_router``, which runs its
            lifespan).
        prefix: Path prefix of every route; not empty (the list route is the prefix).
        tags: OpenAPI tags of every route.

    Returns:
        An ``APIRouter`` to pass to ``app.include_router``.
    """
    shared: _SharedManager | None = None
    if manager is None:
        shared = _SharedManager()
        manager_dependency: ManagerDependency = shared
    else:
        manager_dependency = _as_dependency(manager)
    User = Annotated[str, Depends(get_user_id)]
    Manager = Annotated[SessionManager, Depends(manager_dependency)]
    router = APIRouter(
        prefix=prefix,
        tags=list(tags or []),
        responses=_ERRORS,
        lifespan=None if shared is None else shared.lifespan,
    )

    @router.get("", summary="List my conversations")
    async def list_conversations(
        user_id: User,
        manager: Manager,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
        cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    ) -> ConversationPage:
        """Most recent activity first, keyset-paginated; expired conversations are left out."""
        with _http_errors():
            user = normalize_identifier(user_id, "user_id")
            page = await manager.list_sessions(user, limit=limit, cursor=cursor)
        return ConversationPage(
            conversations=[
                _summary(stats, stats.conversation_id)
                for stats in page
                if stats.conversation_id is not None
            ],
            next_cursor=page.next_cursor,
        )

    @router.get(
        "/search",
        summary="Search my conversations",
        responses={
            status.HTTP_501_NOT_IMPLEMENTED: {
                "model": _Detail,
                "description": "Search is off for this database (search_index=False)",
            }
        },
    )
    async def search_conversations(
        user_id: User,
        manager: Manager,
        q: Annotated[str, Query(min_length=1, max_length=1000, description="Words to find")],
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    ) -> SearchResults:
        """Conversations with a message holding every word of ``q``, best match first."""
        search = getattr(manager, "search_sessions", None)
        if search is None:
            raise HTTPException(
                status.HTTP_501_NOT_IMPLEMENTED, "search is not available in this version"
            )
        with _http_errors():
            try:
                hits = await search(normalize_identifier(user_id, "user_id"), q, limit=limit)
            except _SEARCH_UNAVAILABLE as exc:
                raise HTTPException(status.HTTP_501_NOT_IMPLEMENTED, str(exc)) from exc
        return SearchResults(
            hits=[
                SearchResult(
                    conversation_id=hit.conversation_id,
                    title=hit.title,
                    snippet=hit.snippet,
                    rank=hit.rank,
                    last_activity=hit.last_activity,
                )
                for hit in hits
                if hit.conversation_id is not None
            ]
        )

    @router.get(
        "/export",
        summary="Export all my conversations",
        response_class=StreamingResponse,
        responses={
            status.HTTP_200_OK: {
                "description": "A JSON document, or Markdown transcripts, as a download",
                "content": {"application/json": {}, "text/markdown": {}},
            }
        },
    )
    async def export_conversations(
        user_id: User,
        manager: Manager,
        format: Annotated[Literal["json", "markdown"], Query()] = "json",
    ) -> StreamingResponse:
        """Everything stored for me, expired conversations included, one at a time."""
        with _http_errors():
            user = normalize_identifier(user_id, "user_id")
        conversations = manager.export_user(user)
        if format == "markdown":

            async def markdown() -> AsyncIterator[str]:
                separator = ""
                async for conversation in conversations:
                    yield separator + conversation_markdown(conversation)
                    separator = "\n---\n\n"

            body, media_type, name = markdown(), "text/markdown; charset=utf-8", "md"
        else:
            exported_at = datetime.now(UTC)
            body = json_chunks(user, conversations, exported_at=exported_at)
            media_type, name = "application/json", "json"
        # The status is sent before the first conversation is read: a failure after that
        # cuts the download short (the JSON document is then incomplete, never wrong).
        return StreamingResponse(
            body,
            media_type=media_type,
            headers={"Content-Disposition": f'attachment; filename="conversations.{name}"'},
        )

    @router.delete("", summary="Delete all my conversations")
    async def delete_conversations(user_id: User, manager: Manager) -> DeletedConversations:
        """Every conversation of mine, with all its items; other users' are untouched."""
        with _http_errors():
            deleted = await manager.delete_user(normalize_identifier(user_id, "user_id"))
        return DeletedConversations(deleted=deleted)

    @router.get("/{conversation_id}", summary="Get one conversation", responses=_NOT_FOUND_RESPONSE)
    async def get_conversation(
        conversation_id: str, user_id: User, manager: Manager
    ) -> Conversation:
        """The conversation with its items, oldest first."""
        with _http_errors():
            user = normalize_identifier(user_id, "user_id")
            stats = await _owned(manager, user, conversation_id)
            items = await manager.get_items(stats.session_id)
        summary = _summary(stats, conversation_id)
        # JSON text must be UTF-8: a lone surrogate an item was stored with is replaced.
        return Conversation(**summary.model_dump(), items=utf8_safe(items))

    @router.patch(
        "/{conversation_id}", summary="Rename a conversation", responses=_NOT_FOUND_RESPONSE
    )
    async def update_conversation(
        conversation_id: str, update: ConversationUpdate, user_id: User, manager: Manager
    ) -> ConversationSummary:
        """Set the title and/or the metadata; answers the conversation as it is now."""
        fields = update.model_fields_set
        with _http_errors():
            # Both checked before either is written: a bad request changes nothing.
            title = validate_title(update.title)
            metadata = update.metadata or {}
            encode_metadata(metadata)
            user = normalize_identifier(user_id, "user_id")
            stats = await _owned(manager, user, conversation_id)
            if "title" in fields:
                await manager.set_title(stats.session_id, title)
            if "metadata" in fields:
                await manager.set_metadata(stats.session_id, metadata)
            if fields:
                stats = await manager.get_session_stats(stats.session_id)
        return _summary(stats, conversation_id)

    @router.delete(
        "/{conversation_id}",
        summary="Delete a conversation",
        status_code=status.HTTP_204_NO_CONTENT,
        response_class=Response,
        responses=_NOT_FOUND_RESPONSE,
    )
    async def delete_conversation(conversation_id: str, user_id: User, manager: Manager) -> None:
        """The conversation and all its items (an expired one is deleted too, but is a 404)."""
        with _http_errors():
            user = normalize_identifier(user_id, "user_id")
            stats = await _owned(manager, user, conversation_id, expired=True)
            await manager.clear_session(stats.session_id)
        if manager.has_expired(stats):
            _not_found()  # as everywhere else: it no longer existed for the user

    return router
