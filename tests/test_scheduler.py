"""The scheduler actor: a queue that plans ahead, dispatches in order, preempts at phase boundaries, loses nothing."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors.calibration import sweep_plan
from actors.hal import HalActor
from actors.memory import MemoryActor
from actors.scheduler import SchedulerActor
from actors.scheduler._queue import ACCEPTING_SEQ, JobEvent, JobPhase, QueuedJob
from protocol import IllegalTransition
from protocol.circuit import CircuitBuilder
from protocol.hal import Describe, InterlockReset, InterlockTripped
from protocol.memory import Allocate, Free, GetJob, GetPlan, PutCalibration, QueryJobs, SetJobState
from protocol.scheduler import (
    Cancel,
    Checkpoint,
    GetQueue,
    JobFinished,
    NextJob,
    Pause,
    ReportHealth,
    Resume,
    SetStrategy,
    StrategyConfig,
    Submit,
    SubmitProcedure,
    Suspend,
    Unsuspend,
    Validate,
)
from runtime import Actor, RemoteError

from .circuits import hom, two_rounds
from .helpers import eventually
from .stack import mem_runtime


@dataclass
class Lab:
    scheduler: SchedulerActor
    client: Actor
    data_dir: Path

    async def ask(self, to: str, request: Any) -> Any:
        with trio.fail_after(30):
            return await self.client.request(to, request)

    async def sched(self, request: Any) -> Any:
        return await self.ask("scheduler", request)

    async def state(self, job: str) -> str:
        return (await self.ask("memory", GetJob(job=job))).record.state

    async def is_state(self, job: str, state: str) -> bool:
        return await self.state(job) == state

    async def take(self, wait_s: float = 10) -> Any:
        """Ask for work as the executor does: a job it gets, it records as running with its allocation."""
        assignment = await self.sched(NextJob(executor="exec", wait_s=wait_s))
        if assignment.job is not None:
            allocate = Allocate(
                job=assignment.job,
                slots=[],
                device="chip",
                plan=assignment.plan.id,
                calibration=assignment.plan.calibration,
                mark_running="on exec",
                accepting=assignment.accepting,
            )
            await self.ask("memory", allocate)
            await self.ask("memory", Free(job=assignment.job))
        return assignment

    async def finish(self, job: str, state: str, reason: str = "") -> None:
        """End a job as the executor does: store how it ended, then tell the scheduler."""
        await self.ask("memory", SetJobState(job=job, state=state, reason=reason))
        await self.sched(JobFinished(job=job, state=state, reason=reason))

    async def suspended(self) -> dict[str, str]:
        return (await self.sched(GetQueue())).suspended

    async def wait_planned(self, *jobs: str) -> None:
        async def planned() -> bool:
            queue = await self.sched(GetQueue())
            return set(jobs) <= {e.job for e in queue.jobs if e.planned}

        await eventually(planned)


@asynccontextmanager
async def lab(tmp_path: Path, **config: Any) -> AsyncIterator[Lab]:
    runtime = mem_runtime("memory", "hal", "scheduler", "exec")
    memory = MemoryActor("memory", runtime, data_dir=str(tmp_path / "data"), synchronous="normal")
    hal = HalActor("hal", runtime, devices=[{"name": "chip", "url": "sim://?seed=1&modes=8", "watchdog_s": 0}])
    scheduler = SchedulerActor("scheduler", runtime, deadline_check_s=0.05, **config)
    client = Actor("exec", runtime)
    async with trio.open_nursery() as nursery:
        for actor in (memory, hal, scheduler, client):
            await nursery.start(actor.run)
        with trio.fail_after(30):
            await scheduler._ready.wait()
        yield Lab(scheduler, client, tmp_path / "data")
        nursery.cancel_scope.cancel()


async def test_a_submitted_job_is_stored_before_it_is_acknowledged_planned_and_dispatched(
    tmp_path, autojump_clock_for_threads
):
    async with lab(tmp_path) as lab_, lab_.client.open_event_stream("sched.") as events:
        accepted = await lab_.sched(Submit(circuit=hom(), job="hom-1"))
        assert (accepted.job, accepted.created, accepted.position) == ("hom-1", True, 0)
        assert await lab_.state("hom-1") in ("queued", "planned")  # in the store when acknowledged
        assignment = await lab_.take(10)
        assert assignment.job == "hom-1"
        assert assignment.start_phase == 0
        plan = assignment.plan
        assert plan.phases
        assert plan.identity.startswith("Photonica,")
        stored = await lab_.ask("memory", GetPlan(plan=plan.id))
        assert stored.body == plan
        await eventually(lambda: lab_.is_state("hom-1", "running"))
        while_running = await lab_.sched(Submit(circuit=hom(), job="hom-1"))
        assert (while_running.created, while_running.position) == (False, 0)  # recognised, not run twice
        assert (await lab_.sched(Checkpoint(job="hom-1", phase=0, duration_s=0.01))).action == "continue"
        await lab_.finish("hom-1", "completed")
        assert await lab_.state("hom-1") == "completed"
        again = await lab_.sched(Submit(circuit=hom(), job="hom-1"))
        assert not again.created  # a repeated submission is recognised, not run twice
        assert (await lab_.take(0.2)).job is None
        seen = []
        with trio.move_on_after(1):
            async for event in events:
                seen.append(event.type)
        assert seen[:2] == ["sched.job_planned", "sched.job_dispatched"]


async def test_a_job_with_its_plan_at_hand_goes_to_a_waiting_executor_while_it_is_stored(
    tmp_path, autojump_clock_for_threads
):
    async with lab(tmp_path) as lab_:
        await lab_.sched(Submit(circuit=hom(), job="first"))
        assert (await lab_.take()).job == "first"  # planned by the planner: its plan is stored and cached
        await lab_.finish("first", "completed")

        async def submitted_while_an_executor_waits(job: str) -> tuple[Any, Any]:
            got: list[Any] = []

            async def executor() -> None:
                got.append(await lab_.sched(NextJob(executor="exec", wait_s=10)))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(executor)
                await trio.testing.wait_all_tasks_blocked()
                accepted = await lab_.sched(Submit(circuit=hom(), job=job))
            return accepted, got[0]

        accepted, assignment = await submitted_while_an_executor_waits("second")
        assert (accepted.created, assignment.job, assignment.accepting, assignment.fresh) == (
            True,
            "second",
            True,
            True,
        )
        allocate = Allocate(job="second", slots=[], device="chip", mark_running="on exec", accepting=True)
        await lab_.ask("memory", allocate)
        await eventually(lambda: lab_.is_state("second", "running"))  # written behind the allocation
        await lab_.finish("second", "completed")

        # The same job again, once it has ended: it is handed out before the store recognises it, but the
        # executor's allocation is refused, and the job stays as it ended.
        again, assignment = await submitted_while_an_executor_waits("second")
        assert (again.created, assignment.job) == (False, "second")
        with pytest.raises(RemoteError, match=r"job 'second' is completed: it is not run \(again\)"):
            await lab_.ask("memory", allocate)
        assert await lab_.state("second") == "completed"
        queue = await lab_.sched(GetQueue())
        assert (queue.running, queue.jobs) == (None, [])


async def test_a_running_job_is_claimed_by_the_executor_it_went_to(tmp_path, autojump_clock_for_threads):
    # Executors asking at once: one gets the job; the others wait, and are not handed the same job while it
    # runs. Only the executor that holds it gets it again (it asks for work, so it lost what it ran).
    async with lab(tmp_path) as lab_:
        await lab_.sched(Submit(circuit=hom(), job="only"))
        await lab_.wait_planned("only")
        got: dict[str, Any] = {}

        async def executor(name: str) -> None:
            got[name] = (await lab_.sched(NextJob(executor=name, wait_s=0.5))).job

        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(executor, f"exec-{i}")
        holders = [name for name, job in got.items() if job == "only"]
        assert len(holders) == 1, got
        assert set(got.values()) == {"only", None}
        (holder,) = holders
        assert (await lab_.sched(NextJob(executor=holder, wait_s=0.2))).job == "only"  # offered again to it
        other = next(name for name in got if name != holder)
        assert (await lab_.sched(NextJob(executor=other, wait_s=0.2))).job is None
        await lab_.ask("memory", Allocate(job="only", slots=[], device="chip", mark_running=f"on {holder}"))
        await eventually(lambda: lab_.is_state("only", "running"))
        await lab_.finish("only", "completed")
        assert (await lab_.sched(NextJob(executor=other, wait_s=0.2))).job is None  # ended: nobody gets it


async def test_an_invalid_circuit_is_refused_with_every_problem_and_nothing_is_stored(
    tmp_path, autojump_clock_for_threads
):
    bad = CircuitBuilder(2).input(0).bs(0, 1).store(1, "m").measure([0], "c").build()
    async with lab(tmp_path) as lab_:
        with pytest.raises(RemoteError, match=r"op 2 \(line\): delay line 'm' is never loaded.*\[invalid-circuit\]"):
            await lab_.sched(Submit(circuit=bad, job="bad"))
        with pytest.raises(RemoteError, match="no job 'bad'"):
            await lab_.ask("memory", GetJob(job="bad"))
        report = await lab_.sched(Validate(circuit=bad))
        assert not report.ok
        assert [(p.op, p.field) for p in report.problems] == [("2", "line")]
        good = await lab_.sched(Validate(circuit=hom()))
        assert good.ok
        assert good.metrics.phases == 1


async def test_priorities_first_then_submission_order_and_cancel(tmp_path, autojump_clock_for_threads):
    async with lab(tmp_path) as lab_:
        await lab_.sched(Pause(reason="loading the queue"))
        for job, priority in [("low-1", 0), ("high-1", 5), ("low-2", 0), ("high-2", 5), ("doomed", 9)]:
            await lab_.sched(Submit(circuit=hom(100 + priority, priority=priority), job=job))
        await lab_.sched(Cancel(job="doomed", reason="changed my mind"))
        assert await lab_.state("doomed") == "cancelled"
        await lab_.wait_planned("low-1", "high-1", "low-2", "high-2")
        assert (await lab_.take(0.1)).job is None  # paused
        await lab_.sched(Resume())
        order = []
        for _ in range(4):
            job = (await lab_.take(10)).job
            order.append(job)
            await lab_.finish(job, "completed")
        assert order == ["high-1", "high-2", "low-1", "low-2"]
        await lab_.sched(Cancel(job="low-1"))  # it has ended: a cancel is ok, and changes nothing
        assert await lab_.state("low-1") == "completed"


async def test_a_higher_priority_job_preempts_at_the_next_phase_boundary_and_the_other_resumes(
    tmp_path, autojump_clock_for_threads
):
    async with lab(tmp_path) as lab_:
        await lab_.sched(Submit(circuit=two_rounds(priority=0), job="long"))
        first = await lab_.take(10)
        assert first.job == "long"
        assert len(first.plan.phases) == 2
        await lab_.sched(Submit(circuit=hom(priority=10), job="urgent"))
        await lab_.wait_planned("urgent")
        proceed = await lab_.sched(Checkpoint(job="long", phase=0, duration_s=0.01))
        assert proceed.action == "preempt"
        assert "preempted by urgent" in proceed.reason
        record = (await lab_.ask("memory", GetJob(job="long"))).record
        assert record.state == "planned"
        assert "resumes at phase 1" in record.reason
        urgent = await lab_.take(10)
        assert urgent.job == "urgent"
        await lab_.finish("urgent", "completed")
        resumed = await lab_.take(10)
        assert (resumed.job, resumed.start_phase) == ("long", 1)


async def test_cancel_of_a_running_job_reaches_the_executor_at_its_next_phase_boundary(
    tmp_path, autojump_clock_for_threads
):
    async with lab(tmp_path) as lab_:
        await lab_.sched(Submit(circuit=two_rounds(), job="j"))
        await lab_.take(10)
        await lab_.sched(Cancel(job="j", reason="wrong sample"))
        proceed = await lab_.sched(Checkpoint(job="j", phase=0))
        assert (proceed.action, proceed.reason) == ("cancel", "wrong sample")
        await lab_.finish("j", "cancelled", "wrong sample")
        assert await lab_.state("j") == "cancelled"


@pytest.mark.parametrize(
    ("shots", "deadline_in_s", "why"),
    [
        (1000, -1.0, "its deadline passed"),
        (10_000_000, 6.0, "it cannot meet its deadline: it needs 12 s"),  # 10^7 shots take 12 s
    ],
)
async def test_a_job_that_cannot_meet_its_deadline_is_failed_with_the_reason(
    tmp_path, autojump_clock_for_threads, shots, deadline_in_s, why
):
    # Deadlines are wall-clock times: each is far enough either way to be missed whatever the clock says.
    async with lab(tmp_path) as lab_:
        await lab_.sched(Pause())
        await lab_.sched(Submit(circuit=hom(shots=shots, deadline=time.time() + deadline_in_s), job="late"))
        await eventually(lambda: lab_.is_state("late", "failed"))
        record = (await lab_.ask("memory", GetJob(job="late"))).record
        assert why in record.reason


async def test_suspenders_stop_dispatch_and_release_it_when_they_clear(tmp_path, autojump_clock_for_threads):
    async with lab(tmp_path) as lab_:
        lab_.client.publish(InterlockTripped(device="chip", reason="power over the limit"))
        await eventually(lambda: lab_.suspended())
        await lab_.sched(Suspend(condition="calibration:chip", reason="calibration expired"))
        await lab_.sched(Submit(circuit=hom(), job="waits"))
        await lab_.wait_planned("waits")
        assert (await lab_.take(0.2)).job is None
        queue = await lab_.sched(GetQueue())
        assert set(queue.suspended) == {"interlock:chip", "calibration:chip"}
        lab_.client.publish(InterlockReset(device="chip"))
        await lab_.sched(Unsuspend(condition="calibration:chip"))
        assert (await lab_.take(10)).job == "waits"


async def test_resubmitting_the_same_circuit_uses_the_plan_cache(tmp_path, autojump_clock_for_threads):
    async with lab(tmp_path) as lab_:
        for i in range(3):
            await lab_.sched(Submit(circuit=hom(), job=f"same-{i}"))
        await lab_.wait_planned("same-0", "same-1", "same-2")
        queue = await lab_.sched(GetQueue())
        assert (queue.plans_compiled, queue.plan_cache_hits) == (1, 2)


async def test_the_strategy_is_changed_at_run_time_and_used_for_the_next_plan(tmp_path, autojump_clock_for_threads):
    async with lab(tmp_path) as lab_:
        await lab_.sched(Submit(circuit=hom(), job="before"))
        await lab_.wait_planned("before")
        await lab_.sched(SetStrategy(strategy=StrategyConfig(kind="dynamic", objectives=["max_slack"])))
        assert lab_.scheduler.strategy.kind == "dynamic"
        await lab_.sched(Submit(circuit=hom(shots=7), job="after"))
        await lab_.wait_planned("after")
        assert (await lab_.sched(GetQueue())).plans_compiled == 2


async def test_a_queued_procedure_keeps_its_plan_when_the_device_reports_new_health(
    tmp_path, autojump_clock_for_threads
):
    """A procedure has no circuit to plan again: news of the device's health must not leave it without a plan."""
    async with lab(tmp_path) as lab_:
        description = (await lab_.ask("hal", Describe(device="chip"))).description
        limits = [1.0] * description.heaters.count
        plan = sweep_plan("cal-1", description, limits, points=2, power_w=1e-3, device="chip")
        await lab_.sched(Pause(reason="queueing"))
        await lab_.sched(SubmitProcedure(job="cal-1", plan=plan))
        await lab_.sched(Submit(circuit=hom(), job="after"))
        await lab_.sched(ReportHealth(device="chip", modes=[7]))
        await lab_.sched(Resume())
        first = await lab_.take()
        assert (first.job, first.plan.id) == ("cal-1", plan.id)
        await lab_.finish("cal-1", "completed")
        assert (await lab_.take()).job == "after"  # the queue goes on behind it


async def test_a_plan_with_a_phase_longer_than_allowed_is_refused_with_the_reason(tmp_path, autojump_clock_for_threads):
    strategy = {"max_phase_s": 0.5, "max_wait_s": 10}
    async with lab(tmp_path, strategy=strategy) as lab_:
        await lab_.sched(Submit(circuit=hom(shots=2_000_000), job="huge"))
        await eventually(lambda: lab_.is_state("huge", "failed"))
        record = (await lab_.ask("memory", GetJob(job="huge"))).record
        assert "max_phase_s is 0.5 s" in record.reason


async def test_the_pause_survives_a_restart_and_the_queue_comes_back_in_order(tmp_path, autojump_clock_for_threads):
    async with lab(tmp_path) as lab_:
        await lab_.sched(Pause(reason="night"))
        for job, priority in [("a", 0), ("b", 3), ("c", 0)]:
            await lab_.sched(Submit(circuit=hom(10 + len(job), priority=priority), job=job))
        await lab_.wait_planned("a", "b", "c")
    async with lab(tmp_path) as lab_:
        queue = await lab_.sched(GetQueue())
        assert queue.paused
        assert [e.job for e in queue.jobs] == ["b", "a", "c"]
        await lab_.wait_planned("a", "b", "c")
        await lab_.sched(Resume())
        assert (await lab_.take(10)).job == "b"


async def test_a_stored_job_that_cannot_be_read_back_is_failed_and_the_rest_of_the_queue_comes_back(
    tmp_path, autojump_clock_for_threads
):
    async with lab(tmp_path) as lab_:
        await lab_.sched(Pause(reason="night"))
        for job in ("a", "b"):
            await lab_.sched(Submit(circuit=hom(), job=job))
        await lab_.wait_planned("a", "b")
    with sqlite3.connect(tmp_path / "data" / "store.sqlite3") as db:  # what a disk, or a hand, may do to a store
        db.execute("UPDATE jobs SET circuit = ? WHERE id = 'a'", (b"\xc1 not msgpack",))
    async with lab(tmp_path) as lab_:
        assert [e.job for e in (await lab_.sched(GetQueue())).jobs] == ["b"]
        (a,) = (await lab_.ask("memory", QueryJobs(states=["failed"]))).jobs
        assert a.job == "a"
        assert "cannot be read" in a.reason
        await lab_.sched(Resume())
        assert (await lab_.take(10)).job == "b"


async def test_large_circuits_are_planned_in_a_worker_process(tmp_path):  # in real time: a process plans
    big = CircuitBuilder(8, shots=10)
    for q in range(8):
        big.input(q)
    for layer in range(300):
        for q in range(layer % 2, 7, 2):
            big.bs(q, q + 1, theta=0.1 * layer)
    big.measure(list(range(8)), "c")
    async with lab(tmp_path, process_threshold_ops=100, plan_workers=1) as lab_:
        await lab_.sched(Submit(circuit=big.build(), job="big"))
        await lab_.wait_planned("big")
        assert lab_.scheduler.plans._pool is not None
        workers = list(lab_.scheduler.plans._pool._processes.values())
        assert workers
        assert all(w.pid != 0 for w in workers)
    assert all(not w.is_alive() for w in workers)  # stopped with the scheduler


async def test_a_job_planned_ahead_runs_under_the_calibration_that_is_latest_when_it_is_handed_out(
    tmp_path, autojump_clock_for_threads
):
    async with lab(tmp_path) as lab_:
        fits = {"phi0": [0.0] * 64, "alpha": [1.0] * 64}
        await lab_.ask("memory", PutCalibration(device="chip", identity="sim", fits=fits))
        await lab_.sched(Pause(reason="wait"))
        await lab_.sched(Submit(circuit=hom(), job="early"))
        await lab_.wait_planned("early")
        assert lab_.scheduler.queue.jobs["early"].plan.calibration == 1
        await lab_.ask("memory", PutCalibration(device="chip", identity="sim", fits=fits))  # recalibrated meanwhile
        await lab_.sched(Resume())
        assignment = await lab_.take()
        assert (assignment.job, assignment.plan.calibration) == ("early", 2)
        await eventually(lambda: lab_.is_state("early", "running"))
        assert (await lab_.ask("memory", GetJob(job="early"))).record.calibration == 2


def queued(phase: JobPhase) -> QueuedJob:
    return QueuedJob(job="j", seq=ACCEPTING_SEQ, circuit=None, priority=0, deadline=None, phase=phase)


@pytest.mark.parametrize(
    ("start", "events", "end"),
    [
        (JobPhase.QUEUED, [JobEvent.PLANNED, JobEvent.CLAIMED], JobPhase.RUNNING),
        (JobPhase.RUNNING, [JobEvent.PREEMPTED, JobEvent.CLAIMED], JobPhase.RUNNING),
        (JobPhase.ACCEPTING, [JobEvent.ACCEPTED], JobPhase.PLANNED),
        (JobPhase.ACCEPTING, [JobEvent.CLAIMED, JobEvent.ACCEPTED], JobPhase.RUNNING),
        (JobPhase.INTERRUPTED, [JobEvent.PLANNED], JobPhase.RESUMABLE),
        (JobPhase.INTERRUPTED, [JobEvent.CLAIMED], JobPhase.RUNNING),
    ],
)
def test_a_queued_job_moves_along_its_life(start, events, end):
    job = queued(start)
    for event in events:
        job.move(event)
    assert job.phase is end


@pytest.mark.parametrize(
    ("start", "event"),
    [
        (JobPhase.QUEUED, JobEvent.CLAIMED),  # not planned
        (JobPhase.PLANNED, JobEvent.PLANNED),  # the store says so already
        (JobPhase.PLANNED, JobEvent.PREEMPTED),  # not running
        (JobPhase.RESUMABLE, JobEvent.ACCEPTED),
    ],
)
def test_a_move_its_phase_does_not_allow_is_refused(start, event):
    job = queued(start)
    assert not job.can(event)
    with pytest.raises(IllegalTransition, match=f"job j is {start.value}: it cannot be {event.value}"):
        job.move(event)
    assert job.phase is start


@pytest.mark.parametrize(
    ("state", "frames", "phase", "fresh"),
    [
        ("queued", 0, JobPhase.QUEUED, True),
        ("planned", 0, JobPhase.PLANNED, True),
        ("planned", 3, JobPhase.RESUMABLE, False),  # preempted before the restart
        ("running", 3, JobPhase.RUNNING, False),
        ("interrupted", 0, JobPhase.INTERRUPTED, False),
    ],
)
def test_a_job_read_back_from_the_store_is_fresh_only_if_nothing_of_it_ran(state, frames, phase, fresh):
    assert JobPhase.read_back(state, frames) is phase
    assert phase.fresh is fresh
    assert phase.stored == state


async def test_a_small_new_circuit_is_planned_at_its_submission_and_stored_planned_with_its_plan(
    tmp_path, autojump_clock_for_threads
):
    async with lab(tmp_path) as lab_:
        await lab_.sched(Pause(reason="looking at the queue"))
        await lab_.sched(Submit(circuit=hom(100), job="first"))  # planned by the planner: the calibration is learnt
        await lab_.wait_planned("first")
        compiled = (await lab_.sched(GetQueue())).plans_compiled
        accepted = await lab_.sched(Submit(circuit=hom(100, theta=0.3), job="new"))  # a circuit never seen
        assert accepted.created
        record = (await lab_.ask("memory", GetJob(job="new"))).record
        assert record.state == "planned"  # stored planned in its acceptance: no planner round trips after it
        stored = await lab_.ask("memory", GetPlan(plan=str(record.plan)))
        assert stored.job == "new"
        queue = await lab_.sched(GetQueue())
        assert queue.plans_compiled == compiled + 1
        assert [e.planned for e in queue.jobs if e.job == "new"] == [True]
