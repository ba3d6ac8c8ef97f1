"""A chat endpoint with per-(user, conversation) memory, scheduled cleanup, and the
conversations API (``agent_sessions.fastapi.conversations_router``) under ``/conversations``.

Install the extra and run it::

    pip install -e '.[fastapi]'
    uvicorn examples.fastapi_app:app --workers 2

Then ``curl -X POST localhost:8000/chat -H 'content-type: application/json'
-d '{"user_id": "ada", "conversation_id": "c1", "message": "hello"}'``, and
``curl localhost:8000/conversations -H 'X-User: ada'`` lists ada's conversations (the
``X-User`` header stands in for real authentication; without it the API answers 401).

``/chat`` and ``/users/{user_id}/sessions`` take the user id from the request itself, to keep
the demo to one ``curl``: they are not authenticated, and an app must not ship them so. Take
the user from your authentication, as the ``/conversations`` routes do (``current_user``).

Without ``OPENAI_API_KEY`` the agent runs on ``EchoModel``, which echoes the message, so
the app works offline. Several workers may share one database file: each one
opens its sessions on it, and each runs the cleanup job (a second run finds nothing left).
Requests for one conversation take turns (``AgentSession.turn_lock``), in any worker.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Request
from pydantic import BaseModel, Field

if not os.environ.get("OPENAI_API_KEY"):
    os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")

from agents import Agent, Model, ModelResponse, Runner, Usage
from agents.items import TResponseInputItem, TResponseStreamEvent
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseTextDeltaEvent,
)

from agent_sessions import (
    InvalidIdentifierError,
    SessionManager,
    TurnLockTimeoutError,
    get_agent_session,
    get_settings,
    start_cleanup_scheduler,
)
from agent_sessions.fastapi import conversations_router


class EchoModel(Model):
    """Offline stand-in for a real model: replies by echoing the newest user message.

    It implements the SDK's ``Model`` interface directly and keeps nothing per call, so a
    worker's memory stays flat however many requests it serves. (The SDK's ``ScriptedModel``
    is made for tests: it keeps a deep copy of every call's input in ``.calls``.)
    """

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],  # the Runner passes it by this name
        *args: Any,
        **kwargs: Any,
    ) -> ModelResponse:
        message = _assistant_message(_echo(input))
        return ModelResponse(output=[message], usage=Usage(requests=1), response_id=None)

    async def stream_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        *args: Any,
        **kwargs: Any,
    ) -> AsyncIterator[TResponseStreamEvent]:
        text = _echo(input)
        message = _assistant_message(text)
        yield ResponseTextDeltaEvent(
            type="response.output_text.delta",
            item_id=message.id,
            output_index=0,
            content_index=0,
            delta=text,
            logprobs=[],
            sequence_number=0,
        )
        yield ResponseOutputItemDoneEvent(
            type="response.output_item.done", item=message, output_index=0, sequence_number=1
        )
        response = Response(
            id="echo",
            created_at=0,
            model="echo",
            object="response",
            output=[message],
            tool_choice="none",
            tools=[],
            parallel_tool_calls=False,
            status="completed",
        )
        yield ResponseCompletedEvent(
            type="response.completed", response=response, sequence_number=2
        )


def _echo(input: str | list[TResponseInputItem]) -> str:
    items: Sequence[Any] = [{"role": "user", "content": input}] if isinstance(input, str) else input
    users = [item for item in items if isinstance(item, dict) and item.get("role") == "user"]
    text = users[-1].get("content") if users else ""
    return f"You said: {text} ({len(items)} items of context)"


def _assistant_message(text: str) -> ResponseOutputMessage:
    return ResponseOutputMessage(
        id=f"msg_{uuid.uuid4().hex}",
        type="message",
        role="assistant",
        status="completed",
        content=[ResponseOutputText(type="output_text", text=text, annotations=[], logprobs=[])],
    )


def build_agent() -> Agent:
    """The app's agent: the real default model with an API key, an echo model without."""
    if os.environ.get("OPENAI_API_KEY"):
        return Agent(name="Assistant", instructions="Be brief.")
    return Agent(name="Assistant", instructions="Be brief.", model=EchoModel())


TURN_WAIT_SECONDS = 120
"""How long a request waits while another run of its conversation finishes (then 409)."""


class ChatRequest(BaseModel):
    user_id: str = Field(min_length=1, max_length=128)
    conversation_id: str = Field(min_length=1, max_length=128)
    message: str = Field(min_length=1)


class ChatResponse(BaseModel):
    reply: str
    session_id: str
    history_items: int


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    manager = SessionManager(settings=settings)
    scheduler = start_cleanup_scheduler(manager, settings=settings)
    app.state.agent = build_agent()
    app.state.manager = manager
    app.state.scheduler = scheduler
    try:
        yield
    finally:
        scheduler.shutdown(wait=False)
        await manager.close()


app = FastAPI(title="agent_sessions chat example", lifespan=lifespan)


def current_user(x_user: Annotated[str | None, Header()] = None) -> str:
    """Stand-in for real authentication: the user id from the ``X-User`` header."""
    if not x_user:
        raise HTTPException(status_code=401, detail="the X-User header is required")
    return x_user


def session_manager(request: Request) -> SessionManager:
    """The app's one manager (made in the lifespan), shared with the conversations API."""
    manager: SessionManager = request.app.state.manager
    return manager


app.include_router(conversations_router(current_user, manager=session_manager))


@app.post("/chat")
async def chat(request: ChatRequest) -> ChatResponse:
    """One chat turn. Demo only: the user id comes from the body, not from authentication."""
    try:
        session = get_agent_session(request.user_id, request.conversation_id)
    except InvalidIdentifierError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    with session:
        try:
            # One run at a time per conversation, across workers: two runs at once would
            # store their items interleaved (user, user, reply, reply).
            async with session.turn_lock(timeout=TURN_WAIT_SECONDS):
                result = await Runner.run(app.state.agent, request.message, session=session)
                items = len(await session.get_items())
        except TurnLockTimeoutError as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from exc
    return ChatResponse(
        reply=str(result.final_output), session_id=session.session_id, history_items=items
    )


@app.get("/users/{user_id}/sessions")
async def user_sessions(user_id: str) -> list[dict[str, Any]]:
    """Any user's sessions. Demo only (an operator's view): guard it in a real app."""
    try:
        sessions = await app.state.manager.list_sessions(user_id)
    except InvalidIdentifierError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    return [stats.model_dump(mode="json") for stats in sessions]
