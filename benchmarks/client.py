"""Through the front door: a variational loop on the blocking client, next to the simulator and the floor.

One run: ``awen up`` as a user starts it (a subprocess: temporary
``AWEN_DATA_DIR``, a free ``--port``, ``--modes 4``), calibrated once with
``lab.calibrate()``. Then:

* a variational loop: N jobs of one 4-mode circuit, each with new random
  beam-splitter angles (no plan is reused), submitted and awaited one after
  the other through ``awen.connect()`` (``lab.submit(c).wait()``): p50 and p99
  per iteration;
* the direct simulator's own time for the same circuits (`sim.Device`, the
  SCPI messages the HAL sends, in this process; planned beforehand, as in
  benchmarks/end_to_end.py);
* the floor, measured in the same run: end_to_end.py's (a job's 6 one-way
  messages between actors and 1 durable commit: 2 pings, 1 logged event, from
  inside the mesh) plus the client's 2 round trips to the door (submit, wait:
  2 ``sys.ping`` to the door from the blocking client, its portal thread hop
  included). Target: p50 within 2x the floor plus the simulator's own time;
* 8 clients at once (8 processes, each its own ``awen.connect()``): jobs per
  second in total;
* where a 100-shot HOM job's time goes, from the actors' event time stamps
  (a trio client subscribed to every event, in a shorter run of its own).

    python benchmarks/client.py [--jobs N] [--shots S] [--quick]
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's directory comes first on sys.path, where benchmarks/hal.py
# would pass for the `hal` package; the repository's root, for `benchmarks.end_to_end`.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import concurrent.futures
import json
import multiprocessing
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import trio

import awen
from actors.scheduler import compile_circuit
from benchmarks.end_to_end import MODES, SEED, hom, percentile
from protocol import photonica as px
from protocol import scpi
from protocol.calibration_model import CalibrationFits, CalibrationModel
from protocol.circuit import Circuit, CircuitBuilder
from protocol.memory import LogEvent
from protocol.results import register_histogram
from protocol.system import Ping
from runtime import Actor, ResolvedSystem
from sim import Device, parse_config

PAIRS = [(0, 1), (2, 3), (1, 2), (0, 1), (2, 3), (1, 2)]
"""The variational circuit's beam splitters: a 4-mode mesh, depth 6."""
CLIENTS = 8


def variational(rng: np.random.Generator, shots: int) -> Circuit:
    """Two photons into a 4-mode mesh with new random angles: a new plan every time."""
    builder = CircuitBuilder(MODES, shots=shots).input(0).input(1)
    for a, b in PAIRS:
        builder = builder.bs(a, b, theta=float(rng.uniform(0, np.pi)), phi=float(rng.uniform(0, 2 * np.pi)))
    return builder.measure(list(range(MODES)), "c").build()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def awen_up(data_dir: Path, port: int) -> Iterator[dict[str, Any]]:
    """``awen up`` in ``data_dir`` until the block ends (SIGTERM, then SIGKILL); its ``awen.json``."""
    env = {**os.environ, "AWEN_DATA_DIR": str(data_dir)}
    command = [sys.executable, "-m", "awen.cli", "up", "--port", str(port), "--modes", str(MODES), "--no-http"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    up = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("awen: up"):
                up.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not up.wait(0.1):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("awen up did not start:\n" + "".join(lines[-20:]))
        yield json.loads((data_dir / "awen.json").read_text())
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)


# --- through the client -------------------------------------------------------------------------


def loop(lab: awen.Lab, circuits: list[Circuit]) -> list[float]:
    """Submit and wait, one after the other: seconds per iteration."""
    times = []
    for circuit in circuits:
        begin = time.perf_counter()
        lab.submit(circuit).wait()
        times.append(time.perf_counter() - begin)
    return times


def door_pings(lab: awen.Lab, count: int) -> list[float]:
    """Round trips to the door from the blocking client (through its portal thread)."""
    times = []
    for _ in range(count):
        begin = time.perf_counter()
        lab.ping()
        times.append(time.perf_counter() - begin)
    return times


def mesh_floor(system_file: str, count: int) -> list[float]:
    """end_to_end.py's floor: 2 pings and 1 logged event, from a client-only actor inside the mesh."""

    async def run() -> list[float]:
        client = Actor(f"bench-{os.getpid()}", ResolvedSystem.load(system_file).runtime_for())
        times = []
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            for _ in range(count):
                begin = time.perf_counter()
                await client.request("scheduler", Ping())
                await client.request("executor", Ping())
                await client.request("memory", LogEvent(type="bench.floor", body={}))
                times.append(time.perf_counter() - begin)
            nursery.cancel_scope.cancel()
        return times

    return trio.run(run)


def one_client(url: str, shots: int, jobs: int, seed: int, start_at: float) -> tuple[float, float]:
    """One of the concurrent clients (its own process): wall-clock start and end of its jobs."""
    rng = np.random.default_rng(seed)
    circuits = [variational(rng, shots) for _ in range(jobs)]
    lab = awen.connect(url)
    time.sleep(max(0.0, start_at - time.time()))
    begin = time.time()
    loop(lab, circuits)
    end = time.time()
    lab.close()
    return begin, end


def concurrent_clients(url: str, shots: int, jobs: int) -> float:
    """Jobs per second, all clients together."""
    context = multiprocessing.get_context("spawn")
    start_at = time.time() + 3.0  # time for every process to import and connect
    with concurrent.futures.ProcessPoolExecutor(CLIENTS, mp_context=context) as pool:
        futures = [pool.submit(one_client, url, shots, jobs, 100 + i, start_at) for i in range(CLIENTS)]
        spans = [f.result() for f in futures]
    return CLIENTS * jobs / (max(e for _, e in spans) - min(b for b, _ in spans))


async def traced(url: str, circuits: list[Circuit]) -> dict[str, float]:
    """Median seconds after submit of each event of a job, of the submit's reply and of the wait's."""
    stamps: list[dict[str, float]] = []
    async with awen.open_lab(url) as lab, lab.events("") as events:
        for circuit in circuits:
            begin = time.time()
            job = await lab.submit(circuit)
            seen = {"client: submit answered": time.time() - begin}

            async def follow(job_id: str, seen: dict[str, float], begin: float) -> None:
                async for env in events:
                    if getattr(env.body, "job", None) == job_id:
                        seen.setdefault(env.type, env.ts - begin)
                        if env.type == "mem.results_complete":
                            return

            async with trio.open_nursery() as nursery:
                nursery.start_soon(follow, job.id, seen, begin)
                await job.wait()
                seen["client: wait answered"] = time.time() - begin
            stamps.append(seen)
    keys = {k for s in stamps for k in s if sum(k in t for t in stamps) > len(stamps) // 2}
    medians = {k: statistics.median(s[k] for s in stamps if k in s) for k in keys}
    return dict(sorted(medians.items(), key=lambda kv: kv[1]))


# --- the direct simulator ------------------------------------------------------------------------


def direct(fits: CalibrationFits, circuits: list[Circuit]) -> list[float]:
    """Each circuit on `sim.Device` with the messages the HAL sends (planned beforehand): seconds each."""
    sim_config = parse_config({"modes": MODES})
    device = Device(sim_config, seed=SEED)
    description = sim_config.description()
    model = CalibrationModel.from_fits(1, fits)
    plans = [compile_circuit(c, description) for c in circuits]

    def run(plan: Any, shots: int) -> None:
        for phase in plan.phases:
            volts = model.volts_for(phase.mesh_phases)
            inputs = ";".join(f":INP:STAT {i.mode},PHOT" for i in phase.inputs)
            device.handle(b"HEAT:VOLT:ALL " + scpi.block(volts.astype("<f8").tobytes()) + b";:SYST:ERR?")
            device.handle(b"HEAT:VOLT:ALL?;:SYST:ERR?")
            device.handle(f"INP:CLE;{inputs};:SOUR:ENAB ON;:SYST:ERR?".encode())
            device.handle(b"*OPC?;:SYST:ERR?")
            reply = device.handle(f"RUN:SHOT {shots};:FETC:HIST?;:SYST:ERR?".encode())
            if reply is None or not reply.endswith(b'0,"No error"'):
                raise RuntimeError(f"the simulator refused a message of the baseline: {reply!r}")
            patterns, counts = px.decode_histogram(scpi.unblock(reply[: reply.rindex(b";")]), MODES)
            for read in phase.registers:  # counted into the registers, as the executor does
                register_histogram(patterns, list(read.columns), counts)

    for plan, circuit in list(zip(plans, circuits, strict=True))[:10]:
        run(plan, circuit.shots)
    times = []
    for plan, circuit in zip(plans, circuits, strict=True):
        begin = time.perf_counter()
        run(plan, circuit.shots)
        times.append(time.perf_counter() - begin)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=500, help="iterations of the variational loop (default 500)")
    parser.add_argument("--shots", type=int, default=100, help="shots per job (default 100)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 40 jobs, fewer for the rest")
    args = parser.parse_args()
    jobs = 40 if args.quick else args.jobs
    per_client = max(5, jobs // (4 * CLIENTS) if args.quick else jobs // CLIENTS)
    traced_jobs = max(10, jobs // 10)
    rng = np.random.default_rng(SEED)
    circuits = [variational(rng, args.shots) for _ in range(jobs)]
    warm = [variational(rng, args.shots) for _ in range(10)]
    with tempfile.TemporaryDirectory(prefix="awen-bench-client-") as tmp:
        port = free_port()
        url = f"tcp://127.0.0.1:{port}"
        with awen_up(Path(tmp), port) as info:
            began = time.perf_counter()
            lab = awen.connect(url)
            connected = time.perf_counter() - began
            began = time.perf_counter()
            lab.calibrate()
            calibrated = time.perf_counter() - began
            fits = lab.calibration().fits
            loop(lab, warm)
            latency = loop(lab, circuits)
            pings = door_pings(lab, jobs)
            lab.close()
            inside = mesh_floor(info["system_file"], jobs)
            breakdowns = {
                f"a {args.shots}-shot HOM job (its plan reused)": trio.run(
                    traced, url, [hom(args.shots)] * traced_jobs
                ),
                "a variational job (a new plan, heaters set)": trio.run(
                    traced, url, [variational(rng, args.shots) for _ in range(traced_jobs)]
                ),
            }
            throughput = concurrent_clients(url, args.shots, per_client)
    sim = direct(fits, circuits)

    p50, p99 = percentile(latency, 0.5), percentile(latency, 0.99)
    sim50 = percentile(sim, 0.5)
    door50, inside50 = percentile(pings, 0.5), percentile(inside, 0.5)
    floor = 2 * door50 + inside50
    print(
        f"awen client benchmark: {jobs} jobs of a {MODES}-mode circuit ({len(PAIRS)} beam splitters, new random "
        f"angles each), {args.shots} shots; simulated {MODES}-mode chip behind `awen up`"
    )
    print()
    print(f"  {'connect; calibrate':<46}{connected * 1e3:>9.1f} ms; {calibrated:.2f} s")
    print(f"  {'variational loop, submit + wait, p50':<46}{p50 * 1e3:>9.2f} ms")
    print(f"  {'variational loop, submit + wait, p99':<46}{p99 * 1e3:>9.2f} ms")
    print(f"  {'direct simulator, same circuits, p50':<46}{sim50 * 1e3:>9.2f} ms")
    print(f"  {'floor: door round trip (sys.ping), p50':<46}{door50 * 1e3:>9.2f} ms   (blocking client, portal hop)")
    print(f"  {'floor: 6 messages + 1 commit inside, p50':<46}{inside50 * 1e3:>9.2f} ms   (end_to_end's)")
    print(f"  {'floor: 2 door round trips + inside':<46}{floor * 1e3:>9.2f} ms")
    ratio = p50 / (floor + sim50)
    verdict = "met" if ratio <= 2 else "missed"
    print(f"  {'p50 / (floor + simulator)':<46}{ratio:>9.2f}x   (target <= 2x: {verdict})")
    print(f"  {'overhead per job at p50 (p50 - simulator)':<46}{(p50 - sim50) * 1e3:>9.2f} ms")
    print(f"  {f'{CLIENTS} clients at once, jobs per second':<46}{throughput:>9.1f}   ({per_client} jobs each)")
    print(f"  {'one client, jobs per second':<46}{len(latency) / sum(latency):>9.1f}")
    print()
    for what, breakdown in breakdowns.items():
        print(f"  where {what}'s time goes ({traced_jobs} jobs, median ms after submit, by the actors'")
        print("  event time stamps; a trio client subscribed to every event, so a little slower than the loop):")
        previous = 0.0
        for key, at in breakdown.items():
            print(f"    {key:<28}{at * 1e3:>8.2f}   (+{(at - previous) * 1e3:.2f})")
            previous = at
    sys.stdout.flush()


if __name__ == "__main__":
    main()
