"""The whole job path: submit-to-result latency and jobs per second, shots per second, time per actor.

One run: the embedded stack as `awen run` starts it (memory, HAL with a
simulated 4-mode chip, scheduler, executor, calibration, each its own
process, ipc), calibrated once. Then:

* one-shot jobs: a 2-mode HOM circuit with 1 shot, submitted one after the
  other; latency from `sched.submit` to the memory actor's
  `mem.results_complete` (the client listens for nothing else), p50 and
  p99, and jobs per second;
* 100,000-shot HOM: shots per second;
* the floor of this machine: what the job path's 6 one-way messages and 1
  durable commit cost with no work behind them (2 pings, 1 logged event);
* where a one-shot job's time goes, from the actors' event time stamps (a
  shorter run listening for every event).

Baseline, in the same process: the same circuit run by calling the simulator
directly (`sim.Device`, the same SCPI messages the HAL sends, no actors), per
job and per 100,000 shots. Target (issue 7): actor overhead under 5 ms per
job at p50.

    python benchmarks/end_to_end.py [--jobs N]
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's directory comes first on sys.path, where benchmarks/hal.py
# would pass for the `hal` package.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import trio

from actors.scheduler import compile_circuit
from awen.run import prepare, system_config, wait_started
from protocol import scpi
from protocol.calibration import Calibrate
from protocol.calibration_model import CalibrationFits, CalibrationModel
from protocol.circuit import CircuitBuilder
from protocol.memory import GetCalibration, LogEvent
from protocol.scheduler import Submit
from protocol.system import Ping
from runtime import open_system
from sim import Device, parse_config

MODES, SEED = 4, 1


def hom(shots: int) -> Any:
    return CircuitBuilder(2, shots=shots).input(0).input(1).bs(0, 1).measure([0, 1], "c").build()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def through_awen(data_dir: Path, jobs: int) -> dict[str, Any]:
    sim_config = parse_config({"modes": MODES})
    factory = prepare(data_dir, sim_config, SEED)
    config = system_config(data_dir, MODES, SEED, factory, verbose=False)
    out: dict[str, Any] = {}
    async with open_system(config) as sup:
        await wait_started(sup)
        await sup.request("calibration", Calibrate())
        out["calibration"] = (await sup.request("memory", GetCalibration(device="chip"))).fits

        async def run(events: Any, circuit: Any, job: str) -> tuple[float, dict[str, float]]:
            stamps: dict[str, float] = {}
            begin = time.time()
            await sup.request("scheduler", Submit(circuit=circuit, job=job))
            stamps["accepted"] = time.time()
            async for event in events:
                if getattr(event.body, "job", None) != job:
                    continue
                stamps.setdefault(event.type, event.ts)
                if event.type == "mem.results_complete":
                    return time.time() - begin, {k: v - begin for k, v in stamps.items()}
            raise RuntimeError("event stream ended")

        # Latency as a client waiting for its results sees it: listening for nothing else, which
        # would load the machine the actors share.
        async with sup.open_event_stream("mem.results_complete") as events:
            for i in range(5):
                await run(events, hom(1), f"warm-{i}")
            latencies = []
            began = time.perf_counter()
            for i in range(jobs):
                latency, _ = await run(events, hom(1), f"one-{i}")
                latencies.append(latency)
            out["jobs_per_s"] = jobs / (time.perf_counter() - began)
            out["latency"] = latencies
            seconds, _ = await run(events, hom(100_000), "big")
            out["shots_per_s"] = 100_000 / seconds
        # The floor here: a one-shot job's critical path is 6 one-way messages between actor
        # processes (submit, assignment, shots asked and answered, last write, results event) and
        # 1 durable commit (the acceptance commits beside it); the same without any work: 2 pings,
        # 1 logged event.
        floor = []
        for _ in range(jobs):
            begin = time.perf_counter()
            await sup.request("scheduler", Ping())
            await sup.request("executor", Ping())
            await sup.request("memory", LogEvent(type="bench.floor", body={}))
            floor.append(time.perf_counter() - begin)
        out["floor"] = floor
        # Where the time goes: every event's time stamp, in a shorter run of its own.
        async with sup.open_event_stream("") as events:
            breakdowns = [(await run(events, hom(1), f"traced-{i}"))[1] for i in range(max(10, jobs // 4))]
        keys = (
            "accepted",
            "sched.job_planned",
            "sched.job_dispatched",
            "exec.job_started",
            "exec.phase_done",
            "exec.job_ended",
            "mem.results_complete",
        )
        seen = [k for k in keys if all(k in b for b in breakdowns)]
        out["breakdown"] = dict(
            sorted(((k, statistics.median(b[k] for b in breakdowns)) for k in seen), key=lambda kv: kv[1])
        )
    return out


def direct(fits: CalibrationFits, jobs: int) -> tuple[float, float]:
    """The same HOM circuit on `sim.Device` with the same messages the HAL sends: per job, and shots/s."""
    sim_config = parse_config({"modes": MODES})
    device = Device(sim_config, seed=SEED)
    description = sim_config.description()
    plan = compile_circuit(hom(1), description)
    phase = plan.phases[0]
    model = CalibrationModel.from_fits(1, fits)
    volts = model.volts_for(phase.mesh_phases)
    inputs = ";".join(f":INP:STAT {i.mode},PHOT" for i in phase.inputs)

    def one(shots: int) -> None:
        device.handle(b"HEAT:VOLT:ALL " + scpi.block(volts.astype("<f8").tobytes()) + b";:SYST:ERR?\n")
        device.handle(b"HEAT:VOLT:ALL?;:SYST:ERR?\n")
        device.handle(f"INP:CLE;{inputs};:SOUR:ENAB ON;:SYST:ERR?\n".encode())
        device.handle(b"*OPC?;:SYST:ERR?\n")
        device.handle(f"RUN:SHOT {shots};:FETC:PATT?;:SYST:ERR?\n".encode())
        patterns = np.zeros((shots, MODES), dtype=np.uint8)
        _ = np.bincount((patterns[:, [0, 1]] > 0) @ np.array([2, 1]), minlength=4)

    for _ in range(10):
        one(1)
    begin = time.perf_counter()
    for _ in range(jobs):
        one(1)
    per_job = (time.perf_counter() - begin) / jobs
    begin = time.perf_counter()
    one(100_000)
    return per_job, 100_000 / (time.perf_counter() - begin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="awen-bench-") as tmp:
        awen = trio.run(through_awen, Path(tmp), args.jobs)
    per_job, direct_shots = direct(awen["calibration"], args.jobs)
    p50, p99 = percentile(awen["latency"], 0.5), percentile(awen["latency"], 0.99)
    print(f"awen end-to-end benchmark: {args.jobs} one-shot HOM jobs, then 100,000 shots; simulated {MODES}-mode chip")
    print()
    print(f"  {'direct simulator, one-shot job':<42}{per_job * 1e3:>9.2f} ms")
    print(f"  {'through awen, submit to results, p50':<42}{p50 * 1e3:>9.2f} ms   {p50 / per_job:.1f}x direct")
    print(f"  {'through awen, submit to results, p99':<42}{p99 * 1e3:>9.2f} ms")
    print(f"  {'actor overhead per job at p50':<42}{(p50 - per_job) * 1e3:>9.2f} ms   (target < 5 ms)")
    floor = percentile(awen["floor"], 0.5)
    print(f"  {'floor: 6 messages + 1 commit, no work':<42}{floor * 1e3:>9.2f} ms   (2 pings, 1 logged event)")
    print(f"  {'jobs per second through awen':<42}{awen['jobs_per_s']:>9.1f}")
    print(f"  {'shots per second, direct':<42}{direct_shots:>9,.0f}")
    print(
        f"  {'shots per second through awen':<42}{awen['shots_per_s']:>9,.0f}   "
        f"{awen['shots_per_s'] / direct_shots:.2f}x direct"
    )
    print()
    print("  where a one-shot job's time goes (median ms after submit, by the actors' event time stamps):")
    previous = 0.0
    for key, at in awen["breakdown"].items():
        print(f"    {key:<24}{at * 1e3:>8.2f}   (+{(at - previous) * 1e3:.2f})")
        previous = at
    sys.stdout.flush()


if __name__ == "__main__":
    main()
