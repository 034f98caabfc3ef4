"""The store under kill -9: real processes killed at random moments lose nothing they acknowledged."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trio

from actors.memory import Store
from actors.memory import _store as ops
from protocol.circuit import Circuit
from protocol.memory import Allocate, GetJob, PutJob, QueryResults, SetJobState, SlotSpec, SlotValue, Write
from runtime import PeerLostError, RemoteError, RequestTimeout, Supervisor, open_system, parse_system

from .helpers import REPO, LineReader, awen_process
from .store_writer import frame_value

pytestmark = pytest.mark.system


def test_every_acknowledged_frame_survives_kill_9_of_the_writing_process(tmp_path):
    rng = random.Random(5)
    acked: set[int] = set()
    for _ in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.store_writer", str(tmp_path)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        try:
            out = LineReader(proc.stdout)
            start = int(out.until("resuming at", timeout=60).split()[-1])
            out.until(f"acked {start + rng.randint(0, 150)}", timeout=60)
        finally:
            proc.send_signal(signal.SIGKILL)  # wherever it is: mid-transaction, mid-fsync, mid-print
            proc.wait(timeout=30)
        lines = [*out.seen, *out.rest()]
        assert proc.stdout is not None
        proc.stdout.close()
        acked |= {int(line.split()[1]) for line in lines if line.startswith("acked ")}

    store = Store(tmp_path / "store.sqlite3")
    record = store.read(ops.get_job("crash"))
    assert record.state == "interrupted"  # killed while running: neither lost nor silently complete
    _, results = store.read(ops.query_results("crash"))
    frames = [r.frame for r in results]
    assert frames == list(range(record.frames))  # contiguous, each once: nothing duplicated
    assert acked <= set(frames)
    assert len(acked) > 6
    for r in results:
        assert np.array_equal(r.value, frame_value(r.frame))
    states = [t.state for t in store.read(ops.get_job("crash")).transitions]
    assert states.count("interrupted") == 6
    store.close()


async def test_the_memory_actor_killed_mid_job_loses_no_acknowledged_frame(tmp_path):
    config = parse_system(
        {
            "log_level": "warning",
            "runtime": {"heartbeat_interval": 0.2, "request_timeout": 10.0},
            "actor": [
                {
                    "name": "memory",
                    "factory": "actors.memory:MemoryActor",
                    "restart": {"max_restarts": 10, "window": 60, "backoff": 0.05},
                    "config": {"data_dir": str(tmp_path)},
                }
            ],
        }
    )
    rng = random.Random(11)
    jobs = ["a", "b"]
    acked: dict[str, set[int]] = {job: set() for job in jobs}
    slots = [SlotSpec(name="v", dtype="float64", shape=[64])]

    def value(job: str, frame: int) -> np.ndarray:
        return np.full(64, frame + (0.5 if job == "b" else 0.0))

    async def write_until_it_dies(sup: Supervisor, job: str, kill_after: int, kill: trio.Event) -> None:
        frame = (await sup.request("memory", Allocate(job=job, slots=slots, device="sim", resume=True))).frame
        try:
            while True:
                values = [SlotValue(slot="v", value=value(job, frame))]
                await sup.request("memory", Write(job=job, frame=frame, writer="t", values=values, commit=True))
                acked[job].add(frame)
                frame += 1
                if len(acked[job]) >= kill_after:
                    kill.set()
        except (PeerLostError, RemoteError, RequestTimeout):
            return  # the actor died under this request: not acknowledged

    async with open_system(config) as sup:
        with trio.fail_after(60):
            await sup.wait_started()
            await sup.wait_peer("memory")
            for job in jobs:
                await sup.request("memory", PutJob(job=job, circuit=Circuit(modes=2), device="sim"))
                await sup.request("memory", SetJobState(job=job, state="planned"))
                await sup.request("memory", SetJobState(job=job, state="running"))
        for _ in range(3):
            pid = sup.pid_of("memory")
            kill = trio.Event()
            with trio.fail_after(120):
                async with sup.open_event_stream("actor.started") as started, trio.open_nursery() as nursery:
                    for job in jobs:
                        nursery.start_soon(
                            write_until_it_dies, sup, job, sum(map(len, acked.values())) + rng.randint(1, 40), kill
                        )
                    await kill.wait()
                    os.kill(pid, signal.SIGKILL)
                    await started.receive()
                await sup.wait_peer("memory")
                for job in jobs:
                    record = (await sup.request("memory", GetJob(job=job))).record
                    assert record.state == "interrupted"
                    assert "awen stopped while the job was running" in record.reason
                    await sup.request("memory", SetJobState(job=job, state="running", expect=["interrupted"]))

        for job in jobs:
            results = (await sup.request("memory", QueryResults(job=job))).results
            frames = [r.frame for r in results]
            assert frames == list(range(len(frames)))
            assert acked[job] <= set(frames)
            assert acked[job]
            for r in results:
                assert np.array_equal(r.value, value(job, r.frame))


def test_a_store_that_cannot_be_opened_stops_the_actor_saying_why(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "store.sqlite3").write_bytes(b"\x00garbage, not SQLite\n" * 50)
    config = tmp_path / "system.toml"
    config.write_text(
        f"""
log_level = "info"
[[actor]]
name = "memory"
factory = "actors.memory:MemoryActor"
restart = {{ max_restarts = 0, window = 60, give_up = true }}
config = {{ data_dir = "{data}" }}
"""
    )
    with awen_process("up", str(config)) as (proc, out):
        line = out.until("is corrupt", anywhere=True, timeout=60)
        assert "CRITICAL" in line
        assert str(data / "store.sqlite3") in line
        assert "restore it from a backup" in line
        out.until("awen: error: gave up on memory", timeout=60)
        assert proc.wait(timeout=30) != 0
    assert not any("Traceback" in seen for seen in out.seen)
    assert Path(data / "store.sqlite3").read_bytes().startswith(b"\x00garbage")  # left as found
