"""Submission keys through kill -9 (decision 0014 §3, §4 "Reconnect"): a keyed submission that a client sends
again, after the scheduler or the store died under it, is one job, run once.

Real processes under a supervisor (`runtime.open_system`): memory, hal, scheduler and executor of the standard
lab, on a simulated chip served over TCP by this process. An actor is killed with SIGKILL while a submission
is on its way (sent, its reply not yet come, or come already: either way the test holds), the supervisor starts
it again, and the test sends the same submission, key and all, until it is answered, as a reconnecting client
does. Then: one job under the key, every answer naming it, completed, its shots counted once.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.lowlevel

from actors.jobs import wait_for_job
from actors.lab import lab_system
from protocol import AwenError, ErrorCode
from protocol.memory import PutCalibration, QueryJobs, QueryResults
from protocol.scheduler import Accepted, Submit
from runtime import RemoteError, RestartPolicy, RuntimeOptions, Supervisor, open_system
from sim import DeviceServer, serve_tcp

from .chips import CHIP, truth
from .circuits import hom

pytestmark = pytest.mark.system

SHOTS = 20_000

RESENT = {
    ErrorCode.ACTOR_STOPPED,
    ErrorCode.PEER_LOST,
    ErrorCode.TIMEOUT,
    ErrorCode.UNAVAILABLE,
    ErrorCode.STORE_UNAVAILABLE,
    ErrorCode.NOT_READY,
}
"""Answers a restart explains: the client sends the submission again."""


@asynccontextmanager
async def lab(tmp_path: Path) -> AsyncIterator[Supervisor]:
    """The lab's memory, hal, scheduler and executor in processes of their own, the chip calibrated."""
    server = DeviceServer(CHIP, seed=5)
    async with trio.open_nursery() as outside:
        host, port = await outside.start(serve_tcp, server, "127.0.0.1", 0)
        config = lab_system(
            data_dir=tmp_path / "data",
            device_url=f"tcp://{host}:{port}",
            device_options={"watchdog_s": 0},
            actors=("memory", "hal", "scheduler", "executor"),
            log_level="warning",
            runtime=RuntimeOptions(heartbeat_interval=0.2, request_timeout=20.0),
            restart=RestartPolicy(max_restarts=5, window=60, backoff=0.05),
            config={"executor": {"batch_shots": 2000}},
        )
        async with open_system(config) as sup:
            with trio.fail_after(60):
                await sup.wait_started()
            await sup.request("memory", PutCalibration(device="chip", identity="truth", fits=truth(server).fits()))
            yield sup
        outside.cancel_scope.cancel()


async def send(sup: Supervisor, submit: Submit) -> Accepted:
    """The submission, sent again (the same one, key and all) until it is answered, as a reconnecting client does."""
    with trio.fail_after(60):  # a guard against a hang, not a measure
        while True:
            try:
                with trio.fail_after(5):
                    return await sup.request("scheduler", submit)
            except RemoteError as exc:
                if exc.code not in RESENT:
                    raise
            except (AwenError, trio.TooSlowError):
                pass  # the scheduler went away under the request, or its answer did
            await trio.sleep(0.1)


async def kill_9(sup: Supervisor, actor: str) -> None:
    """SIGKILL ``actor``'s process; return once the supervisor has started it again."""
    async with sup.open_event_stream("actor.started") as started:
        os.kill(sup.pid_of(actor), signal.SIGKILL)
        with trio.fail_after(60):
            while (await started.receive()).body.actor != actor:
                pass


async def killed_while_submitting(sup: Supervisor, actor: str, submit: Submit) -> list[Any]:
    """``submit`` sent, ``actor`` killed at once (its reply on its way, or not), the submission sent again.

    Every answer: the first sending's (an `Accepted`, or the error it met) and the sendings' after the restart.
    """
    answers: list[Any] = []

    async def first() -> None:
        try:
            with trio.fail_after(10):
                answers.append(await sup.request("scheduler", submit))
        except (AwenError, trio.TooSlowError) as exc:
            answers.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        await trio.lowlevel.checkpoint()  # the request goes out
        await kill_9(sup, actor)
        answers.append(await send(sup, submit))
    return answers


async def assert_one_job_run_once(sup: Supervisor, key: str, answers: list[Any]) -> None:
    """One job under ``key``; every answer that is an acceptance names it; it completed, each shot counted once."""
    jobs = (await sup.request("memory", QueryJobs(key=key))).jobs
    assert len(jobs) == 1, jobs
    job = jobs[0].job
    accepted = [a for a in answers if isinstance(a, Accepted)]
    assert accepted, answers
    assert {a.job for a in accepted} == {job}, answers
    assert sum(a.created for a in accepted) <= 1, answers  # the job was created once, by one of them
    with trio.fail_after(60):
        record = await wait_for_job(sup, job)
    assert record.state == "completed", record.reason
    results = (await sup.request("memory", QueryResults(job=job))).results
    assert [r.frame for r in results] == list(range(len(results)))  # each frame stored once
    assert int(np.sum([r.value for r in results], axis=0).sum()) == SHOTS  # nothing counted twice, nothing lost
    assert len((await sup.request("memory", QueryJobs(key=key))).jobs) == 1  # and no job was made since


async def test_a_keyed_submission_sent_again_after_a_kill_9_of_the_scheduler_is_one_job_run_once(tmp_path):
    async with lab(tmp_path) as sup:
        # Killed while the submission is under way: sent, not yet (or just) answered.
        in_flight = Submit(circuit=hom(SHOTS), key="k9-sched-in-flight")
        answers = await killed_while_submitting(sup, "scheduler", in_flight)
        await assert_one_job_run_once(sup, "k9-sched-in-flight", answers)

        # Killed right after it was answered (its reply lost, for all the client knows): sent again.
        answered = Submit(circuit=hom(SHOTS, theta=0.5), key="k9-sched-answered")
        first = await send(sup, answered)
        await kill_9(sup, "scheduler")
        again = await send(sup, answered)
        assert (again.job, again.created) == (first.job, False)
        await assert_one_job_run_once(sup, "k9-sched-answered", [first, again])


async def test_a_keyed_submission_sent_again_after_a_kill_9_of_the_store_is_counted_once(tmp_path):
    async with lab(tmp_path) as sup:
        # Killed while the scheduler stores the job (mem.put_job on its way, or its transaction committed).
        in_flight = Submit(circuit=hom(SHOTS), key="k9-mem-in-flight")
        answers = await killed_while_submitting(sup, "memory", in_flight)
        await assert_one_job_run_once(sup, "k9-mem-in-flight", answers)

        # Killed once the job is stored: the key is in the store, the restarted store answers with its job.
        answered = Submit(circuit=hom(SHOTS, theta=0.5), key="k9-mem-answered")
        first = await send(sup, answered)
        await kill_9(sup, "memory")
        again = await send(sup, answered)
        assert (again.job, again.created) == (first.job, False)
        await assert_one_job_run_once(sup, "k9-mem-answered", [first, again])
