"""Any actor of the job path stops mid-job and comes back: the job completes, every shot counted once.

The actors run in this process (mem://), each in a cancel scope of its own, so
that one can be stopped and a new one of its kind started in its place, as the
supervisor restarts a crashed process. (tests/test_kill9.py does the same with
SIGKILL and real processes.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from actors.calibration import CalibrationActor
from actors.executor import ExecutorActor
from actors.hal import HalActor
from actors.jobs import wait_for_job
from actors.memory import MemoryActor
from actors.scheduler import SchedulerActor
from protocol.calibration import Calibrate
from protocol.memory import GetCalibration, GetJob, ListCalibrations, PutCalibration, QueryJobs, QueryResults
from protocol.results import parse_result_slot
from protocol.scheduler import Submit
from runtime import Actor
from sim import DeviceServer, serve_tcp

from .chips import CHIP, truth
from .circuits import two_rounds
from .helpers import eventually
from .stack import Running, mem_runtime, start_running


@dataclass
class Lab:
    """The job path's actors, each one replaceable."""

    server: DeviceServer
    client: Actor
    makers: dict[str, Callable[[], Actor]]
    nursery: trio.Nursery
    running: dict[str, Running[Actor]] = field(default_factory=dict)

    async def start(self, name: str) -> None:
        self.running[name] = await start_running(self.nursery, self.makers[name]())

    async def restart(self, name: str) -> None:
        """Stop the actor and start a new one in its place (a new incarnation, as after a crash)."""
        await self.running[name].stop()
        await self.start(name)

    async def ask(self, to: str, request: Any) -> Any:
        with trio.fail_after(60):
            return await self.client.request(to, request)

    async def ended(self, job: str) -> Any:
        with trio.fail_after(120):
            return await wait_for_job(self.client, job)

    async def frames(self, job: str) -> int:
        try:
            return int((await self.ask("memory", GetJob(job=job))).record.frames)
        except Exception:  # noqa: BLE001 - not stored yet, or the memory actor is between incarnations
            return 0

    async def counted(self, job: str) -> dict[str, int]:
        """Shots counted per register slot (``p0.c``), over every frame."""
        results = (await self.ask("memory", QueryResults(job=job))).results
        totals: dict[str, int] = {}
        for result in results:
            slot = parse_result_slot(result.slot)
            if slot is not None and slot.kind == "register":
                totals[result.slot] = totals.get(result.slot, 0) + int(np.sum(result.value))
        return totals


@asynccontextmanager
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    server = DeviceServer(CHIP, seed=7)
    runtime = mem_runtime("memory", "hal", "scheduler", "executor", "calibration", "me", heartbeat_interval=0.2)
    async with trio.open_nursery() as outside:
        host, port = await outside.start(serve_tcp, server, "127.0.0.1", 0)
        device = {"name": "chip", "url": f"tcp://{host}:{port}", "timeout_s": 1.0}
        makers: dict[str, Callable[[], Actor]] = {
            "memory": lambda: MemoryActor("memory", runtime, data_dir=str(tmp_path / "data"), synchronous="normal"),
            "hal": lambda: HalActor("hal", runtime, devices=[device]),
            "scheduler": lambda: SchedulerActor("scheduler", runtime),
            "executor": lambda: ExecutorActor("executor", runtime, batch_shots=1000, backoff_s=0.01),
            "calibration": lambda: CalibrationActor(
                "calibration", runtime, points=4, reference_every_s=None, auto=False
            ),
        }
        client = Actor("me", runtime)
        async with trio.open_nursery() as nursery:
            bench = Lab(server, client, makers, nursery)
            await bench.start("memory")
            await bench.start("hal")
            await nursery.start(client.run)
            await client.request("memory", PutCalibration(device="chip", identity="truth", fits=truth(server).fits()))
            await bench.start("scheduler")
            await bench.start("executor")
            yield bench
            nursery.cancel_scope.cancel()
        outside.cancel_scope.cancel()


@pytest.mark.parametrize("actor", ["memory", "scheduler", "hal", "executor"])
async def test_an_actor_that_stops_mid_job_and_comes_back_leaves_the_job_completed_with_every_shot_once(
    tmp_path, actor
):
    async with lab(tmp_path) as b:
        shots = 15_000
        await b.ask("scheduler", Submit(circuit=two_rounds(shots), job="long"))

        async def under_way() -> bool:
            return await b.frames("long") >= 4

        await eventually(under_way, within=60)
        before = (await b.ask("memory", GetJob(job="long"))).record
        await b.restart(actor)
        assert (before.state, before.frames < 30) == ("running", True), "the job must be under way when it stops"
        record = await b.ended("long")
        assert record.state == "completed", record.reason
        assert await b.counted("long") == {"p0.a": shots, "p1.b": shots}


async def test_two_actors_stopping_one_after_another_still_leave_the_job_completed(tmp_path):
    async with lab(tmp_path) as b:
        shots = 15_000
        await b.ask("scheduler", Submit(circuit=two_rounds(shots), job="long"))

        async def under_way(frames: int) -> Callable[[], Any]:
            async def enough() -> bool:
                return await b.frames("long") >= frames

            return enough

        await eventually(await under_way(3), within=60)
        await b.restart("memory")
        await b.restart("scheduler")
        await eventually(await under_way(12), within=60)
        await b.restart("hal")
        record = await b.ended("long")
        assert record.state == "completed", record.reason
        assert await b.counted("long") == {"p0.a": shots, "p1.b": shots}


async def test_a_calibration_actor_that_stops_mid_sweep_is_succeeded_by_one_that_finishes_that_sweep(tmp_path, caplog):
    async with lab(tmp_path) as b:
        await b.start("calibration")
        asked: list[Any] = []

        async def calibrate() -> None:
            try:
                asked.append(await b.client.request("calibration", Calibrate()))
            except Exception as exc:  # noqa: BLE001 - the actor it asked stops before it answers
                asked.append(exc)

        b.nursery.start_soon(calibrate)

        async def sweep_under_way() -> str | None:
            jobs = (await b.ask("memory", QueryJobs())).jobs
            sweeps = [j for j in jobs if j.job.startswith("cal-") and j.frames >= 5]
            return sweeps[0].job if sweeps else None

        sweep = await eventually(sweep_under_way, within=60)
        await b.restart("calibration")

        async def stored() -> Any:
            latest = (await b.ask("memory", GetCalibration(device="chip"))).data
            return latest if latest.job == sweep else None

        data = await eventually(stored, within=120)
        assert data.started_from == "version 1"
        versions = (await b.ask("memory", ListCalibrations(device="chip"))).calibrations
        assert [v.version for v in versions] == [1, 2]  # the sweep's fit, once
        sweeps = [j.job for j in (await b.ask("memory", QueryJobs())).jobs if j.job.startswith("cal-")]
        assert sweeps == [sweep]  # no second sweep of the chip
        assert any(f"{sweep} was left unfinished" in r.getMessage() for r in caplog.records)
