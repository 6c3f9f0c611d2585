"""A child process of tests/test_access.py's concurrency test: imports only inspection.access, so that spawning
it is quick."""

from __future__ import annotations

from inspection.access import AuditAction, AuditLog, Role


def append_many(path: str, worker: int, count: int) -> None:
    log = AuditLog(path)
    for index in range(count):
        log.append(AuditAction.SCAN_START, user=f"worker{worker}", role=Role.OPERATOR, details={"index": index})
