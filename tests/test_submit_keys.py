"""Idempotent submission: a submission key names one job, through the scheduler and the store, across restarts."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from actors.hal import HalActor
from actors.memory import MIGRATIONS, MemoryActor, Store
from actors.memory import _store as ops
from actors.scheduler import SchedulerActor
from protocol import Exists, StoreUnavailable
from protocol.circuit import Circuit
from protocol.memory import Allocate, PutJob, QueryJobs
from protocol.scheduler import Cancel, GetQueue, NextJob, ReportHealth, Submit
from runtime import Actor, RemoteError

from .circuits import hom
from .helpers import eventually
from .stack import mem_runtime
from .test_scheduler import Lab, lab

CLIENTS = 4


@asynccontextmanager
async def lab_with_clients(tmp_path: Path) -> AsyncIterator[tuple[Lab, list[Actor]]]:
    """`test_scheduler.lab` with several client actors besides the executor."""
    names = [f"client-{i}" for i in range(CLIENTS)]
    runtime = mem_runtime("memory", "hal", "scheduler", "exec", *names)
    memory = MemoryActor("memory", runtime, data_dir=str(tmp_path / "data"), synchronous="normal")
    hal = HalActor("hal", runtime, devices=[{"name": "chip", "url": "sim://?seed=1&modes=8", "watchdog_s": 0}])
    scheduler = SchedulerActor("scheduler", runtime, deadline_check_s=0.05)
    executor = Actor("exec", runtime)
    clients = [Actor(name, runtime) for name in names]
    async with trio.open_nursery() as nursery:
        for actor in (memory, hal, scheduler, executor, *clients):
            await nursery.start(actor.run)
        with trio.fail_after(30):
            await scheduler._ready.wait()
        yield Lab(scheduler, executor, tmp_path / "data"), clients
        nursery.cancel_scope.cancel()


async def keyed(lab_: Lab, key: str) -> list[Any]:
    return (await lab_.ask("memory", QueryJobs(key=key))).jobs


async def test_the_same_key_twice_is_one_job_the_second_answer_not_created(tmp_path, autojump_clock_for_threads):
    async with lab(tmp_path) as lab_:
        first = await lab_.sched(Submit(circuit=hom(), key="exp-1", tags=["sweep"]))
        again = await lab_.sched(Submit(circuit=hom(), key="exp-1", tags=["sweep"]))
        assert (first.created, again.created, again.job) == (True, False, first.job)
        jobs = await keyed(lab_, "exp-1")
        assert [(j.job, j.key, j.tags) for j in jobs] == [(first.job, "exp-1", ["sweep"])]
        queue = await lab_.sched(GetQueue())
        assert [e.job for e in queue.jobs] == [first.job]

        # An ended job is the answer too, in the state it ended in: a failed job is not run again.
        assert (await lab_.take()).job == first.job
        await lab_.finish(first.job, "failed", "the source went dark")
        third = await lab_.sched(Submit(circuit=hom(), key="exp-1", tags=["sweep"]))
        assert (third.job, third.created) == (first.job, False)
        assert await lab_.state(first.job) == "failed"
        assert (await lab_.sched(GetQueue())).jobs == []


async def test_the_same_key_with_another_submission_is_refused_naming_the_job_and_the_field(
    tmp_path, autojump_clock_for_threads
):
    async with lab(tmp_path) as lab_:
        first = await lab_.sched(Submit(circuit=hom(), key="exp-2"))
        named = rf"key 'exp-2' names job '{first.job}', submitted .* another circuit.*\[exists\]"
        with pytest.raises(RemoteError, match=named):
            await lab_.sched(Submit(circuit=hom(theta=0.3), key="exp-2"))
        with pytest.raises(RemoteError, match=r"another shots.*\[exists\]") as refused:
            await lab_.sched(Submit(circuit=hom(shots=7), key="exp-2"))
        assert refused.value.field == "shots"
        with pytest.raises(RemoteError, match=r"another tags.*\[exists\]"):
            await lab_.sched(Submit(circuit=hom(), key="exp-2", tags=["other"]))
        assert len(await keyed(lab_, "exp-2")) == 1


async def test_twenty_concurrent_submits_of_one_key_make_one_job(tmp_path, autojump_clock_for_threads):
    async with lab_with_clients(tmp_path) as (lab_, clients):
        # A plan at hand (the same circuit ran before): submissions are queued, and dispatchable, while their
        # acceptance commits; all but one are taken back when the store names the key's job.
        warm = await lab_.sched(Submit(circuit=hom(), job="warm"))
        assert (await lab_.take()).job == warm.job
        await lab_.finish(warm.job, "completed")
        for key in ("many-1", "many-2"):
            answers: list[Any] = []

            async def submit(i: int, key: str = key, answers: list[Any] = answers) -> None:
                client = lab_.client if i < 20 - CLIENTS else clients[i % CLIENTS]
                with trio.fail_after(30):
                    answers.append(await client.request("scheduler", Submit(circuit=hom(), key=key)))

            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(submit, i)
            jobs = await keyed(lab_, key)
            assert len(jobs) == 1
            assert {a.job for a in answers} == {jobs[0].job}
            assert sorted(a.created for a in answers) == [False] * 19 + [True]
        queue = await lab_.sched(GetQueue())
        assert sorted(e.job for e in queue.jobs) == sorted(
            [(await keyed(lab_, "many-1"))[0].job, (await keyed(lab_, "many-2"))[0].job]
        )
        for _ in range(2):
            job = (await lab_.take()).job
            await lab_.finish(job, "completed")
        assert (await lab_.take(0.1)).job is None  # nothing else was queued


async def test_a_key_survives_a_restart_of_the_scheduler_and_the_store(tmp_path, autojump_clock_for_threads):
    async with lab(tmp_path) as lab_:
        first = await lab_.sched(Submit(circuit=hom(), key="lasting", tags=["a"]))
    async with lab(tmp_path) as lab_:
        again = await lab_.sched(Submit(circuit=hom(), key="lasting", tags=["a"]))
        assert (again.job, again.created) == (first.job, False)
        with pytest.raises(RemoteError, match=r"\[exists\]"):
            await lab_.sched(Submit(circuit=hom(shots=5), key="lasting", tags=["a"]))
        assert [e.job for e in (await lab_.sched(GetQueue())).jobs] == [first.job]


async def test_jobs_are_found_by_every_one_of_their_tags(tmp_path, autojump_clock_for_threads):
    async with lab(tmp_path) as lab_:
        both = await lab_.sched(Submit(circuit=hom(), tags=["sweep", "run-7"]))
        sweep = await lab_.sched(Submit(circuit=hom(shots=10), tags=["sweep"]))
        await lab_.sched(Submit(circuit=hom(shots=20)))

        async def tagged(*tags: str) -> list[str]:
            return [j.job for j in (await lab_.ask("memory", QueryJobs(tags=list(tags)))).jobs]

        assert await tagged("sweep") == [both.job, sweep.job]
        assert await tagged("sweep", "run-7") == [both.job]
        assert await tagged("run-7", "other") == []
        assert len(await tagged()) == 3


async def test_cancelling_a_job_that_ended_is_ok(tmp_path, autojump_clock_for_threads):
    async with lab(tmp_path) as lab_:
        done = await lab_.sched(Submit(circuit=hom(), key="to-cancel"))
        assert (await lab_.take()).job == done.job
        await lab_.finish(done.job, "completed")
        assert await lab_.sched(Cancel(job=done.job)) is not None
        await lab_.sched(Cancel(job=done.job))  # and again
        assert await lab_.state(done.job) == "completed"
        with pytest.raises(RemoteError, match="no job 'nobody'"):
            await lab_.sched(Cancel(job="nobody"))


def test_keys_and_tags_are_checked_on_the_wire():
    ok = {"job": "j", "key": "user:exp/1=a+b_c.d-e", "tags": ["x"] * 16}
    assert msgspec.convert(ok, PutJob).key == ok["key"]
    for bad in ({"key": ""}, {"key": "k" * 129}, {"key": "has space"}, {"tags": ["x"] * 17}):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({"job": "j", **bad}, PutJob)
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({"circuit": {"modes": 2}, **bad}, Submit)


def test_the_store_refuses_a_second_job_under_a_key_in_its_transaction(tmp_path):
    store = Store(tmp_path / "store.sqlite3")
    put = dict(shots=10, priority=0, device="chip", deadline=None, submitter="me")
    assert store.write(ops.put_job("a", Circuit(modes=2), **put, key="k", tags=["t", "t"])) == ("a", 1, True)
    assert store.write(ops.put_job("b", Circuit(modes=2), **put, key="k", tags=["t"])) == ("a", 1, False)
    with pytest.raises(Exists, match=r"key 'k' names job 'a'.*another deadline"):
        store.write(ops.put_job("c", Circuit(modes=2), **{**put, "deadline": 5.0}, key="k", tags=["t"]))
    assert store.read(ops.get_job("a")).tags == ["t"]
    store.write(ops.put_job("b", Circuit(modes=3), **put))
    with pytest.raises(StoreUnavailable, match=r"UNIQUE constraint failed: jobs.key"):  # the index itself
        store.write(lambda conn: conn.execute("UPDATE jobs SET key = 'k' WHERE id = 'b'").rowcount)
    store.close()


def test_a_store_of_the_previous_schema_opens_and_gains_keys_and_tags(tmp_path):
    path = tmp_path / "store.sqlite3"
    Store(path, migrations=MIGRATIONS[:1]).close()
    with sqlite3.connect(path) as conn:  # a job as the previous awen stored it
        conn.execute(
            "INSERT INTO jobs (id, state, priority, shots, device, submitter, circuit, submitted, updated) "
            "VALUES ('old', 'completed', 0, 10, 'chip', 'me', ?, 1.0, 2.0)",
            (msgspec.msgpack.encode({"modes": 2}),),
        )
    conn.close()
    store = Store(path)
    assert store.schema_version == MIGRATIONS[-1].version >= 2
    old = store.read(ops.get_job("old"))
    assert (old.state, old.key, old.tags, old.circuit) == ("completed", None, [], Circuit(modes=2))
    columns = {row[1] for row in store.read(lambda conn: conn.execute("PRAGMA table_info(jobs)").fetchall())}
    assert "key" in columns
    put = dict(shots=10, priority=0, device="chip", deadline=None, submitter="me")
    assert store.write(ops.put_job("new", Circuit(modes=2), **put, key="k", tags=["x"]))[2]
    assert [j.job for j in store.read(ops.query_jobs(key="k"))] == ["new"]
    assert [j.job for j in store.read(ops.query_jobs(tags=["x"]))] == ["new"]
    store.close()


async def test_a_job_dispatched_while_its_key_resolves_to_another_is_withdrawn(tmp_path, autojump_clock_for_threads):
    async with lab(tmp_path) as lab_:
        warm = await lab_.sched(Submit(circuit=hom(), job="warm"))
        assert (await lab_.take()).job == warm.job
        await lab_.finish(warm.job, "completed")
        first = await lab_.sched(Submit(circuit=hom(), key="early"))  # planned at once: queued as it is stored

        async def submitted_while_an_executor_waits() -> tuple[Any, Any]:
            got: list[Any] = []

            async def executor() -> None:
                got.append(await lab_.sched(NextJob(executor="exec", wait_s=10)))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(executor)
                await trio.testing.wait_all_tasks_blocked()
                accepted = await lab_.sched(Submit(circuit=hom(), key="early"))
            return accepted, got[0]

        # The key's job has ended (cancelled while it waited). An executor waiting gets the new submission the
        # moment it is queued (ahead of its acceptance), before the store names the key's job: then it is taken
        # back, and the executor's allocation of it is refused.
        await lab_.sched(Cancel(job=first.job))
        again, assignment = await submitted_while_an_executor_waits()
        assert (again.job, again.created) == (first.job, False)
        assert assignment.job not in (None, first.job)
        assert assignment.accepting
        allocate = Allocate(job=assignment.job, slots=[], device="chip", mark_running="on exec", accepting=True)
        with pytest.raises(RemoteError, match=rf"no job '{assignment.job}'"):
            await lab_.ask("memory", allocate)
        assert [j.job for j in await keyed(lab_, "early")] == [first.job]
        assert await lab_.state(first.job) == "cancelled"
        assert (await lab_.sched(GetQueue())).jobs == []


async def test_a_resubmission_that_would_now_be_refused_is_answered_with_the_keys_job(
    tmp_path, autojump_clock_for_threads
):
    # Decision 0014 §3: the key is looked up before a circuit is refused, so resending an accepted job (a client
    # reconnecting) never turns into a refusal because the device changed since it was accepted.
    async with lab(tmp_path) as lab_:
        first = await lab_.sched(Submit(circuit=hom(), key="before-the-change"))
        assert (await lab_.take()).job == first.job
        await lab_.finish(first.job, "completed")
        await lab_.sched(ReportHealth(device="chip", modes=list(range(8))))  # no mode of the chip works now
        with pytest.raises(RemoteError, match=r"\[invalid-circuit\]"):
            await lab_.sched(Submit(circuit=hom()))  # what a new submission of it hears
        with pytest.raises(RemoteError, match=r"\[invalid-circuit\]"):
            await lab_.sched(Submit(circuit=hom(), key="never-used"))  # a key that names no job changes nothing

        again = await lab_.sched(Submit(circuit=hom(), key="before-the-change"))
        assert (again.job, again.created) == (first.job, False)
        assert await lab_.state(first.job) == "completed"  # answered, not run again
        # The same key with another submission (that would be refused too) is that key's conflict, not a refusal.
        with pytest.raises(RemoteError, match=rf"key 'before-the-change' names job '{first.job}'.*\[exists\]"):
            await lab_.sched(Submit(circuit=hom(shots=7), key="before-the-change"))
        assert [j.job for j in await keyed(lab_, "before-the-change")] == [first.job]
        assert await keyed(lab_, "never-used") == []
        assert (await lab_.sched(GetQueue())).jobs == []


async def test_a_resubmission_refused_by_limits_configured_since_is_answered_with_the_keys_job(
    tmp_path, autojump_clock_for_threads
):
    async with lab(tmp_path) as lab_:
        first = await lab_.sched(Submit(circuit=hom(shots=1000), key="big"))
    async with lab(tmp_path, limits={"max_shots": 100}) as lab_:  # restarted with stricter limits
        # The job, queued when the scheduler stopped, cannot be planned under them: it failed, saying why.
        await eventually(lambda: lab_.is_state(first.job, "failed"))
        with pytest.raises(RemoteError, match=r"\[invalid-circuit\]"):
            await lab_.sched(Submit(circuit=hom(shots=1000), key="new-and-big"))
        again = await lab_.sched(Submit(circuit=hom(shots=1000), key="big"))
        assert (again.job, again.created) == (first.job, False)
        with pytest.raises(RemoteError, match=r"another circuit.*\[exists\]"):
            await lab_.sched(Submit(circuit=hom(shots=1000, theta=0.2), key="big"))
        assert [j.job for j in await keyed(lab_, "big")] == [first.job]
        assert await lab_.state(first.job) == "failed"  # answered as it is, not run again
        assert (await lab_.sched(GetQueue())).jobs == []


async def test_a_resubmission_of_a_job_stored_without_an_answer_queues_it(tmp_path, autojump_clock_for_threads):
    # The store committed a job and died before it answered: the scheduler heard "peer lost" and did not queue it.
    # The client sends the submission again: it hears created=False, and the job is queued and runs, once.
    async with lab(tmp_path) as lab_:
        circuit = hom()
        put = PutJob(
            job="unanswered",
            circuit=circuit,
            shots=circuit.shots,
            priority=circuit.priority,
            device="chip",
            submitter="scheduler",
            key="lost-answer",
        )
        assert (await lab_.ask("memory", put)).created
        assert (await lab_.sched(GetQueue())).jobs == []  # the scheduler does not know of it
        again = await lab_.sched(Submit(circuit=circuit, key="lost-answer"))
        assert (again.job, again.created) == ("unanswered", False)
        assert [e.job for e in (await lab_.sched(GetQueue())).jobs] == ["unanswered"]
        await lab_.sched(Submit(circuit=circuit, key="lost-answer"))  # and again: still queued once
        assert [e.job for e in (await lab_.sched(GetQueue())).jobs] == ["unanswered"]
        assert (await lab_.take()).job == "unanswered"
        await lab_.finish("unanswered", "completed")
        assert (await lab_.take(0.1)).job is None

        # A job this scheduler cancelled is not queued again by a resubmission of it.
        cancelled = await lab_.sched(Submit(circuit=hom(shots=5), key="cancelled"))
        await lab_.sched(Cancel(job=cancelled.job))
        assert (await lab_.sched(Submit(circuit=hom(shots=5), key="cancelled"))).job == cancelled.job
        assert (await lab_.sched(GetQueue())).jobs == []
