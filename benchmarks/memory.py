"""Frame writes and 1 MB results through the memory actor, next to the same work done directly.

One run: the memory actor in a process of its own (``awen up``, ipc, a store in
a temporary directory, ``synchronous = "full"``), a client actor in this
process.

* frame writes: one ``mem.write`` per frame carrying the frame's two result
  slots (int64[16] counts, float64[16] rates) with ``commit = true``, so each
  frame is durable when acknowledged; one job at a time, and 8 jobs at once
  (their commits share transactions). Baselines in this process: the same
  assignment into numpy arrays, and a bare sqlite3 insert of the same bytes
  (WAL, synchronous FULL, one transaction per frame).
* 1 MB results: ``mem.write`` of a 1 MiB float64 array with ``commit = true``,
  one and 4 jobs at once; baseline: a bare sqlite3 insert of the same 1 MiB blob,
  one transaction each, same pragmas.

    python benchmarks/memory.py [--frames N] [--results N]
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trio

from actors.lab import lab_system, system_toml
from protocol.memory import Allocate, PutJob, SlotSpec, SlotValue, Write
from runtime import Actor, ResolvedSystem

COUNTS = np.arange(16, dtype=np.int64)
RATES = np.linspace(0, 1, 16)
BIG = np.random.default_rng(1).random(131072)  # 1 MiB of float64
FRAME_SLOTS = [SlotSpec(name="counts", dtype="int64", shape=[16]), SlotSpec(name="rates", dtype="float64", shape=[16])]
BIG_SLOTS = [SlotSpec(name="trace", dtype="float64", shape=[131072])]


def start_memory(data_dir: Path) -> tuple[subprocess.Popen[str], Path]:
    config = data_dir / "memory.toml"
    memory_alone = lab_system(
        data_dir=data_dir / "store", actors=("memory",), log_level="warning", config={"memory": {"synchronous": "full"}}
    )
    config.write_text(system_toml(memory_alone))
    proc = subprocess.Popen(
        [sys.executable, "-m", "awen.cli", "up", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("awen: up"):
            return proc, Path(line.split()[-1])
    raise RuntimeError("the memory actor did not start")


async def through_actor(system_file: Path, frames: int, results: int) -> dict[str, float]:
    system = ResolvedSystem.load(system_file)
    client = Actor("bench", system.runtime_for())
    figures: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        with trio.fail_after(30):
            await client.wait_peer("memory")

        async def job(name: str, slots: list[SlotSpec]) -> None:
            await client.request("memory", PutJob(job=name, circuit=None, device="bench"))
            await client.request("memory", Allocate(job=name, slots=slots, device="bench"))

        async def write_frames(name: str, count: int, values: list[SlotValue], start: int = 0) -> None:
            for frame in range(start, start + count):
                await client.request("memory", Write(job=name, frame=frame, writer="bench", values=values, commit=True))

        small = [SlotValue(slot="counts", value=COUNTS), SlotValue(slot="rates", value=RATES)]
        big = [SlotValue(slot="trace", value=BIG)]
        for label, slots, values, count, parallel in [
            ("frames, 1 job", FRAME_SLOTS, small, frames, 1),
            ("frames, 8 jobs", FRAME_SLOTS, small, frames, 8),
            ("1 MB results, 1 job", BIG_SLOTS, big, results, 1),
            ("1 MB results, 4 jobs", BIG_SLOTS, big, results, 4),
        ]:
            names = [f"{label}-{i}".replace(" ", "_").replace(",", "") for i in range(parallel)]
            for name in names:
                await job(name, slots)
            await write_frames(names[0], 5, values)  # warm: imports, caches, the first pages of the file
            begin = time.perf_counter()
            async with trio.open_nursery() as writers:
                for i, name in enumerate(names):
                    writers.start_soon(write_frames, name, count // parallel, values, 5 if i == 0 else 0)
            elapsed = time.perf_counter() - begin
            figures[label] = (count // parallel) * parallel / elapsed
        nursery.cancel_scope.cancel()
    return figures


def numpy_assignment(frames: int) -> float:
    counts, rates = np.zeros(16, dtype=np.int64), np.zeros(16)
    begin = time.perf_counter()
    for _ in range(frames):
        counts[...] = COUNTS
        rates[...] = RATES
    return frames / (time.perf_counter() - begin)


def bare_sqlite(path: Path, blobs: list[bytes], count: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE results (id INTEGER PRIMARY KEY, job TEXT, slot TEXT, frame INTEGER, data BLOB)")
    begin = time.perf_counter()
    for frame in range(count):
        conn.execute("BEGIN")
        for i, blob in enumerate(blobs):
            conn.execute("INSERT INTO results (job, slot, frame, data) VALUES ('j', ?, ?, ?)", (str(i), frame, blob))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - begin
    conn.close()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--results", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="awen-bench-") as tmp:
        root = Path(tmp)
        numpy_rate = numpy_assignment(args.frames * 10)
        sqlite_frames = bare_sqlite(root / "frames.sqlite3", [COUNTS.tobytes(), RATES.tobytes()], args.frames)
        sqlite_big = bare_sqlite(root / "big.sqlite3", [BIG.tobytes()], args.results)
        proc, system_file = start_memory(root)
        try:
            actor = trio.run(through_actor, system_file, args.frames, args.results)
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    print(f"awen memory benchmark: {args.frames} frames, {args.results} results of 1 MiB; store synchronous=FULL")
    print()
    print(f"  {'numpy assignment of a frame':<44}{numpy_rate:>12,.0f} frames/s")
    print(f"  {'bare sqlite3 insert of a frame':<44}{sqlite_frames:>12,.0f} frames/s")
    for label in ("frames, 1 job", "frames, 8 jobs"):
        rate = actor[label]
        print(
            f"  {'through the actor, ' + label:<44}{rate:>12,.0f} frames/s"
            f"   {rate / sqlite_frames:.2f}x bare sqlite, {rate / numpy_rate:.5f}x numpy"
        )
    print()
    print(f"  {'bare sqlite3 insert of 1 MiB':<44}{sqlite_big:>12,.1f} results/s")
    for label in ("1 MB results, 1 job", "1 MB results, 4 jobs"):
        rate = actor[label]
        print(f"  {'through the actor, ' + label:<44}{rate:>12,.1f} results/s   {rate / sqlite_big:.2f}x bare sqlite")


if __name__ == "__main__":
    main()
