"""The PostgreSQL suite: ``python -m benchmarks --postgres URL [--quick] [--only ...]``.

``PostgresSession`` (``agent``) against the SDK's ``SQLAlchemySession`` (``sdk_sqlalchemy``)
on one server, in a database of its own created for the run and dropped after it. See
``suite`` for the workloads and ``targets`` for what they are checked against.
"""
