"""The whole job path: submit-to-result latency and jobs per second, shots per second, time per actor.

One run: the embedded stack as `awen run` starts it (memory, HAL with a
simulated 4-mode chip, scheduler, executor, calibration, each its own
process, ipc), calibrated once. Then:

* one-shot jobs: a 2-mode HOM circuit with 1 shot, submitted one after the
  other; latency from `sched.submit` to the memory actor's
  `mem.results_complete` (the client listens for nothing else), p50 and
  p99, and jobs per second;
* 100,000-shot HOM: shots per second (the median of ``--big`` jobs);
* the floor of this machine: what the job path's 6 one-way messages and 1
  durable commit cost with no work behind them (2 pings, 1 logged event);
* where a one-shot job's time goes, from the actors' event time stamps (a
  shorter run listening for every event).

Baseline, in the same process: the same circuit run by calling the simulator
directly (`sim.Device`, the same SCPI messages the HAL sends, no actors), per
job and per 100,000 shots. The shots are fetched as the HAL fetches them
(``FETC:HIST?``, counts per distinct pattern) and counted into the register as
the executor counts them. Targets: actor overhead under 5 ms per job at p50
(issue 7); 100,000 shots through awen at 0.8x the direct simulator's shots per
second or better (issue 19, decision 0017 §6).

The direct simulator's 100,000 shots are timed as the simulated device serves
them (`sim.DeviceServer.respond`, what the HAL's device does): it takes as long
as its shots take at the device's shot rate (1 MHz: 0.1 s), as any client of
it, awen included, must wait. `sim.Device.handle` alone only advances the
device's clock; its figure is printed too, as the simulator's compute alone,
which no client of the device can reach.

    python benchmarks/end_to_end.py [--jobs N] [--big N]
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
from protocol import photonica as px
from protocol import scpi
from protocol.calibration import Calibrate
from protocol.calibration_model import CalibrationFits, CalibrationModel
from protocol.circuit import CircuitBuilder
from protocol.memory import GetCalibration, LogEvent
from protocol.results import register_histogram
from protocol.scheduler import Submit
from protocol.system import Ping
from runtime import open_system
from sim import DeviceServer, parse_config

MODES, SEED = 4, 1
BIG = 100_000


def hom(shots: int) -> Any:
    return CircuitBuilder(2, shots=shots).input(0).input(1).bs(0, 1).measure([0, 1], "c").build()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def through_awen(data_dir: Path, jobs: int, big: int) -> dict[str, Any]:
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
            seconds = [(await run(events, hom(BIG), f"big-{i}"))[0] for i in range(big)]
            out["shots_per_s"] = BIG / statistics.median(seconds)
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


async def direct(fits: CalibrationFits, jobs: int, big: int) -> dict[str, float]:
    """The same HOM circuit on the simulator with the same messages the HAL sends.

    Per one-shot job (`sim.Device.handle`), and shots per second of 100,000 shots as the device
    serves them (`sim.DeviceServer.respond`: at its shot rate) and as its model computes them
    (`sim.Device.handle`), each the median of ``big`` runs.
    """
    sim_config = parse_config({"modes": MODES})
    server = DeviceServer(sim_config, seed=SEED)
    device = server.device
    description = sim_config.description()
    plan = compile_circuit(hom(1), description)
    phase = plan.phases[0]
    model = CalibrationModel.from_fits(1, fits)
    volts = model.volts_for(phase.mesh_phases)
    inputs = ";".join(f":INP:STAT {i.mode},PHOT" for i in phase.inputs)
    columns = list(phase.registers[0].columns)
    messages = [
        b"HEAT:VOLT:ALL " + scpi.block(volts.astype("<f8").tobytes()) + b";:SYST:ERR?",
        b"HEAT:VOLT:ALL?;:SYST:ERR?",
        f"INP:CLE;{inputs};:SOUR:ENAB ON;:SYST:ERR?".encode(),
        b"*OPC?;:SYST:ERR?",
    ]

    def accepted(reply: bytes | None) -> bytes:
        """The reply, which must end in the device's no-error entry (every message asks ``SYST:ERR?`` last)."""
        if reply is None or not reply.endswith(b'0,"No error"'):
            raise RuntimeError(f"the simulator refused a message of the baseline: {reply!r}")
        return reply

    def count(reply: bytes | None, shots: int) -> np.ndarray:
        """The shots' histogram, read and counted into the register as the driver and the executor do."""
        reply = accepted(reply)
        data = scpi.unblock(reply[: reply.rindex(b";")])
        (width,) = px.histogram_widths(data, shots, [MODES, 2 * MODES])
        patterns, counts = px.decode_histogram(data, width)
        return register_histogram(patterns, columns, counts)

    def shots_message(shots: int) -> bytes:
        return f"RUN:SHOT {shots};:FETC:HIST?;:SYST:ERR?".encode()

    def one(shots: int) -> None:
        for message in messages:
            accepted(device.handle(message))
        count(device.handle(shots_message(shots)), shots)

    async def served(shots: int) -> None:
        for message in messages:  # the lines as the device sends them, newline and all
            accepted((await server.respond(message) or b"").removesuffix(b"\n") or None)
        reply = await server.respond(shots_message(shots))
        count(reply and reply.removesuffix(b"\n"), shots)

    for _ in range(10):
        one(1)
    begin = time.perf_counter()
    for _ in range(jobs):
        one(1)
    per_job = (time.perf_counter() - begin) / jobs
    computed = []
    for _ in range(big):
        begin = time.perf_counter()
        one(BIG)
        computed.append(time.perf_counter() - begin)
    paced = []
    for _ in range(big):
        begin = time.perf_counter()
        await served(BIG)
        paced.append(time.perf_counter() - begin)
    return {
        "per_job": per_job,
        "shots_per_s": BIG / statistics.median(paced),
        "compute_shots_per_s": BIG / statistics.median(computed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--big", type=int, default=3, help="100,000-shot jobs, each side (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="awen-bench-") as tmp:
        awen = trio.run(through_awen, Path(tmp), args.jobs, args.big)
    baseline = trio.run(direct, awen["calibration"], args.jobs, args.big)
    per_job, direct_shots = baseline["per_job"], baseline["shots_per_s"]
    p50, p99 = percentile(awen["latency"], 0.5), percentile(awen["latency"], 0.99)
    print(
        f"awen end-to-end benchmark: {args.jobs} one-shot HOM jobs, then {args.big} of 100,000 shots; "
        f"simulated {MODES}-mode chip"
    )
    print()
    print(f"  {'direct simulator, one-shot job':<42}{per_job * 1e3:>9.2f} ms")
    print(f"  {'through awen, submit to results, p50':<42}{p50 * 1e3:>9.2f} ms   {p50 / per_job:.1f}x direct")
    print(f"  {'through awen, submit to results, p99':<42}{p99 * 1e3:>9.2f} ms")
    print(f"  {'actor overhead per job at p50':<42}{(p50 - per_job) * 1e3:>9.2f} ms   (target < 5 ms)")
    floor = percentile(awen["floor"], 0.5)
    print(f"  {'floor: 6 messages + 1 commit, no work':<42}{floor * 1e3:>9.2f} ms   (2 pings, 1 logged event)")
    print(f"  {'jobs per second through awen':<42}{awen['jobs_per_s']:>9.1f}")
    print(f"  {'shots per second, direct (as served)':<42}{direct_shots:>9,.0f}   (the device's shot rate binds)")
    print(f"  {'shots per second through awen':<42}{awen['shots_per_s']:>9,.0f}")
    print(
        f"  {'shots per second, simulator compute alone':<42}{baseline['compute_shots_per_s']:>12,.0f}   "
        "(sim.Device.handle: no device time)"
    )
    print()
    print(
        f"  100,000-shot job: {awen['shots_per_s']:,.0f} shots/s through awen, {direct_shots:,.0f} shots/s direct "
        f"simulator, ratio {awen['shots_per_s'] / direct_shots:.2f}x (target 0.8x)"
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
