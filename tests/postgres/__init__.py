"""Tests of the PostgreSQL backend, run directly against the server and through PgBouncer."""
