"""A small app around ``conversations_router`` for the router tests (``X-User`` for auth)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
from fastapi import FastAPI, Header, HTTPException

from agent_sessions.fastapi import conversations_router


def current_user(x_user: Annotated[str | None, Header()] = None) -> str:
    if not x_user:
        raise HTTPException(status_code=401, detail="the X-User header is required")
    return x_user


def make_app(manager: Any = None, **options: Any) -> FastAPI:
    """An app with only the router, using ``manager`` (the router's own one if ``None``)."""
    app = FastAPI()
    app.include_router(conversations_router(current_user, manager=manager, **options))
    return app


@asynccontextmanager
async def client_for(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to ``app`` in process, inside the app's lifespan."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client


def as_user(user: str) -> dict[str, str]:
    return {"X-User": user}
