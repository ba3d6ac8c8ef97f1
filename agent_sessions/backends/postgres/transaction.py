"""One transaction on one connection, its statements sent together in pipeline mode."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from . import sql

_OPEN = (TransactionStatus.INTRANS, TransactionStatus.INERROR)


@contextlib.asynccontextmanager
async def transaction(
    conn: psycopg.AsyncConnection[Any], statement_timeout: float, *, snapshot: bool = False
) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """Run the block in one transaction on an autocommit connection, in pipeline mode.

    ``BEGIN``, the statement timeout, the block's statements and ``COMMIT`` are queued and
    sent together: a block that reads no result before it ends takes one round trip. Reading
    a result inside the block sends what is queued and waits for it. On an error the
    transaction is rolled back before the connection goes back to its pool.

    Args:
        conn: An autocommit connection, not in a transaction.
        statement_timeout: Seconds each statement may run (lock waits included); 0: none.
        snapshot: Run at ``REPEATABLE READ``, so several reads see one snapshot.
    """
    try:
        async with conn.pipeline():
            await conn.execute(sql.BEGIN_SNAPSHOT if snapshot else sql.BEGIN)
            await conn.execute(
                sql.SET_STATEMENT_TIMEOUT, {"timeout": f"{round(statement_timeout * 1000)}ms"}
            )
            yield conn
            await conn.execute(sql.COMMIT)
    except BaseException:
        # An error inside the pipeline leaves the transaction failed (or, if the block raised,
        # open): end it here rather than hand the pool a connection in a transaction.
        if conn.info.transaction_status in _OPEN:
            with contextlib.suppress(psycopg.Error):
                await conn.rollback()
        raise
