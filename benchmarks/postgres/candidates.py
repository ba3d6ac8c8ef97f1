"""The PostgreSQL candidates, behind one async interface: a ``Store`` per event loop.

A ``Store`` is made inside the event loop a block runs in (connections belong to a loop) and
opens session objects the way an app does per request. The benchmarks call the candidates'
own ``get_items`` and ``add_items``; no adapter sits in the timed path.

* ``agent``: ``PostgresSession(user, conversation, database_url=url, max_messages=200)``. Every
  session of the process shares the library's pool (settings' defaults: 1 to 10
  connections, no server-side prepared statements); ``close()`` only marks the object closed.
* ``sdk_sqlalchemy``: ``SQLAlchemySession(session_id, engine=engine)`` on ONE
  ``create_async_engine("postgresql+psycopg://...")`` shared by every session of the process:
  SQLAlchemy's defaults (a ``QueuePool`` of 5 plus 10 overflow connections, and psycopg's own
  default of preparing a statement on the server after 5 executions), and
  ``create_tables=False`` as the SDK advises for production (the tables are created once,
  before any measurement). It has no ``close``; nothing is released per session.
* ``sdk_sqlalchemy_from_url`` (``open_per_request`` only): ``SQLAlchemySession.from_url(...)``,
  which builds an engine (a pool, so a new server connection) for every object; closing the
  session is ``await session.engine.dispose()``, without which its connection stays open until
  garbage collection.
"""

from __future__ import annotations

from typing import Any

from agent_sessions.ids import get_session_id

from .server import sqlalchemy_url

MAX_MESSAGES = 200
AGENT = "agent"
SDK = "sdk_sqlalchemy"
SDK_FROM_URL = "sdk_sqlalchemy_from_url"
PAIR = (AGENT, SDK)
ALL = (AGENT, SDK, SDK_FROM_URL)

DESCRIPTIONS = {
    AGENT: f"agent_sessions PostgresSession(max_messages={MAX_MESSAGES}), the library's shared "
    "psycopg pool (default 1-10 connections, no server-side prepared statements)",
    SDK: "agents.extensions.memory.SQLAlchemySession(session_id, engine=ONE shared "
    "AsyncEngine('postgresql+psycopg://...')), SQLAlchemy's default pool (5 + 10 overflow), "
    "create_tables=False (tables made before measuring); never prunes",
    SDK_FROM_URL: "SQLAlchemySession.from_url(session_id, url='postgresql+psycopg://...'): an "
    "engine (and server connection) per object, closed with engine.dispose() "
    "(open_per_request only)",
}


class Store:
    """Opens sessions of one candidate on one database, in the running event loop."""

    def __init__(self, candidate: str, url: str) -> None:
        if candidate not in ALL:
            raise ValueError(f"unknown candidate {candidate!r}; choose from {', '.join(ALL)}")
        self.candidate = candidate
        self.url = url
        self.engine: Any = None

    async def start(self) -> None:
        if self.candidate == SDK:
            from sqlalchemy.ext.asyncio import create_async_engine

            self.engine = create_async_engine(sqlalchemy_url(self.url))

    def open(self, user_id: str, conversation_id: str) -> Any:
        """Create the candidate's session object (what an app does per request)."""
        if self.candidate == AGENT:
            from agent_sessions.session import PostgresSession

            return PostgresSession(
                user_id, conversation_id, database_url=self.url, max_messages=MAX_MESSAGES
            )
        from agents.extensions.memory import SQLAlchemySession

        session_id = get_session_id(user_id, conversation_id)
        if self.candidate == SDK:
            return SQLAlchemySession(session_id, engine=self.engine)
        return SQLAlchemySession.from_url(session_id, url=sqlalchemy_url(self.url))

    async def close_session(self, session: Any) -> None:
        if self.candidate == AGENT:
            session.close()
        elif self.candidate == SDK_FROM_URL:
            await session.engine.dispose()
        # SDK: SQLAlchemySession has no close; its connections belong to the shared engine.

    async def close(self) -> None:
        """Release the process's connections: the library's pools, or the shared engine."""
        if self.candidate == AGENT:
            from agent_sessions.backends.postgres import close_pools

            await close_pools()
        elif self.engine is not None:
            await self.engine.dispose()
            self.engine = None

    def pool_description(self) -> str:
        if self.candidate == AGENT:
            from agent_sessions import get_settings

            settings = get_settings()
            return f"psycopg_pool {settings.pool_min_size}-{settings.pool_max_size}"
        if self.engine is not None:
            pool = self.engine.pool
            return f"{type(pool).__name__} size {pool.size()} + overflow {pool._max_overflow}"
        return "an engine per session"


async def create_tables(url: str) -> None:
    """Create both candidates' tables, the way each does it, before anything is measured."""
    from agents.extensions.memory import SQLAlchemySession
    from sqlalchemy.ext.asyncio import create_async_engine

    from agent_sessions.backends.postgres import close_pools
    from agent_sessions.session import PostgresSession

    agent = PostgresSession("bench-init", "conv-1", database_url=url)
    await agent.get_items()  # creates (migrates) the schema on first use
    agent.close()
    await close_pools()
    engine = create_async_engine(sqlalchemy_url(url))
    try:
        await SQLAlchemySession("bench-init", engine=engine, create_tables=True).get_items()
    finally:
        await engine.dispose()
