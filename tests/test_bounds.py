"""Bounds (decision 0015 §4): the scheduler refuses a submission past ``max_queue`` with ``queue-full``; and
1,000 jobs queued by 50 clients at once against a real ``awen up`` grow the scheduler's and the memory
actor's resident memory by a bounded amount (read from ``/proc/PID/status``)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import trio

from protocol import ErrorCode
from protocol.scheduler import Cancel, GetQueue, Pause, Submit
from runtime import RemoteError

from .circuits import hom
from .helpers import awen_process, free_port
from .test_scheduler import lab


async def test_a_submission_past_max_queue_is_refused_queue_full_naming_the_limit(tmp_path, autojump_clock_for_threads):
    async with lab(tmp_path, max_queue=3) as lab_:
        await lab_.sched(Pause(reason="filling the queue"))
        for n in range(3):
            await lab_.sched(Submit(circuit=hom(shots=1000 + n), job=f"j{n}"))
        with pytest.raises(RemoteError) as full:
            await lab_.sched(Submit(circuit=hom(shots=2000), job="j3"))
        assert full.value.code == ErrorCode.QUEUE_FULL
        assert "max_queue = 3" in str(full.value)
        again = await lab_.sched(Submit(circuit=hom(shots=1000), job="j0"))  # a resent submission: its answer
        assert (again.job, again.created) == ("j0", False)
        await lab_.sched(Cancel(job="j1"))
        assert (await lab_.sched(Submit(circuit=hom(shots=2000), job="j3"))).created  # room again
        assert len((await lab_.sched(GetQueue())).jobs) == 3


async def test_concurrent_submissions_never_queue_past_max_queue(tmp_path, autojump_clock_for_threads):
    """The check against ``max_queue`` and the reservation of a place are one step: 20 submissions at once,
    each awaiting its planning and its store round trip, queue exactly 5 and are refused ``queue-full``."""
    async with lab(tmp_path, max_queue=5) as lab_:
        await lab_.sched(Pause(reason="filling the queue"))
        accepted: list[str] = []
        refused: list[ErrorCode] = []

        async def submit(n: int) -> None:
            try:
                accepted.append((await lab_.sched(Submit(circuit=hom(shots=1000 + n), job=f"c{n}"))).job)
            except RemoteError as exc:
                refused.append(exc.code)

        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(submit, n)
        assert len(accepted) == 5, accepted
        assert refused == [ErrorCode.QUEUE_FULL] * 15
        assert len((await lab_.sched(GetQueue())).jobs) == 5


JOBS = 1000
CLIENTS = 50
RSS_GROWTH_BOUND_MB = 50.0
"""How much the scheduler's, the memory actor's and the door's resident memory may each grow over 1,000 queued
jobs from 50 clients (measured: +7, +1 and a few MB; a leak of a job's circuit per client session would not fit)."""
WATCHED = ("scheduler", "memory", "door")
"""The processes that hold the queue, the store and the clients' sessions."""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


async def submit_from_clients(clients: int, jobs: int) -> float:
    """``jobs`` circuits (all different) submitted by ``clients`` connections at once; seconds it took."""
    import awen

    began = time.monotonic()

    async def client(index: int) -> None:
        async with awen.open_lab(client=f"bounds-{index}") as lab_:
            for n in range(index, jobs, clients):
                await lab_.submit(hom(shots=1000 + n), key=f"bounds-{n}")

    async with trio.open_nursery() as nursery:
        for index in range(clients):
            nursery.start_soon(client, index)
    return time.monotonic() - began


@pytest.mark.system
def test_a_thousand_jobs_from_fifty_clients_grow_the_scheduler_and_the_store_by_a_bounded_amount(tmp_path, monkeypatch):
    import awen

    monkeypatch.setenv("AWEN_DATA_DIR", str(tmp_path / "data"))
    with awen_process("up", "--modes", "4", "--port", str(free_port()), "--no-http") as (proc, out):
        out.until("awen: up", timeout=60)
        with awen.connect() as client:
            if not client.calibration_status().valid:  # the door takes circuits once the chip is calibrated
                client.calibrate()  # joins the lab's first calibration: back once it is made
            client.pause("the test fills the queue")
            pids = {a.name: a.status.pid for a in client.status().actors if a.status is not None}
        assert {"scheduler", "memory", "door"} <= set(pids), pids
        before = {name: rss_mb(pids[name]) for name in WATCHED}
        took = trio.run(submit_from_clients, CLIENTS, JOBS)
        with awen.connect() as client:
            queued = len(client.queue().jobs)
        after = {name: rss_mb(pids[name]) for name in WATCHED}
        growth = {name: after[name] - before[name] for name in before}
        print(
            f"{JOBS} jobs from {CLIENTS} clients in {took:.1f} s; {queued} queued; VmRSS MB "
            + ", ".join(f"{n}: {before[n]:.0f} -> {after[n]:.0f} (+{growth[n]:.0f})" for n in before)
            + f"; bound +{RSS_GROWTH_BOUND_MB:g} MB each"
        )
        assert queued == JOBS
        for name, grew in growth.items():
            assert grew < RSS_GROWTH_BOUND_MB, f"{name} grew {grew:.0f} MB over {JOBS} queued jobs"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
