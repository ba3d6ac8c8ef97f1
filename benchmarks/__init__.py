"""Benchmarks of agent_sessions against the Agents SDK's sessions and plain sqlite3.

Run from the repository root: ``python -m benchmarks [--quick] [--rounds N]
[--only WORKLOAD[,WORKLOAD]] [--out PATH]``. See ``benchmarks/__main__.py``.
"""
