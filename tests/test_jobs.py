"""wait_for_job: a job's end comes from the memory actor's event; reads only guard against a lost one.

A stand-in memory actor answers ``mem.get_job`` from a table and publishes
``mem.results_complete`` when a test ends a job (or, to play an event lost to
ZeroMQ's late subscription, does not). Everything runs over mem:// under
trio's autojump clock, so the times asserted are exact.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from actors.jobs import wait_for_job
from protocol import Envelope, ErrorCode, NotFound
from protocol.memory import GetJob, Job, JobRecord, JobState, ResultsComplete
from runtime import Actor, RemoteError, Runtime, handles

from .stack import Running, mem_runtime, start_running


def record(job: str, state: JobState) -> JobRecord:
    return JobRecord(
        job=job,
        seq=1,
        state=state,
        reason="",
        priority=0,
        shots=100,
        device="chip",
        deadline=None,
        submitter="",
        submitted=0.0,
        updated=0.0,
        plan=None,
        calibration=None,
        frames=0,
        last_phase=None,
        results=0,
    )


class Memory(Actor):
    """Just enough of a memory actor: the jobs' states, their reads counted, their ends published."""

    def __init__(self, name: str, runtime: Runtime, jobs: dict[str, JobState]) -> None:
        super().__init__(name, runtime)
        self.jobs = jobs
        self.reads = 0

    @handles(GetJob)
    def _get_job(self, msg: GetJob, env: Envelope) -> Job:
        self.reads += 1
        if msg.job not in self.jobs:
            raise NotFound(f"no job {msg.job!r} in the store", field="job")
        return Job(record=record(msg.job, self.jobs[msg.job]))

    def end(self, job: str, state: JobState = "completed", *, publish: bool = True) -> None:
        self.jobs[job] = state
        if publish:
            self.publish(ResultsComplete(job=job, state=state, frames=1, results=1, partial=state != "completed"))


@dataclass
class Lab:
    client: Actor
    memory: Memory
    nursery: trio.Nursery
    make: Callable[[], Memory]
    running: Running[Memory] | None = None
    reads: int = 0
    """Reads answered by memory actors stopped since."""

    async def start_memory(self) -> None:
        self.memory = self.make()
        self.running = await start_running(self.nursery, self.memory)

    async def stop_memory(self) -> None:
        assert self.running is not None
        await self.running.stop()
        self.reads += self.memory.reads

    @property
    def all_reads(self) -> int:
        return self.reads + self.memory.reads

    def waiting(self, job: str) -> Waiter:
        """``wait_for_job`` for ``job``, begun in the background."""
        waiter = Waiter()

        async def wait() -> None:
            waiter.record = await wait_for_job(self.client, job)
            waiter.at = trio.current_time()
            waiter.ended.set()

        self.nursery.start_soon(wait)
        return waiter


@dataclass
class Waiter:
    ended: trio.Event = field(default_factory=trio.Event)
    record: Any = None
    at: float = 0.0


@asynccontextmanager
async def lab(jobs: dict[str, JobState]) -> AsyncIterator[Lab]:
    runtime = mem_runtime("memory", "me")
    client = Actor("me", runtime)
    async with trio.open_nursery() as nursery:
        bench = Lab(client, Memory("memory", runtime, jobs), nursery, lambda: Memory("memory", runtime, jobs))
        await bench.start_memory()
        await nursery.start(client.run)
        await client.wait_peer("memory")
        yield bench
        nursery.cancel_scope.cancel()


async def test_a_job_that_ended_already_is_returned_after_one_read(autojump_clock):
    async with lab({"j": "failed"}) as b:
        began = trio.current_time()
        assert (await wait_for_job(b.client, "j")).state == "failed"
        assert trio.current_time() == began
        assert b.memory.reads == 1


async def test_the_end_is_seen_at_its_event_between_the_guards_reads(autojump_clock):
    async with lab({"j": "running"}) as b:
        began = trio.current_time()
        done = b.waiting("j")
        await trio.sleep(10)  # the guard reads at 1, 3 and 7 s find it running
        b.memory.jobs["j"] = "interrupted"  # not an end: it resumes
        await trio.sleep(10)  # 15 s
        b.memory.end("j")
        with trio.fail_after(0.001):  # at once, not at the next guard read (31 s)
            await done.ended.wait()
        assert done.record.state == "completed"
        assert done.at - began == pytest.approx(20)
        assert b.memory.reads == 1 + 4 + 1  # the first, the guards at 1, 3, 7 and 15 s, and the event's


async def test_an_end_whose_event_was_lost_is_found_by_the_guard_at_1_2_4_s_doubling(autojump_clock):
    """The subscription race: the end is published before the memory actor hears of the subscription."""
    async with lab({"early": "running", "late": "planned"}) as b:
        began = trio.current_time()
        early, late = b.waiting("early"), b.waiting("late")
        await trio.sleep(0.2)
        b.memory.end("early", publish=False)
        await trio.sleep(4.8)
        b.memory.end("late", "cancelled", publish=False)
        with trio.fail_after(100):
            await late.ended.wait()
        assert early.record.state == "completed"
        assert early.at - began == pytest.approx(1.0)  # the first guard
        assert late.record.state == "cancelled"
        assert late.at - began == pytest.approx(7.0)  # reads at 1, 3, 7 s


async def test_the_guard_grows_to_30_s_and_no_further(autojump_clock):
    async with lab({"j": "running"}) as b:
        done = b.waiting("j")
        await trio.sleep(600)
        # reads at 0, 1, 3, 7, 15, 31, then every 30 s: 61, 91, ... 571
        assert b.memory.reads == 6 + (571 - 31) // 30
        b.memory.end("j")
        with trio.fail_after(0.001):
            await done.ended.wait()
        assert done.record.state == "completed"


async def test_a_memory_actor_restarting_while_the_job_ends_is_read_again_as_soon_as_it_is_back(autojump_clock):
    """The end committed while the memory actor was down (or just before it died): no event will ever say it."""
    async with lab({"j": "running"}) as b:
        began = trio.current_time()
        done = b.waiting("j")
        await trio.sleep(20)  # reads at 0, 1, 3, 7, 15 s; the next would be at 31
        await b.stop_memory()
        b.memory.jobs["j"] = "completed"
        await trio.sleep(5)
        await b.start_memory()
        with trio.fail_after(10):
            await done.ended.wait()
        assert done.record.state == "completed"
        assert 25 <= done.at - began < 26  # at its first heartbeat, not at the guard read at 31 s
        assert b.all_reads == 5 + 1


async def test_a_read_while_the_memory_actor_is_down_is_made_again_once_it_is_back(autojump_clock):
    async with lab({"j": "running"}) as b:
        began = trio.current_time()
        done = b.waiting("j")
        await trio.sleep(20)
        await b.stop_memory()
        b.memory.jobs["j"] = "completed"
        await trio.sleep(40)  # down over the guard read at 31 s, which waits for it or fails
        await b.start_memory()
        with trio.fail_after(40):
            await done.ended.wait()
        assert done.record.state == "completed"
        assert 60 <= done.at - began < 61


async def test_a_job_the_store_does_not_know_is_refused(autojump_clock):
    async with lab({}) as b:
        with pytest.raises(RemoteError) as refused:
            await wait_for_job(b.client, "nobody")
        assert refused.value.code == ErrorCode.NOT_FOUND
