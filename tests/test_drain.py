"""Draining the lab before it stops (decision 0015 §4).

The scheduler's side on a lab of actors in one process (``sched.drain``: submissions refused
``draining``, nothing dispatched, the running job preempted at its next phase boundary); then
``awen up`` as an operator runs it: SIGTERM while a long job runs, exit 0, and after a restart
on the same data directory the job completes with exactly the shots it asked for.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
import trio

from protocol import ErrorCode
from protocol.memory import GetJob
from protocol.scheduler import Checkpoint, Drain, GetQueue, NextJob, Submit, Unsuspend
from runtime import RemoteError

from .circuits import hom, two_rounds
from .helpers import REPO, awen_process, free_port
from .test_scheduler import lab


async def test_a_drain_refuses_submissions_and_preempts_the_running_job_at_its_next_phase_boundary(
    tmp_path, autojump_clock_for_threads
):
    async with lab(tmp_path) as lab_:
        await lab_.sched(Submit(circuit=two_rounds(), job="long"))
        await lab_.sched(Submit(circuit=hom(), job="waiting"))
        assert (await lab_.take(10)).job == "long"
        async with trio.open_nursery() as nursery:
            drained = []

            async def drain() -> None:
                drained.append(await lab_.sched(Drain(timeout_s=30)))

            nursery.start_soon(drain)
            await trio.sleep(0.5)
            assert drained == []  # the running job has not reached a phase boundary yet
            with pytest.raises(RemoteError) as refused:
                await lab_.sched(Submit(circuit=hom(), job="late"))
            assert refused.value.code == ErrorCode.DRAINING
            assert "the lab is stopping" in str(refused.value)
            proceed = await lab_.sched(Checkpoint(job="long", phase=0, duration_s=0.01, executor="exec"))
            assert proceed.action == "preempt"
            assert "the lab is stopping" in proceed.reason
        assert (drained[0].job, drained[0].timed_out, drained[0].queued) == ("long", False, 2)
        record = (await lab_.ask("memory", GetJob(job="long"))).record
        assert record.state == "planned"
        assert "resumes at phase 1" in record.reason
        assert (await lab_.sched(NextJob(executor="exec", wait_s=2))).job is None  # nothing more is dispatched
        queue = await lab_.sched(GetQueue())
        assert "draining" in queue.suspended
        assert queue.running is None
        with pytest.raises(RemoteError) as undone:
            await lab_.sched(Unsuspend(condition="draining"))
        assert "not undone" in str(undone.value)
        again = await lab_.sched(Drain(timeout_s=1))  # asked again: nothing runs, answered at once
        assert (again.job, again.timed_out) == (None, False)


async def test_a_drain_gives_up_waiting_after_its_timeout(tmp_path, autojump_clock_for_threads):
    async with lab(tmp_path) as lab_:
        await lab_.sched(Submit(circuit=two_rounds(), job="long"))
        assert (await lab_.take(10)).job == "long"
        began = trio.current_time()
        drained = await lab_.sched(Drain(timeout_s=5))
        assert (drained.job, drained.timed_out) == ("long", True)
        assert 5 <= trio.current_time() - began < 6


async def test_a_drain_of_an_idle_scheduler_answers_at_once(tmp_path, autojump_clock_for_threads):
    async with lab(tmp_path) as lab_:
        await lab_.sched(Submit(circuit=hom(), job="queued"))
        drained = await lab_.sched(Drain(timeout_s=30))
        assert (drained.job, drained.timed_out, drained.queued) == (None, False, 1)
        assert (await lab_.sched(NextJob(executor="exec", wait_s=1))).job is None


# --- awen up -----------------------------------------------------------------------------------

LONG_SHOTS = 400_000
"""examples/hom.json with this many shots: two phases of a few seconds each on the simulated chip."""


@pytest.mark.system
def test_sigterm_drains_the_running_job_and_the_next_start_completes_it_with_every_shot(tmp_path, monkeypatch):
    import awen

    data = tmp_path / "data"
    circuit = json.loads((REPO / "examples" / "hom.json").read_text())
    circuit["shots"] = LONG_SHOTS
    monkeypatch.setenv("AWEN_DATA_DIR", str(data))
    args = ("up", "--modes", "4", "--drain-timeout", "20", "--no-http")
    with awen_process(*args, "--port", str(free_port())) as (proc, out):
        out.until("awen: up", timeout=60)
        with awen.connect() as client:
            job = client.submit(circuit)
            deadline = time.monotonic() + 60
            while job.state() != "running":
                assert time.monotonic() < deadline, "the job did not start within 60 s"
                time.sleep(0.05)
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20 + 10) == 0
        stopped_in = time.monotonic() - began
        out.rest(timeout=5)
        lines = out.seen
        text = "\n".join(lines)
        assert "awen: SIGTERM: draining" in text
        drained = f"awen: drained: scheduler: {job.id} left the device (preempted at a phase boundary, or it finished)"
        assert f"{drained}; 1 jobs stay queued" in text
        assert "Traceback" not in text
        print(f"stopped {stopped_in:.1f} s after SIGTERM:", *[x for x in lines if x.startswith("awen:")], sep="\n")
    with awen_process(*args, "--port", str(free_port())) as (proc, out):
        out.until("awen: up", timeout=60)
        with awen.connect() as client:
            result = client.job(job.id).wait(timeout=120)
            record = client.job(job.id).record()
        print(f"{job.id}: {record.state}, {record.frames} frames; {record.reason}")
        assert record.state == "completed"
        # every shot of each phase counted once: the phase before the drain was not run again, none lost
        assert int(result.counts("hom").sum()) == LONG_SHOTS
        assert int(result.counts("reference").sum()) == LONG_SHOTS
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
