"""Waiting for a job to end: on the memory actor's events, not by polling.

A job has ended when the store holds it ``completed``, ``failed`` or
``cancelled`` (``interrupted`` is not an end: it resumes). The memory actor
publishes ``mem.results_complete`` once per job, after the transaction that
moved it to its final state committed, whoever ended it (docs/protocol.md,
"When a job has ended"). `wait_for_job` is the one way awen's own code waits
for that: the calibration actor for its sweeps, ``awen run``, the kill -9
campaign, benchmarks and tests.
"""

from __future__ import annotations

from typing import Any

import trio

from protocol import ErrorCode
from protocol.memory import TERMINAL_STATES, GetJob, JobRecord, ResultsComplete
from protocol.system import PeerUp
from runtime import Actor, PeerLostError, RemoteError, RequestTimeout

FIRST_GUARD_S = 1.0
"""The first wait after which the job is read again although no event named it."""
LONGEST_GUARD_S = 30.0
"""The guard's wait doubles up to this."""

_RESTART_EXPLAINS = {
    ErrorCode.ACTOR_STOPPED,
    ErrorCode.PEER_LOST,
    ErrorCode.NOT_READY,
    ErrorCode.TIMEOUT,
    ErrorCode.UNAVAILABLE,
}
"""Answers to ``mem.get_job`` that a restarting memory actor gives: read again once it is back."""


async def wait_for_job(actor: Actor, job: str, *, memory: str = "memory") -> JobRecord:
    """Until ``job`` has ended in the store; its record (``state`` completed, failed or cancelled).

    It subscribes first, to ``mem.results_complete`` (the memory actor's word
    that a job ended, sent after the end committed) and to ``peer.up`` of the
    memory actor (a restarted memory actor cannot publish an end its
    predecessor committed and then died, and a read that failed while it was
    down is worth another try once it is back); then reads the job
    (``mem.get_job``), in case it ended before anyone listened. It returns at
    once if the job has ended, else waits for an event that names the job, or
    the memory actor's return, and reads again.

    ZeroMQ subscriptions take effect asynchronously: an end published in the
    moment between the read and the memory actor learning of the
    subscription is never delivered, and there is no sign of when a
    subscription took effect. So, with no event, the job is read again after
    a guard time, 1 s doubling to 30 s, and 1 s again after the memory actor
    restarts. This is not a polling loop: the wait ends at the event, which
    normally comes within a message's time of the end; the guard only bounds
    what a lost event can cost, so it need not be short, and it grows so that
    a long job costs a read every 30 s, not one every tenth of a second.

    Args:
        actor: The actor (or client, or supervisor) that waits; it must be running.
        job: The job's id; it must be in the store (accepted) already.
        memory: The memory actor's name.

    Raises:
        RemoteError: the memory actor refused the read for a reason its restart
            does not explain (``not-found``: no such job in the store).

    The caller owns the timeout (``with trio.fail_after(...)``); without one it
    waits as long as the job takes.
    """
    news = trio.Event()
    guard = FIRST_GUARD_S

    def on_event(body: Any, _env: Any) -> None:
        nonlocal guard
        if isinstance(body, ResultsComplete) and body.job == job:
            news.set()
        elif isinstance(body, PeerUp) and body.peer == memory:
            guard = FIRST_GUARD_S  # its subscriptions are new again
            news.set()

    actor.subscribe(ResultsComplete.TYPE, on_event)
    actor.subscribe(PeerUp.TYPE, on_event)
    try:
        while True:
            news = trio.Event()  # before the read: an event during it is not lost
            record = await _read(actor, memory, job)
            if record is not None and record.state in TERMINAL_STATES:
                return record
            with trio.move_on_after(guard) as waited:
                await news.wait()
            if waited.cancelled_caught:
                guard = min(2 * guard, LONGEST_GUARD_S)
    finally:
        actor.unsubscribe(on_event)


async def _read(actor: Actor, memory: str, job: str) -> JobRecord | None:
    """The job's record; None if the memory actor cannot answer now (it is restarting)."""
    try:
        reply = await actor.request(memory, GetJob(job=job))
    except (PeerLostError, RequestTimeout):
        return None
    except RemoteError as exc:
        if exc.code in _RESTART_EXPLAINS:
            return None
        raise
    return reply.record
