"""The commands on a running lab (decision 0014 §6, plan step 10), run as an operator runs them.

One ``awen up`` for the module, in a temporary data directory on a free port; every command finds
it by that directory's ``awen.json`` (``AWEN_DATA_DIR``), as a user's shell does. Each error is one
line on stderr, never a traceback, with the exit code of §6; ``--json`` is always one document.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from awen.client import Result, connect

from .helpers import REPO, awen_process, free_port

pytestmark = pytest.mark.system

HOM = REPO / "examples" / "hom.json"


class Lab:
    """The module's running lab: its data directory, and how to run a command on it."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.env = {k: v for k, v in os.environ.items() if k != "AWEN_CONNECT"} | {"AWEN_DATA_DIR": str(data_dir)}

    def awen(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "awen.cli", *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env or self.env,
            timeout=timeout,
            check=False,
        )

    def json(self, *args: str) -> Any:
        done = self.awen(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    data_dir = tmp_path_factory.mktemp("commands")
    port = free_port()
    with awen_process("up", "--data-dir", str(data_dir), "--port", str(port), "--modes", "4", "--no-http") as (
        proc,
        out,
    ):
        out.until("awen: up", timeout=60)
        client = connect(f"tcp://127.0.0.1:{port}")
        try:
            if not client.calibration_status().valid:
                client.calibrate()  # joins the lab's first calibration: back once it is made
        finally:
            client.close()
        yield Lab(data_dir, port)
        assert proc.poll() is None, out.seen


def failed(done: subprocess.CompletedProcess[str], code: int, *, json_output: bool = True) -> str:
    """The command failed with ``code``, said so in one line on stderr, and (--json) printed one error document."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("awen: error: ")
    if json_output:
        document = json.loads(done.stdout)
        assert document["error"]["message"] in lines[0]
        assert document["error"]["code"]
    return lines[0]


# --- a job, from submission to its file ----------------------------------------------------------


@pytest.fixture(scope="module")
def finished(lab: Lab) -> dict[str, Any]:
    """A hom job submitted with --wait --json: its result document."""
    done = lab.awen("submit", str(HOM), "--shots", "2000", "--tag", "cmds", "--key", "commands-hom", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def test_submit_wait_json_is_the_completed_result(finished):
    assert finished["state"] == "completed"
    assert finished["shots"] == 2000
    assert finished["tags"] == ["cmds"]
    assert finished["key"] == "commands-hom"
    hom = next(r for r in finished["registers"] if r["name"] == "hom")
    assert sum(hom["counts"]) == 2000
    assert "visibility" in finished["figures"]


def test_the_same_key_again_is_the_same_job(lab, finished):
    done = lab.awen("submit", str(HOM), "--shots", "2000", "--tag", "cmds", "--key", "commands-hom")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == finished["job"]
    assert done.stderr.strip() == f"awen: already submitted as {finished['job']} (completed)"
    other = lab.awen("submit", str(HOM), "--shots", "999", "--key", "commands-hom", "--json")
    assert finished["job"] in failed(other, 5)


def test_submit_wait_prints_the_counts_table(lab):
    done = lab.awen("submit", str(HOM), "--shots", "500", "--wait")
    assert done.returncode == 0, done.stderr
    assert "completed: 500 shots" in done.stdout
    assert "register hom (modes [0, 1])" in done.stdout
    assert "visibility" in done.stdout


def test_jobs_lists_it_and_filters(lab, finished):
    listed = lab.json("jobs", "--tag", "cmds")["jobs"]
    assert [j["job"] for j in listed] == [finished["job"]]
    assert lab.json("jobs", "--state", "failed", "--tag", "cmds")["jobs"] == []
    assert lab.json("jobs", "--since", str(time.time() + 3600))["jobs"] == []
    assert finished["job"] in [j["job"] for j in lab.json("jobs", "--since", "1h")["jobs"]]
    table = lab.awen("jobs", "--tag", "cmds")
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if finished["job"] in line)
    assert "completed" in row
    assert "2000" in row
    assert "commands-hom" in row


def test_job_shows_its_record(lab, finished):
    record = lab.json("job", finished["job"])
    assert record["state"] == "completed"
    assert [t["state"] for t in record["transitions"]] == ["queued", "planned", "running", "completed"]
    assert record["plan"] == finished["plan"]
    assert record["calibration"] == finished["calibration"]
    shown = lab.awen("job", finished["job"])
    assert shown.returncode == 0
    assert f"job {finished['job']}: completed" in shown.stdout
    assert f"plan {finished['plan']}" in shown.stdout


def test_results_npz_reads_back_with_the_same_counts(lab, finished, tmp_path):
    path = tmp_path / "hom.npz"
    done = lab.awen("results", finished["job"], "--npz", str(path))
    assert done.returncode == 0, done.stderr
    assert "register hom" in done.stdout
    loaded = Result.load(path)
    for reg in finished["registers"]:
        assert loaded.counts(reg["name"]).tolist() == reg["counts"]
    as_json = lab.json("results", finished["job"])
    assert np.array_equal(loaded.counts("hom"), as_json["registers"][0]["counts"])


def test_cancel_of_a_finished_job_is_fine(lab, finished):
    assert lab.json("cancel", finished["job"]) == {"job": finished["job"], "state": "completed"}


def test_a_wait_that_times_out_exits_6_and_the_job_goes_on(lab):
    done = lab.awen("submit", str(HOM), "--shots", "3000000", "--wait", "--timeout", "0.001", "--json")
    line = failed(done, 6)
    job = json.loads(done.stdout)["job"]
    assert job in line
    assert lab.json("job", job)["state"] in ("queued", "planned", "running")
    assert lab.awen("cancel", job).returncode == 0


# --- the lab -----------------------------------------------------------------------------------


def test_pause_and_resume(lab):
    assert lab.json("pause", "--reason", "tests")["paused"] is True
    resumed = lab.awen("resume")
    assert resumed.returncode == 0
    assert resumed.stdout.startswith("dispatching")


def test_devices_and_status(lab):
    devices = lab.json("devices")["devices"]
    assert [(d["name"], d["state"]) for d in devices] == [("chip", "connected")]
    table = lab.awen("devices")
    assert "sim://?seed=1&modes=4" in table.stdout
    status = lab.json("status")
    assert {a["name"] for a in status["actors"]} >= {"door", "scheduler", "memory", "hal", "executor", "calibration"}
    assert all(a["status"] is not None for a in status["actors"])
    shown = lab.awen("status", "scheduler")
    assert shown.returncode == 0, shown.stderr
    assert "scheduler" in shown.stdout
    assert "memory " not in shown.stdout


def test_calibrate_talks_to_the_running_lab_and_plots(lab, tmp_path):
    png = tmp_path / "cal.png"
    before = lab.json("jobs", "--state", "completed")["jobs"]
    done = lab.awen("calibrate", "--points", "6", "--plot", str(png), "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["version"] == document["calibrated"]["version"] >= 2
    assert len(document["fits"]["phi0"]) == 16  # 4 modes: 6 MZIs, 12 heaters, and 4 output phases
    assert [f["mode"] for f in document["sources"]] == [0, 1, 2, 3]  # HBT and HOM (decision 0017 §5)
    assert all(0 < f["g2"] < 0.1 and 0.7 < f["indistinguishability"] <= 1 for f in document["sources"])
    assert [h["modes"] for h in document["hom"]] == [[0, 1], [1, 2], [2, 3], [0, 2]]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    after = lab.json("jobs", "--state", "completed")["jobs"]
    assert any(j["job"] == document["calibrated"]["job"] for j in after)
    assert len(after) > len(before)


def test_watch_prints_events_until_ctrl_c(lab):
    proc = subprocess.Popen(
        [sys.executable, "-m", "awen.cli", "watch", "mem.job_state", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=lab.env,
    )
    try:
        time.sleep(1.5)  # connected and subscribed
        job = lab.awen("submit", str(HOM), "--shots", "200", "--wait", "--json")
        assert job.returncode == 0
        job_id = json.loads(job.stdout)["job"]
        assert proc.stdout is not None
        seen = []
        while not seen or seen[-1]["body"]["state"] != "completed":
            event = json.loads(proc.stdout.readline())
            if event["body"]["job"] == job_id:
                seen.append(event)
        assert [e["body"]["state"] for e in seen] == ["queued", "planned", "running", "completed"]
        assert {e["type"] for e in seen} == {"mem.job_state_changed"}
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 130
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- bad input: one line, the code of §6 -------------------------------------------------------


def test_a_missing_or_unreadable_circuit_is_usage(lab, tmp_path):
    assert "nothere.json" in failed(lab.awen("submit", str(tmp_path / "nothere.json"), "--json"), 2)
    bad = tmp_path / "bad.json"
    bad.write_text('{"modes": 2, "ops": [')
    assert "not valid JSON" in failed(lab.awen("submit", str(bad), "--json"), 2)
    assert "not valid JSON" in failed(lab.awen("submit", str(bad)), 2, json_output=False)


def test_an_invalid_circuit_is_refused_naming_the_op(lab, tmp_path):
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"modes": 2, "ops": [{"op": "input", "mode": 0}, {"op": "bs", "modes": [0, 5]}]}))
    line = failed(lab.awen("submit", str(wrong), "--json"), 5)
    assert "op 1" in line
    assert "mode 5 is out of range" in line
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"modes": 2, "ops": [{"op": "teleport"}]}))
    assert "unknown op 'teleport'" in failed(lab.awen("submit", str(unknown)), 5, json_output=False)


@pytest.mark.parametrize("command", [["job", "job-nope"], ["results", "job-nope"], ["cancel", "job-nope"]])
def test_an_unknown_job_is_not_found(lab, command):
    assert "job-nope" in failed(lab.awen(*command, "--json"), 4)


def test_a_bad_since_is_usage(lab):
    assert "--since" in failed(lab.awen("jobs", "--since", "last tuesday", "--json"), 2)


NO_DAEMON_COMMANDS = [
    ["submit", str(HOM)],
    ["jobs"],
    ["job", "job-x"],
    ["results", "job-x"],
    ["cancel", "job-x"],
    ["pause"],
    ["resume"],
    ["devices"],
    ["watch"],
    ["calibrate"],
    ["status"],
]


def test_no_daemon_is_exit_3_naming_where_it_looked(tmp_path):
    env = os.environ | {"AWEN_DATA_DIR": str(tmp_path), "AWEN_CONNECT": f"tcp://127.0.0.1:{free_port()}"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "awen.cli", *command, "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )
        for command in NO_DAEMON_COMMANDS
    ]  # at once: each waits 2 s for an answer that never comes
    for command, proc in zip(NO_DAEMON_COMMANDS, procs, strict=True):
        out, err = proc.communicate(timeout=60)
        done = subprocess.CompletedProcess(command, proc.returncode, out, err)
        assert "no awen daemon answered ($AWEN_CONNECT tcp://127.0.0.1:" in failed(done, 3), command
