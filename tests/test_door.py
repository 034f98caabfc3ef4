"""The door (decision 0014): a lab in real processes, reached through its one address by raw clients."""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import zmq

from actors.lab import LAB_ACTORS, lab_system
from protocol.calibration import Calibrate
from runtime import RuntimeOptions, Supervisor, open_system
from sim import parse_config, write_factory_calibration

from .circuits import hom

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parent.parent
ids = itertools.count(1)


@asynccontextmanager
async def door_lab(tmp_path: Path) -> AsyncIterator[tuple[Supervisor, str]]:
    """The standard lab on a seeded simulated chip, calibrated, with its door on an ipc socket."""
    factory = tmp_path / "factory.json"
    write_factory_calibration(factory, parse_config({"modes": 4}), 3)
    endpoint = f"ipc://{tmp_path}/awen.sock"
    system = lab_system(
        data_dir=tmp_path / "data",
        device_url="sim://?seed=3&modes=4",
        factory_calibration=factory,
        log_level="warning",
        runtime=RuntimeOptions(heartbeat_interval=0.5, request_timeout=30.0),
        run_dir=tmp_path / "run",
        door=[endpoint],
    )
    async with open_system(system) as sup:
        with trio.fail_after(120):
            await sup.wait_started()
            for name in (*LAB_ACTORS, "door"):
                await sup.wait_peer(name)
            await sup.request("calibration", Calibrate())
        yield sup, endpoint


class RawClient:
    """A DEALER speaking the envelope by hand, as a client in another language would."""

    def __init__(self, endpoint: str, name: str) -> None:
        self.name = name
        self.sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.pushed: list[dict[str, Any]] = []

    def send(self, msg_type: str, body: dict[str, Any], to: str = "door") -> int:
        msg_id = next(ids)
        env = {"v": 1, "id": msg_id, "type": msg_type, "from": self.name, "to": to, "ts": time.time(), "body": body}
        self.sock.send(msgpack.packb(env))
        return msg_id

    def receive(self, timeout: float = 30.0) -> dict[str, Any] | None:
        if not self.sock.poll(int(timeout * 1000)):
            return None
        env: dict[str, Any] = msgpack.unpackb(self.sock.recv(), strict_map_key=False)
        return env

    def ask(self, msg_type: str, body: dict[str, Any], to: str = "door", timeout: float = 30.0) -> dict[str, Any]:
        msg_id = self.send(msg_type, body, to)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            env = self.receive(left)
            if env is None:
                break
            if env.get("re") == msg_id:
                return env
            self.pushed.append(env)
        raise AssertionError(f"no answer to {msg_type} within {timeout} s")

    def close(self) -> None:
        self.sock.close()


async def test_a_client_in_another_language_submits_waits_and_reads_its_counts(tmp_path):
    circuit = tmp_path / "hom.json"
    circuit.write_text(json.dumps(json.loads((REPO / "examples" / "hom.json").read_text()) | {"shots": 2000}))
    async with door_lab(tmp_path) as (_sup, endpoint):
        done = await trio.run_process(
            [sys.executable, str(REPO / "examples" / "raw_client.py"), endpoint, str(circuit)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    assert ": completed, calibration 1, 2000 shots" in out
    assert "register hom (modes [0, 1] on detectors" in out
    assert "hom_visibility" in out or "visibility" in out


async def test_the_door_forwards_only_its_allowlist(tmp_path):
    async with door_lab(tmp_path) as (_sup, endpoint):
        client = RawClient(endpoint, f"t-{os.getpid()}")
        try:
            await trio.to_thread.run_sync(lambda: _allowlist_checks(client))
        finally:
            client.close()


def _allowlist_checks(client: RawClient) -> None:
    welcome = client.ask("door.hello", {"client": "tester", "protocol": 1})
    assert welcome["type"] == "door.welcome"
    body = welcome["body"]
    assert body["actors"]["scheduler"] == "scheduler"
    assert "sched.submit" in body["forwards"]["scheduler"]
    assert "hal.set_heaters" not in body["forwards"]["hal"]
    assert body["devices"] == ["chip"]
    # Setting the chip, or writing the store, is not a client's to do.
    heaters = client.ask("hal.set_heaters", {"device": "chip", "volts": [0.0]}, to="hal")
    assert heaters["type"] == "sys.error"
    assert heaters["body"]["code"] in ("no-handler", "invalid")
    put = client.ask("mem.put_job", {"job": "x"}, to="memory")
    assert put["type"] == "sys.error"
    assert put["body"]["code"] in ("no-handler", "invalid")
    nobody = client.ask("sys.ping", {"data": b"x"}, to="telescope")
    assert nobody["type"] == "sys.error"
    assert nobody["body"]["code"] == "wrong-recipient"
    # What is forwarded comes back as the actor said it, refusals too.
    queue = client.ask("sched.get_queue", {}, to="scheduler")
    assert queue["type"] == "sched.queue"
    missing = client.ask("mem.get_job", {"job": "no-such-job"}, to="memory")
    assert missing["type"] == "sys.error"
    assert missing["body"]["code"] == "not-found"
    assert "no-such-job" in missing["body"]["message"]
    garbage_reply = _garbage(client)
    assert garbage_reply["type"] == "sys.error"
    # ... and the door still answers.
    assert client.ask("sys.ping", {"data": b"ok"}, to="door")["type"] == "sys.pong"


def _garbage(client: RawClient) -> dict[str, Any]:
    client.sock.send(b"\x81\xa1v\x01")  # a map with a version and nothing else
    env = client.receive(10)
    assert env is not None
    return env


async def test_each_client_gets_the_events_it_subscribed_to(tmp_path):
    async with door_lab(tmp_path) as (_sup, endpoint):
        watcher = RawClient(endpoint, "watcher")
        other = RawClient(endpoint, "other")
        try:
            await trio.to_thread.run_sync(lambda: _events_checks(watcher, other))
        finally:
            watcher.close()
            other.close()


def _events_checks(watcher: RawClient, other: RawClient) -> None:
    assert watcher.ask("door.subscribe", {"prefixes": ["exec.progress", "mem.results_complete"]})["type"] == "sys.ok"
    assert other.ask("door.subscribe", {"prefixes": ["sched.queue_paused"]})["type"] == "sys.ok"
    circuit = json.loads(json.dumps(hom(shots=3000), default=_builtins))
    accepted = watcher.ask("sched.submit", {"circuit": circuit, "key": "events-1"}, to="scheduler")
    assert accepted["type"] == "sched.accepted", accepted
    job = accepted["body"]["job"]
    waited = watcher.ask("door.wait_job", {"job": job, "timeout_s": 30, "result": True}, timeout=40)
    assert waited["body"]["ended"]
    assert waited["body"]["record"]["state"] == "completed"
    deadline = time.monotonic() + 10
    while not any(e["type"] == "mem.results_complete" for e in watcher.pushed) and time.monotonic() < deadline:
        env = watcher.receive(1)
        if env is not None:
            watcher.pushed.append(env)
    types = {e["type"] for e in watcher.pushed}
    assert "mem.results_complete" in types
    assert all(t.startswith(("exec.progress", "mem.results_complete", "sys.heartbeat")) for t in types), types
    # The other client asked for none of these (it does get the door's heartbeat).
    until = time.monotonic() + 2
    while time.monotonic() < until and (env := other.receive(0.5)) is not None:
        other.pushed.append(env)
    assert {e["type"] for e in other.pushed} <= {"sys.heartbeat"}


def _builtins(value: Any) -> Any:
    import msgspec

    return msgspec.to_builtins(value)
