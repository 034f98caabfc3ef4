"""The executor: plans run on the simulated chip through the HAL, frames journalled, faults handled.

The bench runs every actor in this process over mem://, the simulator on a TCP
port. Calibration here is the simulator's own truth, stored as a calibration
version: what a perfect calibration would find (the calibration actor is
tested against it elsewhere).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import trio

from actors.calibration import CalibrationActor
from actors.executor import ExecutorActor
from actors.hal import HalActor
from actors.jobs import wait_for_job
from actors.memory import MemoryActor
from actors.scheduler import SchedulerActor
from protocol.calibration_model import CalibrationFits
from protocol.circuit import CircuitBuilder, RunMode
from protocol.executor import Abort, GetExecutorStatus
from protocol.hal import ConfigureInputs, InputSetting, SetHeaters
from protocol.memory import GetJob, GetPlan, PutCalibration, QueryResults
from protocol.results import shot_values
from protocol.scheduler import GetQueue, SetStrategy, StrategyConfig, Submit
from runtime import Actor
from sim import DeviceServer, SimConfig, parse_fault, serve_tcp

from .chips import CHIP, truth
from .circuits import feed_forward, hom, two_rounds
from .helpers import eventually
from .stack import mem_runtime


@dataclass
class Bench:
    server: DeviceServer
    client: Actor
    executor: ExecutorActor
    scheduler: SchedulerActor
    calibration: CalibrationActor | None = None

    async def ask(self, to: str, request: Any) -> Any:
        with trio.fail_after(60):
            return await self.client.request(to, request)

    async def run(self, circuit: Any, job: str) -> Any:
        await self.ask("scheduler", Submit(circuit=circuit, job=job))
        return await self.finished(job)

    async def finished(self, job: str) -> Any:
        with trio.fail_after(120):
            return await wait_for_job(self.client, job)

    async def counts(self, job: str, slot: str) -> np.ndarray:
        results = (await self.ask("memory", QueryResults(job=job, slots=[slot]))).results
        return np.sum([r.value for r in results], axis=0)

    def fault_next(self, spec: str, offset: int = 1, on: str = "RUN:SHOT") -> None:
        """Inject a fault on the ``offset``-th message from now that begins with ``on`` (any message: "")."""
        plan = self.server.device.faults
        separator = "," if ":" in spec else ":"
        nth = (plan.counted(on) if on else plan.count) + offset
        plan.faults.append(parse_fault(f"{spec}{separator}nth={nth}" + (f",on={on}" if on else "")))


@asynccontextmanager
async def bench(
    tmp_path: Path,
    calibrate: bool = True,
    calibration: dict[str, Any] | None = None,
    quiet_hal: bool = False,
    chip: SimConfig = CHIP,
    **executor: Any,
) -> AsyncIterator[Bench]:
    """The whole stack on a simulated chip (``chip``, seed 7). ``calibrate``: store the chip's truth as
    version 1; ``calibration``: also run a calibration actor with this configuration."""
    server = DeviceServer(chip, seed=7)
    runtime = mem_runtime("memory", "hal", "scheduler", "executor", "calibration", "me")
    async with trio.open_nursery() as outside:
        host, port = await outside.start(serve_tcp, server, "127.0.0.1", 0)
        memory = MemoryActor("memory", runtime, data_dir=str(tmp_path / "data"), synchronous="normal")
        device: dict[str, Any] = {"name": "chip", "url": f"tcp://{host}:{port}", "timeout_s": 1.0}
        if quiet_hal:  # no watchdog feeding or temperature polls: only the job talks to the device
            device |= {"watchdog_s": 0, "temperature_every_s": 3600}
        hal = HalActor("hal", runtime, devices=[device])
        scheduler = SchedulerActor("scheduler", runtime)
        client = Actor("me", runtime)
        async with trio.open_nursery() as nursery:
            for actor in (memory, hal, client):
                await nursery.start(actor.run)
            if calibrate:
                model = truth(server)
                await client.request(
                    "memory", PutCalibration(device="chip", identity="simulator truth", fits=model.fits())
                )
            await nursery.start(scheduler.run)
            executor_actor = ExecutorActor("executor", runtime, **({"batch_shots": 2000, "backoff_s": 0.01} | executor))
            await nursery.start(executor_actor.run)
            calibration_actor = None
            if calibration is not None:
                calibration_actor = CalibrationActor("calibration", runtime, **calibration)
                await nursery.start(calibration_actor.run)
            yield Bench(server, client, executor_actor, scheduler, calibration_actor)
            nursery.cancel_scope.cancel()
        outside.cancel_scope.cancel()


async def test_hom_runs_end_to_end_and_shows_the_dip(tmp_path):
    async with bench(tmp_path) as b:
        record = await b.run(hom(10_000), "hom")
        assert record.state == "completed", record.reason
        assert record.frames == 5  # 10,000 shots in batches of 2,000, each a committed frame
        counts = await b.counts("hom", "p0.c")
        assert counts.sum() == 10_000
        singles = counts[0b01] + counts[0b10]
        # Indistinguishable photons on a 50:50 coupler never leave by different ports: only dark counts could.
        assert counts[0b11] <= 3
        assert singles > 5000
        results = (await b.ask("memory", QueryResults(job="hom", values=False))).results
        assert {(r.device, r.calibration, r.plan) for r in results} == {("chip", 1, record.plan)}


async def test_a_job_submitted_again_after_it_ended_is_dropped_not_run_again(tmp_path, caplog):
    async with bench(tmp_path) as b:
        first = await b.run(hom(2000), "once")
        assert first.state == "completed", first.reason
        again = await b.ask("scheduler", Submit(circuit=hom(2000), job="once"))
        assert not again.created
        after = await b.run(hom(2000), "next")  # the executor goes on, its breaker untouched
        assert after.state == "completed", after.reason
        assert b.executor.failures == 0
        record = (await b.ask("memory", GetJob(job="once"))).record
        assert (record.state, record.frames, record.results) == ("completed", first.frames, first.results)
        # Its plan was at hand, so it went to the waiting executor while the store looked it up.
        assert "dropped once, which the store did not accept: memory: job 'once' is completed" in caplog.text


async def test_a_distinguishing_phase_gives_classical_coincidences(tmp_path):
    """Same chip, photons sent through a 0/100 splitter: every shot is a coincidence (minus losses)."""
    circuit = hom(4000, theta=0.0)
    async with bench(tmp_path) as b:
        await b.run(circuit, "straight")
        counts = await b.counts("straight", "p0.c")
        efficiency = 0.93 * 10 ** (-(1.5 + 0.1 * 4 + 1.0) / 10)
        assert counts[0b11] / 4000 == np.clip(counts[0b11] / 4000, efficiency**2 - 0.1, efficiency**2 + 0.1)


async def test_a_circuit_without_calibration_fails_with_the_reason(tmp_path):
    async with bench(tmp_path, calibrate=False) as b:
        record = await b.run(hom(100), "uncalibrated")
        assert record.state == "failed"
        assert "has no calibration: calibrate it before running circuits" in record.reason


async def test_a_calibration_for_another_chip_fails_the_job_by_name_and_the_executor_goes_on(tmp_path):
    """A version with fits for 64 heaters (an 8-mode chip's) on this 4-mode chip: before, the executor
    crashed on it and, restarted, took the same job again, for ever."""
    async with bench(tmp_path) as b:
        wrong = CalibrationFits(phi0=[0.0] * 64, alpha=[1.0] * 64)
        await b.ask("memory", PutCalibration(device="chip", identity="another chip", fits=wrong))
        record = await b.run(hom(100), "other-chip")
        assert record.state == "failed"
        assert "the plan sets 16 heaters; calibration version 2 knows 64" in record.reason
        await b.ask("memory", PutCalibration(device="chip", identity="this chip", fits=truth(b.server).fits()))
        after = await b.run(hom(100), "this-chip")
        assert after.state == "completed", after.reason


async def test_a_dropped_link_is_retried_and_the_job_completes(tmp_path):
    async with bench(tmp_path) as b:
        b.fault_next("close", offset=2)  # the second of three shot runs
        record = await b.run(hom(6000), "flaky")
        assert record.state == "completed", record.reason
        assert (await b.counts("flaky", "p0.c")).sum() == 6000


async def test_an_interlock_fails_the_job_keeps_partial_results_and_leaves_the_device_safe(tmp_path):
    async with bench(tmp_path) as b:
        b.fault_next("interlock", offset=4)  # the fourth of ten shot runs
        record = await b.run(hom(20_000), "tripped")
        assert record.state == "failed"
        assert "interlock" in record.reason
        partial = await b.ask("memory", QueryResults(job="tripped"))
        assert partial.partial
        assert not b.server.device.chip.voltages.any()


async def test_abort_stops_the_job_within_its_phase(tmp_path):
    async with bench(tmp_path) as b:
        await b.ask("scheduler", Submit(circuit=hom(400_000), job="long"))

        async def running() -> bool:
            status = await b.ask("executor", GetExecutorStatus())
            return status.job == "long" and b.server.device.results is not None

        await eventually(running)
        await b.ask("executor", Abort(job="long", reason="wrong sample"))
        record = await b.finished("long")
        assert (record.state, record.reason) == ("cancelled", "wrong sample")
        assert 0 < record.frames < 200
        assert not b.server.device.chip.voltages.any()
        assert not b.server.device.sources_on


async def test_a_stored_photon_comes_back_through_its_delay_line_with_the_expected_loss(tmp_path):
    """A photon waits 300 ns in a delay line and comes back for a second pass, with feed-forward programmed."""
    first_pass = CircuitBuilder(3, shots=3000).input(0).input(1).store(0, "m").measure([1], "a")
    circuit = feed_forward(first_pass, wait_ns=300).measure([2], "b").build()
    async with bench(tmp_path) as b:
        record = await b.run(circuit, "ff")
        assert record.state == "completed", record.reason
        a = await b.counts("ff", "p0.a")
        stored = await b.counts("ff", "p0.b")
        assert a.sum() == stored.sum() == 3000
        # The loaded photon crosses the delay line (12 round trips of 25 ns, each keeping exp(-1/30)) and the
        # mesh once more: relative to a first-pass detection it is seen exp(-12/30) * 0.4 dB as often.
        expected = math.exp(-12 / 30) * 10 ** (-0.04)
        assert abs(stored[1] / a[1] - expected) < 0.08, (stored, a)


def _two_registers(shots: int, passes: int) -> Any:
    if passes == 2:  # the second pass depends on each shot's first (feed-forward)
        first_pass = CircuitBuilder(3, shots=shots).input(0).input(1).store(0, "m").measure([1], "a")
        return feed_forward(first_pass, wait_ns=300).measure([2], "b").build()
    builder = CircuitBuilder(3, shots=shots).input(0).input(1).bs(0, 1).bs(1, 2, theta=0.4)
    return builder.measure([0], "a").measure([1, 2], "b").build()


@pytest.mark.parametrize("passes", [1, 2])
async def test_a_100k_shot_job_stores_what_every_shot_s_pattern_gives(tmp_path, passes):
    """The shots come back as counts per pattern; the stored registers are what a row per shot gave before.

    Two registers and their joint slot, in one pass (drawn as one histogram from the exact
    distribution) or two (feed-forward); every shot the device fired is kept aside, in order,
    and counted the old way.
    """
    circuit = _two_registers(100_000, passes)
    async with bench(tmp_path, quiet_hal=True, batch_shots=30_000) as b:
        device = b.server.device
        fired: list[np.ndarray] = []
        handle = device.handle

        def keeping_every_shot(message: bytes, *args: Any, **kwargs: Any) -> bytes | None:
            reply = handle(message, *args, **kwargs)
            if message.startswith(b"RUN:SHOT"):
                fired.append(device.results.patterns.copy())  # every shot's pattern, in firing order
            return reply

        device.handle = keeping_every_shot  # type: ignore[method-assign]
        record = await b.run(circuit, "big")
        assert record.state == "completed", record.reason
        assert record.frames == 4  # 30,000 + 30,000 + 30,000 + 10,000
        plan = (await b.ask("memory", GetPlan(plan=record.plan))).body
        every_shot = np.concatenate(fired)
        assert every_shot.shape[0] == 100_000
        expected = {v.slot: v.value for v in shot_values(plan.phases[0], every_shot)}
        assert set(expected) == {"p0.a", "p0.b", "p0.joint"}
        for slot, counts in expected.items():
            assert np.array_equal(await b.counts("big", slot), counts), slot
        assert np.count_nonzero(expected["p0.joint"]) > 2


async def test_a_corrupted_reply_is_caught_and_the_job_still_completes_with_every_shot(tmp_path):
    async with bench(tmp_path) as b:
        b.fault_next("corrupt:at=0", offset=2)  # the second shot run's reply, its block header
        async with b.client.open_event_stream("exec.phase_done") as done:
            record = await b.run(hom(6000), "garbled")
            assert (await done.receive()).body.retries == 1
        assert record.state == "completed", record.reason
        assert (await b.counts("garbled", "p0.c")).sum() == 6000


async def test_a_device_error_is_retried_with_backoff_and_the_job_completes(tmp_path):
    async with bench(tmp_path, quiet_hal=True, retries=2) as b, b.client.open_event_stream("exec.phase_done") as done:
        b.fault_next("error:code=-300")  # the first shot run fails once
        record = await b.run(hom(6000), "glitch")
        assert record.state == "completed", record.reason
        assert (await done.receive()).body.retries == 1


async def test_a_device_error_past_the_retries_fails_the_job_with_its_number_and_keeps_the_results(tmp_path):
    async with bench(tmp_path, quiet_hal=True, retries=0) as b:
        b.fault_next("error:code=-300", offset=2)  # after the first committed batch
        record = await b.run(hom(20_000), "broken")
        assert record.state == "failed"
        assert "device error -300" in record.reason
        assert "after 1 tries" in record.reason
        kept = await b.ask("memory", QueryResults(job="broken"))
        assert kept.partial


async def test_a_cyclic_job_runs_its_plan_every_period_and_keeps_each_cycle(tmp_path):
    circuit = msgspec.structs.replace(hom(2000), run=RunMode(mode="cyclic", period_s=0.05, cycles=3))
    async with bench(tmp_path) as b:
        record = await b.run(circuit, "cyclic")
        assert (record.state, record.reason) == ("completed", "3 cycles")
        results = (await b.ask("memory", QueryResults(job="cyclic"))).results
        cycles = [int(r.value) for r in results if r.slot == "cycle"]
        assert cycles == [0, 1, 2]
        assert (await b.counts("cyclic", "p0.c")).sum() == 6000


async def test_a_continuous_job_streams_count_rates_until_stopped_and_stores_nothing(tmp_path):
    circuit = msgspec.structs.replace(hom(1000), run=RunMode(mode="continuous"))
    async with bench(tmp_path) as b, b.client.open_event_stream("exec.rates") as rates:
        await b.ask("scheduler", Submit(circuit=circuit, job="live"))
        seen = []
        with trio.fail_after(60):
            async for event in rates:
                seen.append(event.body)
                if len(seen) == 3:
                    break
        assert all(r.job == "live" and r.shots == 1000 and len(r.rates) == CHIP.modes for r in seen)
        assert all(sum(r.registers["c"]) == pytest.approx(1.0) for r in seen)
        await b.ask("executor", Abort(job="live", reason="aligned"))
        record = await b.finished("live")
        assert (record.state, record.reason) == ("cancelled", "aligned")
        assert record.results == 0
        assert not b.server.device.chip.voltages.any()


async def test_a_job_resuming_after_a_recalibration_is_planned_again_and_its_results_say_so(tmp_path):
    async with bench(tmp_path) as b:
        await b.ask("scheduler", Submit(circuit=two_rounds(40_000), job="long"))

        async def started() -> bool:
            return (await b.ask("memory", GetJob(job="long"))).record.frames >= 2

        await eventually(started)
        await b.ask("memory", PutCalibration(device="chip", identity="again", fits=truth(b.server).fits()))
        await b.ask("scheduler", Submit(circuit=hom(2000, priority=5), job="urgent"))
        record = await b.finished("long")
        assert record.state == "completed", record.reason
        results = (await b.ask("memory", QueryResults(job="long", values=False))).results
        versions = {(r.slot, r.calibration) for r in results}
        assert ("p0.a", 1) in versions  # the first phase ran under version 1 ...
        assert ("p1.b", 2) in versions  # ... the second, after preemption, under version 2
        assert (await b.ask("memory", GetJob(job="urgent"))).record.state == "completed"


async def test_a_heater_that_does_not_hold_its_voltage_is_reported_and_plans_move_off_its_modes(tmp_path):
    async with bench(tmp_path, quiet_hal=True) as b:
        await b.ask("scheduler", SetStrategy(strategy=StrategyConfig(kind="dynamic")))

        async def physical_modes(job: str) -> set[int]:
            record = await b.finished(job)
            assert record.state == "completed", record.reason
            plan = (await b.ask("memory", GetPlan(plan=record.plan))).body
            return {p.physical for phase in plan.phases for p in phase.placement}

        b.server.device.chip.stuck[0] = 1.5  # the theta heater of the MZI on modes 0 and 1 is stuck
        for i in range(3):  # each job sets the heaters, reads 1.5 V back, and reports modes 0 and 1 failing
            await b.ask("scheduler", Submit(circuit=hom(100), job=f"stuck-{i}"))
            assert await physical_modes(f"stuck-{i}") == {0, 1}
        await b.ask("scheduler", Submit(circuit=hom(100), job="after"))
        assert not await physical_modes("after") & {0, 1}


async def test_a_heater_that_sticks_between_jobs_is_caught_by_the_hal_and_reported_by_the_next_job(tmp_path):
    async with bench(tmp_path, quiet_hal=True) as b:
        await b.ask("scheduler", SetStrategy(strategy=StrategyConfig(kind="dynamic")))
        assert (await b.run(hom(100), "before")).state == "completed"
        async with b.client.open_event_stream("hal.readback_mismatch") as alarms:
            b.server.device.chip.stuck[0] = 1.5  # while nothing runs
            with trio.fail_after(30):
                alarm = (await alarms.receive()).body  # the HAL's idle read-back
        assert alarm.heaters == [0]
        for i in range(3):
            assert (await b.run(hom(100), f"stuck-{i}")).state == "completed"
        record = await b.run(hom(100), "after")
        plan = (await b.ask("memory", GetPlan(plan=record.plan))).body
        assert not {p.physical for phase in plan.phases for p in phase.placement} & {0, 1}


async def test_a_device_that_keeps_failing_opens_the_breaker_until_a_probe_succeeds(tmp_path):
    async with bench(tmp_path, quiet_hal=True, retries=0, breaker_threshold=2, breaker_probe_s=1.0) as b:
        for job in ("first", "second"):
            b.fault_next("error:code=-300")
            assert (await b.run(hom(6000), job)).state == "failed"

        async def suspended() -> dict[str, str]:
            return (await b.ask("scheduler", GetQueue())).suspended

        why = (await eventually(suspended))["breaker:chip"]
        assert "2 jobs in a row failed" in why
        assert (await b.ask("executor", GetExecutorStatus())).state == "breaker-open"
        await b.ask("scheduler", Submit(circuit=hom(2000), job="waits"))
        assert (await b.ask("memory", GetJob(job="waits"))).record.state in ("queued", "planned")
        record = await b.finished("waits")  # the probe succeeds, dispatch resumes, the job runs
        assert record.state == "completed", record.reason
        assert (await b.ask("executor", GetExecutorStatus())).breaker_failures == 0


async def test_the_same_seed_and_plan_give_the_same_results(tmp_path):
    runs = []
    for attempt in range(2):
        async with bench(tmp_path / str(attempt), quiet_hal=True) as b:
            await b.run(hom(6000), "same")
            runs.append([r.value.tolist() for r in (await b.ask("memory", QueryResults(job="same"))).results])
    assert runs[0] == runs[1]


async def test_shots_are_fired_only_on_the_device_as_the_executor_set_it_while_another_client_changes_it(tmp_path):
    # The executor keeps what it set (heaters, inputs) and sends only what
    # changes; another client of the HAL changing the chip between two shot
    # batches must not go unnoticed. The HAL checks the executor's state
    # version under the device's lock, in the same step as the shots.
    async with bench(tmp_path) as b:
        device = b.server.device
        runs: list[tuple[tuple[float, ...], tuple[str, ...]]] = []
        handle = device.handle

        def recording(message: bytes, faults: Any = None) -> Any:
            if b"RUN:SHOT" in message.upper():
                runs.append(
                    (tuple(device.chip.applied_voltages().round(9)), tuple(item.kind for item in device.inputs))
                )
            return handle(message, faults)

        device.handle = recording  # type: ignore[method-assign]
        intruded = 0

        async def intruder() -> None:
            nonlocal intruded
            for i in range(10_000):
                if i % 2:
                    await b.ask("hal", SetHeaters(device="chip", changes={i % 16: 0.777}))
                else:
                    await b.ask("hal", ConfigureInputs(device="chip", inputs=[InputSetting(mode=1, state="vacuum")]))
                intruded += 1
                await trio.sleep(0.03)  # room for the executor's set-and-fire, even on a loaded machine

        records = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(intruder)
            while len(records) < 4 or intruded <= 10:  # at least 4 jobs, and at least 10 intrusions among them
                records.append(await b.run(hom(6000), f"hom-{len(records)}"))
            nursery.cancel_scope.cancel()
        assert [r.state for r in records] == ["completed"] * len(records), [r.reason for r in records]
        for i in range(len(records)):
            assert (await b.counts(f"hom-{i}", "p0.c")).sum() == 6000
        assert runs
        assert {inputs[:2] for _, inputs in runs} == {("PHOT", "PHOT")}, "shots fired with another client's inputs"
        assert all(0.777 not in volts for volts, _ in runs), "shots fired on another client's heater setting"
        assert len({volts for volts, _ in runs}) == 1  # one circuit, one setting: every batch on it
