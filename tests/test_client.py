"""The Python client (decision 0014 §4, plan steps 8 and 9) through real processes: ``awen up`` and scripts.

A script with `awen.connect`; calls from a worker thread and from a coroutine while an asyncio loop runs (a
notebook); two clients at once; the daemon stopped (SIGTERM) or killed (kill -9) under a waiting client and
started again; Ctrl-C in a waiting script; no daemon at all; a refused circuit and a cancelled job.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import awen
from awen.client import CircuitRefused, DaemonUnreachable, JobFailed, JobNotFound, Result
from awen.client._find import candidates
from awen.daemon import write_daemon_file
from protocol.paths import default_tcp_endpoint

from .helpers import REPO, LineReader, children_of, free_port, wait_gone

HOM = REPO / "examples" / "hom.json"
LONG_SHOTS = 1_000_000
"""A HOM job of this many shots runs about 3-4 s on the simulated chip: long enough to act while it runs."""


class Daemon:
    """``awen up --modes 4`` on a data directory and a free port, as an operator runs it; stopped and started again."""

    def __init__(self, data: Path, port: int | None = None) -> None:
        self.data = data
        self.port = port or free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.out: LineReader | None = None
        self.actors: list[int] = []

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """A client's environment: this daemon's data directory, no ``AWEN_CONNECT``."""
        env = {k: v for k, v in os.environ.items() if k != "AWEN_CONNECT"}
        env["AWEN_DATA_DIR"] = str(self.data)
        return env

    def start(self) -> Daemon:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()  # the one stopped before
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "awen.cli", "up", "--modes", "4", "--port", str(self.port), "--no-http"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
            env=self.env,
            start_new_session=True,
        )
        self.out = LineReader(self.proc.stdout)
        self.out.until("awen: up", timeout=60)
        self.actors = children_of(self.proc.pid)
        return self

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        wait_gone(self.actors, 15)
        return code

    def kill9(self) -> None:
        """kill -9 of ``awen up`` and of every actor it runs: nothing gets to say goodbye."""
        assert self.proc is not None
        self.actors = children_of(self.proc.pid) or self.actors
        self.proc.kill()
        for pid in self.actors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        wait_gone(self.actors, 10)

    def stop(self) -> None:
        """Whatever is still running of it, ended (the test's own processes, by pid)."""
        if self.proc is not None and self.proc.poll() is None:
            self.actors = children_of(self.proc.pid) or self.actors
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        wait_gone(self.actors, 10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def running(data: Path) -> Iterator[Daemon]:
    daemon = Daemon(data)
    try:
        yield daemon.start()
    finally:
        daemon.stop()


def run_script(daemon: Daemon, source: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -c SOURCE ARGS`` as a user's script, finding the daemon by its data directory."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=daemon.env,
        timeout=timeout,
        check=False,
    )


def last_json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One lab for the tests that do not stop it, calibrated (a submission right after ``awen up`` may be early)."""
    with running(tmp_path_factory.mktemp("client") / "data") as lab_daemon:
        with awen.connect(lab_daemon.url) as lab:
            lab.calibrate()
        yield lab_daemon


# --- a script ----------------------------------------------------------------------------------

SCRIPT = """
    import json, sys
    import awen

    lab = awen.connect()
    job = lab.submit("examples/hom.json", shots=3000, key=sys.argv[1], tags=["script"])
    result = job.wait()
    result.to_npz(sys.argv[2])
    result.to_json(sys.argv[2] + ".json")
    print(json.dumps({
        "job": job.id, "created": job.created, "state": result.state, "shots": result.shots,
        "registers": result.registers, "sums": [int(result.counts(r).sum()) for r in result.registers],
        "figures": result.figures, "partial": result.partial,
    }))
"""


@pytest.mark.system
def test_a_script_submits_waits_and_saves_its_result(daemon, tmp_path):
    npz = tmp_path / "hom.npz"
    said = last_json(run_script(daemon, SCRIPT, "script-1", str(npz)))
    assert said["created"] is True
    assert said["state"] == "completed"
    assert said["partial"] is False
    assert said["registers"] == ["hom", "reference"]
    assert said["sums"] == [3000, 3000]
    visibility = said["figures"]["visibility"]
    assert visibility["figure"] == "hom_visibility"
    # A published source's photons (decision 0017): the dip is what the calibration's sources predict.
    assert 0.7 <= visibility["value"] <= 1.0
    combined = math.hypot(visibility["sigma"], visibility["calibrated_sigma"])
    assert abs(visibility["value"] - visibility["calibrated"]) < 4 * combined

    loaded = Result.load(npz)
    assert loaded.job == said["job"]
    assert loaded.key == "script-1"
    assert loaded.tags == ["script"]
    assert loaded.figures == said["figures"]
    with np.load(npz, allow_pickle=False) as arrays:
        assert np.array_equal(arrays["counts.hom"], loaded.counts("hom"))
    assert Result.load(str(npz) + ".json").to_dict() == loaded.to_dict()
    assert int(loaded.counts("hom").sum()) == 3000

    again = last_json(run_script(daemon, SCRIPT, "script-1", str(tmp_path / "again.npz")))  # the same key
    assert again["job"] == said["job"]
    assert again["created"] is False
    assert again["sums"] == said["sums"]


# --- beside an asyncio loop (a notebook) --------------------------------------------------------

NOTEBOOK = """
    import asyncio, json
    import awen

    async def main():
        lab = awen.connect()  # a notebook's first cell: inside the running loop
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        in_thread = await asyncio.to_thread(lambda: lab.submit("examples/hom.json", shots=2000).wait())
        turned = ticks
        in_cell = lab.submit("examples/hom.json", shots=2000).wait()  # a cell blocks the loop, as a script does
        ticker.cancel()
        lab.close()
        return in_thread, in_cell, turned

    in_thread, in_cell, turned = asyncio.run(main())
    print(json.dumps({
        "jobs": [in_thread.job, in_cell.job], "states": [in_thread.state, in_cell.state],
        "sums": [int(in_thread.counts("hom").sum()), int(in_cell.counts("hom").sum())], "turned": turned,
    }))
"""


@pytest.mark.system
def test_the_blocking_client_works_from_a_thread_and_a_coroutine_while_asyncio_runs(daemon):
    said = last_json(run_script(daemon, NOTEBOOK))
    assert said["states"] == ["completed", "completed"]
    assert said["sums"] == [2000, 2000]
    assert len(set(said["jobs"])) == 2
    assert said["turned"] > 0  # the loop went on turning while a worker thread waited


# --- two clients at once ------------------------------------------------------------------------

CLIENT = """
    import json, sys
    import awen

    name = sys.argv[1]
    lab = awen.connect()
    jobs = [lab.submit("examples/hom.json", shots=500, key=f"{name}-{i}", tags=[name]) for i in range(10)]
    results = [job.wait() for job in jobs]
    print(json.dumps({
        "ids": [job.id for job in jobs], "results": [r.job for r in results], "keys": [r.key for r in results],
        "states": sorted({r.state for r in results}), "sums": sorted({int(r.counts("hom").sum()) for r in results}),
    }))
"""


@pytest.mark.system
def test_two_clients_at_once_each_get_their_own_jobs(daemon):
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(CLIENT), name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=daemon.env,
        )
        for name in ("alice", "bob")
    }
    said: dict[str, Any] = {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            said[name] = json.loads(out.strip().splitlines()[-1])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    ids = said["alice"]["ids"] + said["bob"]["ids"]
    assert len(set(ids)) == 20
    with awen.connect(daemon.url) as lab:
        for name in ("alice", "bob"):
            assert said[name]["results"] == said[name]["ids"]  # each result is its own job's
            assert said[name]["keys"] == [f"{name}-{i}" for i in range(10)]
            assert said[name]["states"] == ["completed"]
            assert said[name]["sums"] == [500]
            found = lab.jobs(tags=[name])
            assert sorted(j.job for j in found) == sorted(said[name]["ids"])
            assert {j.state for j in found} == {"completed"}


# --- the daemon restarted under a wait ----------------------------------------------------------


@pytest.mark.system
@pytest.mark.parametrize("how", ["sigterm", "kill-9"])
def test_a_wait_spans_a_restart_of_the_daemon_and_the_job_runs_once(tmp_path, how):
    daemon = Daemon(tmp_path / "data")
    waited: dict[str, Any] = {}
    try:
        daemon.start()
        lab = awen.connect(daemon.url)  # tcp: the same address after the restart
        lab.calibrate()
        job = lab.submit(HOM, shots=LONG_SHOTS, key=f"restart-{how}")
        started = time.monotonic()

        def wait() -> None:
            try:
                waited["result"] = job.wait(timeout=90)
            except BaseException as exc:  # noqa: BLE001 - the test reads it
                waited["error"] = exc
            waited["after"] = time.monotonic() - started

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        for done, _total in job.progress():  # pushed by the door: no polling
            if done > 0:
                break  # it runs, and has shots committed: a restart now interrupts it mid-way
        if how == "sigterm":
            assert daemon.terminate() == 0
        else:
            daemon.kill9()
        assert "result" not in waited  # it was still running
        down = time.monotonic() - started
        daemon.start()
        waiter.join(60)
        assert not waiter.is_alive(), "the wait did not return after the restart"
        assert "error" not in waited, waited.get("error")
        result: Result = waited["result"]
        assert result.state == "completed"
        assert result.job == job.id
        assert [int(result.counts(r).sum()) for r in result.registers] == [LONG_SHOTS, LONG_SHOTS]  # counted once
        assert waited["after"] - down < 30  # noticed soon, not at the end of a long poll
        assert [j.job for j in lab.jobs() if j.key == f"restart-{how}"] == [job.id]  # one job under its key
        again = lab.submit(HOM, shots=LONG_SHOTS, key=f"restart-{how}")
        assert (again.id, again.created) == (job.id, False)
        lab.close()
    finally:
        daemon.stop()


# --- Ctrl-C in a waiting script ----------------------------------------------------------------

WAITING = """
    import sys
    import awen

    lab = awen.connect()
    job = lab.submit("examples/hom.json", shots=int(sys.argv[1]), key="ctrl-c")
    print(job.id, flush=True)
    print("waiting", flush=True)
    job.wait()
    print("waited", flush=True)
"""


@pytest.mark.system
def test_ctrl_c_abandons_the_wait_not_the_job(daemon):
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WAITING), str(LONG_SHOTS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=daemon.env,
    )
    try:
        assert proc.stdout is not None
        job_id = proc.stdout.readline().strip()
        assert job_id.startswith("job-"), proc.stderr.read() if proc.stderr else ""
        assert proc.stdout.readline().strip() == "waiting"  # at (or entering) job.wait(): Ctrl-C now
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)  # no hang
        assert proc.returncode != 0
        assert "waited" not in out
        assert err.rstrip().splitlines()[-1] == "KeyboardInterrupt"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with awen.connect(daemon.url) as lab:
        assert lab.job(job_id).state() != "cancelled"
        result = lab.job(job_id).wait(timeout=60)
        assert result.state == "completed"
        assert int(result.counts("reference").sum()) == LONG_SHOTS


# --- no daemon ---------------------------------------------------------------------------------


def test_the_client_looks_for_the_daemon_in_order(tmp_path):
    default = default_tcp_endpoint()
    assert candidates("tcp://127.0.0.1:1", environ={"AWEN_CONNECT": "tcp://127.0.0.1:2"}) == [
        ("tcp://127.0.0.1:1", "the address given")
    ]
    assert candidates(environ={"AWEN_CONNECT": "tcp://127.0.0.1:2", "AWEN_DATA_DIR": str(tmp_path)}) == [
        ("tcp://127.0.0.1:2", "$AWEN_CONNECT")
    ]
    empty = {"AWEN_DATA_DIR": str(tmp_path)}
    assert candidates(environ=empty) == [
        (None, f"{tmp_path}/awen.json (no daemon recorded)"),
        (default, "the default port"),
    ]
    write_daemon_file(tmp_path, {"pid": 4242, "endpoints": ["tcp://127.0.0.1:3", "ipc:///x/awen.sock"]})
    assert candidates(environ=empty) == [  # no lock held: stale
        (None, f"{tmp_path}/awen.json (stale: pid 4242 no longer runs awen there)"),
        (default, "the default port"),
    ]


@pytest.mark.system
def test_a_live_daemon_file_gives_its_endpoints_ipc_first(daemon):
    found = candidates(environ={"AWEN_DATA_DIR": str(daemon.data)})
    where = f"{daemon.data}/awen.json"
    assert found[:2] == [(f"ipc://{daemon.data}/awen.sock", where), (daemon.url, where)]
    assert found[2:] == [(default_tcp_endpoint(), "the default port")]


def test_no_daemon_raises_daemon_unreachable_naming_each_place(tmp_path, monkeypatch):
    nowhere = f"tcp://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWEN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("AWEN_CONNECT", nowhere)
    with pytest.raises(DaemonUnreachable) as caught:
        awen.connect(timeout=0.3)
    assert caught.value.looked == [(f"$AWEN_CONNECT {nowhere}", "no answer within 0.3 s")]
    assert str(caught.value) == (
        f"no awen daemon answered ($AWEN_CONNECT {nowhere}: no answer within 0.3 s); start one with `awen up`"
    )

    # no $AWEN_CONNECT: the data directory's awen.json, left by a daemon killed -9, then the default port
    monkeypatch.delenv("AWEN_CONNECT")
    monkeypatch.setattr("awen.client._find.default_tcp_endpoint", lambda: nowhere)  # 7460 may be taken here
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_daemon_file(tmp_path, {"pid": dead.pid, "endpoints": [f"ipc://{tmp_path}/awen.sock"]})
    with pytest.raises(DaemonUnreachable) as caught:
        awen.connect(timeout=0.3)
    assert caught.value.looked == [
        (f"{tmp_path}/awen.json (stale: pid {dead.pid} no longer runs awen there)", "nothing"),
        (f"the default port {nowhere}", "no answer within 0.3 s"),
    ]
    assert "stale" in str(caught.value)


async def test_open_lab_raises_daemon_unreachable_itself_not_in_a_group(tmp_path, monkeypatch):
    monkeypatch.setenv("AWEN_CONNECT", f"tcp://127.0.0.1:{free_port()}")
    with pytest.raises(DaemonUnreachable):
        async with awen.open_lab(timeout=0.2):
            pass


@pytest.mark.system
async def test_open_lab_raises_what_its_block_raises_itself(daemon):
    with pytest.raises(JobNotFound):
        async with awen.open_lab(daemon.url) as lab:
            await lab.result("job-20000101-000000-000000")


# --- refusals and failures ---------------------------------------------------------------------


@pytest.mark.system
def test_a_refused_circuit_lists_every_problem_with_its_op(daemon):
    circuit = json.loads(HOM.read_text())
    circuit["ops"][2]["modes"] = [0, 7]  # out of range
    circuit["ops"][6]["into"] = "hom"  # written twice
    circuit["ops"].append({"op": "bs", "modes": [1, 1], "theta": 0.1})  # a mode twice
    with awen.connect(daemon.url) as lab:
        with pytest.raises(CircuitRefused) as caught:
            lab.submit(circuit, key="refused")
        problems = {(p["op"], p["field"]) for p in caught.value.problems}
        assert problems == {("2", "modes"), ("6", "into"), ("7", "modes"), ("analysis.0", "reference")}
        message = str(caught.value)
        assert message.startswith("the circuit was refused: op 2: mode 7 is out of range")
        assert "op 6: register 'hom' is written twice" in message
        assert "op 7: the modes [1, 1] repeat" in message
        assert [j for j in lab.jobs() if j.key == "refused"] == []  # nothing was queued


@pytest.mark.system
def test_a_cancelled_job_raises_job_failed_with_its_partial_result(daemon):
    with awen.connect(daemon.url) as lab:
        job = lab.submit(HOM, shots=LONG_SHOTS, key="cancelled")
        next(iter(job.progress()))  # its first progress: it runs
        job.cancel()
        with pytest.raises(JobFailed) as caught:
            job.wait(timeout=30)
        failed = caught.value
        assert (failed.job, failed.state, failed.reason) == (job.id, "cancelled", "cancelled by the client")
        assert str(failed) == f"job {job.id} cancelled: cancelled by the client"
        partial = failed.result()
        assert partial.partial is True
        assert partial.state == "cancelled"
        assert int(partial.counts("hom").sum()) < LONG_SHOTS  # stopped within its first phase (exec.abort)
        assert "reference" not in partial.registers
        job.cancel()  # cancelling an ended job is no error
        assert lab.result(job.id).state == "cancelled"
