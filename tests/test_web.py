"""The web actor (decision 0015 §1, §2): probes, metrics, the page's state, a job's result, server-sent events."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from actors.jobs import wait_for_job
from actors.lab import LAB_ACTORS, lab_system
from actors.web import WebConfig
from protocol import ConfigError
from protocol.calibration import Calibrate
from protocol.scheduler import Submit
from protocol.system import GetStatus
from runtime import RuntimeOptions, Supervisor, open_system
from sim import parse_config, write_factory_calibration

from .circuits import hom

pytestmark = pytest.mark.system

ACTORS = (*LAB_ACTORS, "door", "web")


@asynccontextmanager
async def web_lab(tmp_path: Path, **web: Any) -> AsyncIterator[tuple[Supervisor, str]]:
    """The standard lab on a seeded simulated chip, calibrated, with its door and its web actor on any free port."""
    factory = tmp_path / "factory.json"
    write_factory_calibration(factory, parse_config({"modes": 4}), 3)
    address_file = tmp_path / "http"
    system = lab_system(
        data_dir=tmp_path / "data",
        device_url="sim://?seed=3&modes=4",
        factory_calibration=factory,
        log_level="warning",
        runtime=RuntimeOptions(heartbeat_interval=0.5, request_timeout=30.0),
        run_dir=tmp_path / "run",
        door=[f"ipc://{tmp_path}/awen.sock"],
        web="127.0.0.1:0",
        config={"web": {"address_file": str(address_file), "lab": "test-lab", **web}},
    )
    async with open_system(system) as sup:
        with trio.fail_after(120):
            await sup.wait_started()
            for name in ACTORS:
                await sup.wait_peer(name)
            await sup.request("calibration", Calibrate())
        yield sup, address_file.read_text().strip()


def _get(url: str, timeout: float = 10.0) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


async def get(url: str) -> tuple[int, str, bytes]:
    return await trio.to_thread.run_sync(_get, url)


async def get_json(url: str) -> tuple[int, Any]:
    status, _, body = await get(url)
    return status, json.loads(body)


def _first_event(url: str, timeout: float) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.headers.get("Content-Type", "").startswith("text/event-stream")
        for line in response:
            if line.startswith(b"data: "):
                document: dict[str, Any] = json.loads(line[len(b"data: ") :])
                return document
    raise AssertionError("the event stream ended without a data line")


async def test_web_serves_probes_metrics_state_result_and_events(tmp_path: Path) -> None:
    async with web_lab(tmp_path) as (sup, base):
        assert base.startswith("http://127.0.0.1:")
        status, _, body = await get(f"{base}/livez")
        assert (status, body) == (200, b"ok")

        with trio.fail_after(20):  # the heartbeats of every actor come within a beat or two
            while True:
                status, ready = await get_json(f"{base}/readyz")
                if status == 200:
                    break
                await trio.sleep(0.2)
        assert ready["ready"] is True
        assert {"store", "devices", "calibration", "heartbeat.memory", "heartbeat.door"} <= set(ready["checks"])
        assert all(check["ok"] for check in ready["checks"].values()), ready

        accepted = await sup.request("scheduler", Submit(circuit=hom(shots=500), tags=["web"]))
        record = await wait_for_job(sup, accepted.job)
        assert record.state == "completed"

        status, state = await get_json(f"{base}/api/state")
        assert status == 200
        assert state["lab"] == "test-lab"
        assert {"lab", "time", "running", "queue", "recent", "devices", "calibration"} <= set(state)
        recent = {job["job"]: job for job in state["recent"]}
        assert recent[accepted.job]["state"] == "completed"
        assert recent[accepted.job]["tags"] == ["web"]
        [device] = state["devices"]
        assert device["state"] == "connected"
        assert device["identity"]
        assert device["interlock"] is False
        assert len(device["heaters"]) > 0
        assert all(isinstance(v, float) for v in device["heaters"])
        assert state["calibration"]["valid"] is True
        assert state["calibration"]["version"] is not None
        assert isinstance(state["calibration"]["drift"], list)

        status, result = await get_json(f"{base}/api/jobs/{accepted.job}/result")
        assert status == 200
        assert result["job"] == accepted.job
        assert result["state"] == "completed"
        assert result["registers"] or result["joint"]
        counts = [r["counts"] for r in result["registers"]] + [j["counts"] for j in result["joint"]]
        assert all(isinstance(c, list) for c in counts)
        status, missing = await get_json(f"{base}/api/jobs/no-such-job/result")
        assert status == 404, missing

        with trio.fail_after(5):
            event = await trio.to_thread.run_sync(_first_event, f"{base}/events", 5.0)
        assert event["lab"] == "test-lab"
        assert "recent" in event

        await check_metrics(base)


async def check_metrics(base: str) -> None:
    with trio.fail_after(10):  # the metrics ride on the next heartbeats
        while True:
            status, content_type, body = await get(f"{base}/metrics")
            assert status == 200
            assert content_type.startswith("text/plain; version=0.0.4")
            families = {f.name: f for f in text_string_to_metric_families(body.decode())}
            handled = families.get("awen_messages_handled")
            reporting = {s.labels.get("actor") for s in handled.samples} if handled is not None else set()
            if set(ACTORS) <= reporting:
                break
            await trio.sleep(0.3)
    assert families["awen_messages_handled"].type == "counter"
    up = {s.labels["actor"]: s.value for s in families["awen_up"].samples}
    assert {name: up.get(name) for name in ACTORS} == dict.fromkeys(ACTORS, 1.0)

    # What issue 17 names, after one job: each with the actor that reported it, no job id as a label.
    def value(family: str, **labels: str) -> float:
        samples = families[family].samples
        return sum(s.value for s in samples if labels.items() <= s.labels.items() and s.name.endswith("_total"))

    assert value("awen_shots", actor="executor") > 0
    assert value("awen_jobs", state="completed") >= 1
    kinds = {
        "awen_job_duration_seconds": "histogram",
        "awen_phase_duration_seconds": "histogram",
        "awen_queue_jobs": "gauge",
        "awen_device_link_up": "gauge",
        "awen_device_reconnects": "counter",
        "awen_interlocks": "counter",
        "awen_readback_alarms": "counter",
        "awen_calibration_age_seconds": "gauge",
        "awen_drift_fidelity": "gauge",
        "awen_actor_restarts": "counter",
        "awen_messages_malformed": "counter",
        "awen_store_bytes": "gauge",
    }
    assert {name: families[name].type for name in kinds if name in families} == kinds
    assert [s.value for s in families["awen_device_link_up"].samples] == [1.0]
    assert not any("job" in s.labels for f in families.values() for s in f.samples)


async def test_readyz_names_the_failing_check_when_an_actor_stops_answering(tmp_path: Path) -> None:
    # The web actor finds a heartbeat stale after 1 s, before the supervisor (1.5 s) kills the hung actor.
    async with web_lab(tmp_path, stale_after_s=1.0) as (sup, base):
        pid = (await sup.request("calibration", GetStatus())).pid
        os.kill(pid, signal.SIGSTOP)  # hung: no heartbeats, no answers
        try:
            with trio.fail_after(15):
                while True:
                    status, ready = await get_json(f"{base}/readyz")
                    if status == 503:
                        break
                    await trio.sleep(0.1)
        finally:
            with contextlib.suppress(ProcessLookupError):  # the supervisor may have killed it already
                os.kill(pid, signal.SIGCONT)
        assert ready["ready"] is False
        failing = {name for name, check in ready["checks"].items() if not check["ok"]}
        assert failing, ready
        assert failing <= {"heartbeat.calibration", "calibration"}, ready
        assert ready["checks"]["store"]["ok"]
        assert ready["checks"]["heartbeat.memory"]["ok"]


def test_web_listens_on_loopback_unless_allowed() -> None:
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0:7461"):
        WebConfig(listen="0.0.0.0:7461")
    with pytest.raises(ConfigError, match="HOST:PORT"):
        WebConfig(listen="7461")
    assert WebConfig(listen="0.0.0.0:7461", allow_remote=True).listen == "0.0.0.0:7461"
    assert WebConfig(listen="[::1]:0").listen == "[::1]:0"
