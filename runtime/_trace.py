"""The trace and the job of what a task is doing now: set by the mailbox, stamped on what it sends, logged.

A client's request starts a trace: its own envelope id. Every message an
actor sends while handling a message carries that message's trace (the
envelope's ``trace``), so one client request links every message it caused,
in every process (decision 0015 §3). The mailbox and the event subscribers set
`current_trace` for each handler they run, and `current_job` to its body's
``job`` field when it has one; `Requests` and `Events` stamp the trace on
what goes out, and the log's filter adds both to each record.

Trio copies the context into a task when it is started, so a task that a
handler starts keeps its trace; one started from ``setup`` has none.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

current_trace: ContextVar[int | None] = ContextVar("awen_trace", default=None)
"""The trace of the message being handled: the id of the client request it descends from."""

current_job: ContextVar[str | None] = ContextVar("awen_job", default=None)
"""The job the message being handled is about (its body's ``job``), if any."""


def job_of(body: Any) -> str | None:
    """A body's ``job`` field, if it has one that is a job id."""
    job = getattr(body, "job", None)
    return job if isinstance(job, str) else None


@contextmanager
def traced(trace: int | None, job: str | None = None) -> Iterator[None]:
    """Within the block, what is sent carries ``trace`` and what is logged names ``job`` (and ``trace``).

    For work that is not a handler but belongs to one request: a job's run,
    which the executor was handed in reply to a request of its own.
    """
    trace_token = current_trace.set(trace)
    job_token = current_job.set(job)
    try:
        yield
    finally:
        current_job.reset(job_token)
        current_trace.reset(trace_token)
