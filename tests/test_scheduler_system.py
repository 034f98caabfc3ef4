"""The scheduler as a lab runs it: its own process, the store in another, kill -9 in between."""

from __future__ import annotations

import os
import random
import signal

import pytest
import trio

from protocol.memory import GetJob
from protocol.scheduler import GetQueue, NextJob, Pause, Resume, Submit
from runtime import RemoteError, open_system, parse_system

from .circuits import hom
from .helpers import eventually

pytestmark = pytest.mark.system


async def test_kill_9_of_the_scheduler_loses_no_accepted_job_and_keeps_the_order(tmp_path):
    config = parse_system(
        {
            "log_level": "warning",
            "runtime": {"heartbeat_interval": 0.2, "request_timeout": 20.0},
            "actor": [
                {"name": "memory", "factory": "actors.memory:MemoryActor", "config": {"data_dir": str(tmp_path)}},
                {
                    "name": "hal",
                    "factory": "actors.hal:HalActor",
                    "config": {"devices": [{"name": "chip", "url": "sim://?seed=2&modes=8", "watchdog_s": 0}]},
                },
                {
                    "name": "scheduler",
                    "factory": "actors.scheduler:SchedulerActor",
                    "restart": {"max_restarts": 5, "window": 60, "backoff": 0.05},
                },
            ],
        }
    )
    rng = random.Random(4)
    async with open_system(config) as sup:
        with trio.fail_after(60):
            await sup.wait_started()
            await sup.request("scheduler", Pause(reason="filling the queue"))
        accepted: list[tuple[str, int]] = []
        for i in range(12):
            priority = rng.choice([0, 1, 5])
            reply = await sup.request("scheduler", Submit(circuit=hom(100 + i, priority=priority), job=f"j{i:02d}"))
            accepted.append((reply.job, priority))
        before = await sup.request("scheduler", GetQueue())
        pid = sup.pid_of("scheduler")
        async with sup.open_event_stream("actor.started") as started:
            os.kill(pid, signal.SIGKILL)
            with trio.fail_after(60):
                await started.receive()

        async def queue_back() -> object:
            try:
                queue = await sup.request("scheduler", GetQueue())
            except RemoteError:  # restarted, still recovering: unavailable for a moment
                return None
            return queue if all(e.planned for e in queue.jobs) else None

        after = await eventually(queue_back, within=60)
        assert after.paused  # the pause was not forgotten
        expected = [job for job, _ in sorted(accepted, key=lambda jp: (-jp[1], int(jp[0][1:])))]
        assert [e.job for e in before.jobs] == expected
        assert [e.job for e in after.jobs] == expected
        await sup.request("scheduler", Resume())
        first = await sup.request("scheduler", NextJob(executor="t", wait_s=10))
        assert first.job == expected[0]

        # Killed again while that job runs (the store stays up): the job is offered again once it is back.
        async with sup.open_event_stream("actor.started") as started:
            os.kill(sup.pid_of("scheduler"), signal.SIGKILL)
            with trio.fail_after(60):
                await started.receive()

        async def offered() -> object:
            try:
                return (await sup.request("scheduler", NextJob(executor="t", wait_s=2))).job
            except RemoteError:
                return None

        assert await eventually(offered, within=60) == expected[0]
        for job, _ in accepted:
            assert (await sup.request("memory", GetJob(job=job))).record.state in ("planned", "running")
