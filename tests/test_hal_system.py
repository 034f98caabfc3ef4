"""The HAL as a lab runs it: its own process, a separate simulator, signals and kill -9."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sim
from protocol import ErrorCode, scpi
from protocol.hal import ConfigureInputs, InputSetting, ListDevices, SetHeaters
from protocol.system import GetStatus
from runtime import Actor, ResolvedSystem

from .helpers import REPO, LineReader, awen_process
from .test_hal_concurrency import linearise

pytestmark = pytest.mark.system


class Sim:
    """Direct access to the simulator, past the HAL: what is really on the chip."""

    def __init__(self, port: int) -> None:
        self.port = port

    def ask(self, line: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(line + b"\n")
            framer = scpi.Framer()
            while True:
                for item in framer.feed(sock.recv(65536)):
                    if isinstance(item, bytes):
                        return item

    def heaters(self) -> np.ndarray:
        return np.frombuffer(scpi.unblock(self.ask(b"HEAT:VOLT:ALL?")), "<f8")

    def safe(self) -> bool:
        return not self.heaters().any() and self.ask(b"SOUR:ENAB?") == b"0"


@contextmanager
def lab(
    tmp_path: Path, *, hal_in_process: bool = False, record: Path | None = None, limits: str = ""
) -> Iterator[tuple[Sim, subprocess.Popen[str], Path, LineReader, LineReader]]:
    """A simulator process (its audit record in ``record``) and ``awen up`` with a HAL on it.

    ``limits``: more keys of the HAL's device entry (TOML inline-table syntax).
    """
    simulator = ("sim", "serve", "--tcp", "127.0.0.1:0", "--seed", "3", "--log-level", "info")
    if record is not None:
        simulator += ("--record", str(record))
    with awen_process(*simulator) as (sim_proc, sim_out):
        port = int(sim_out.until("awen sim:", timeout=60).rsplit(":", 1)[1])
        config = tmp_path / "lab.toml"
        config.write_text(
            f"""
log_level = "info"
[runtime]
heartbeat_interval = 0.2

[[actor]]
name = "hal"
factory = "actors.hal:HalActor"
process = {"false" if hal_in_process else "true"}
restart = {{ max_restarts = 5, window = 60, backoff = 0.1 }}
config = {{ devices = [{{ name = "chip", url = "tcp://127.0.0.1:{port}", watchdog_s = 1.0{limits} }}] }}
"""
        )
        with awen_process("up", str(config)) as (up, up_out):
            system_file = Path(up_out.until("awen: up", timeout=60).rsplit(" ", 1)[1])
            yield Sim(port), up, system_file, up_out, sim_out
        assert sim_proc.poll() is None  # the simulator outlived the HAL


def with_client(system_file: Path, body: object) -> object:
    system = ResolvedSystem.load(system_file)

    async def run() -> object:
        client = Actor("lab-client", system.runtime_for())
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            with trio.fail_after(60):
                result = await body(client)  # type: ignore[operator]
            nursery.cancel_scope.cancel()
        return result

    return trio.run(run)


async def energise(client: Actor) -> int:
    """Wait for the HAL to have its device, put light and voltages on it; the HAL's pid."""
    while (await client.request("hal", ListDevices())).devices[0].state != "connected":  # noqa: ASYNC110
        await trio.sleep(0.05)
    await client.request("hal", ConfigureInputs(device="chip", inputs=[InputSetting(mode=0, state="photon")]))
    await client.request("hal", SetHeaters(device="chip", changes={3: 2.5, 10: 1.0}))
    return (await client.request("hal", GetStatus())).pid


def test_sigterm_leaves_the_chip_safe(tmp_path):
    with lab(tmp_path) as (sim, up, system_file, up_out, _sim_out):
        with_client(system_file, energise)
        assert sim.heaters()[3] == 2.5
        assert not sim.safe()
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=30) == 0
        up_out.until("awen: stopped", timeout=10)
        assert sim.safe()  # at once: the HAL did it on its way out, not the watchdog
        assert sim.ask(b"SYST:ERR?") == b'0,"No error"'  # and the watchdog never had to act


def test_a_killed_hal_leaves_the_chip_safe_and_comes_back(tmp_path):
    with lab(tmp_path) as (sim, _up, system_file, up_out, _sim_out):
        hal_pid = with_client(system_file, energise)
        assert isinstance(hal_pid, int)
        assert not sim.safe()
        os.kill(hal_pid, signal.SIGKILL)  # no chance to clean up
        # The restarted HAL finds the chip as the dead one left it (unless the
        # device's watchdog got there first) and makes it safe before anything else.
        up_out.until("restarting hal", timeout=30, anywhere=True)
        up_out.until("chip: connected", timeout=30, anywhere=True)
        assert sim.safe()

        async def again(client: Actor) -> int:
            return await energise(client)

        new_pid = with_client(system_file, again)
        assert new_pid != hal_pid
        assert sim.heaters()[3] == 2.5  # the restarted HAL drives the chip again


def test_the_device_watchdog_acts_when_nothing_of_awen_is_left(tmp_path):
    with lab(tmp_path, hal_in_process=True) as (sim, up, system_file, _out, sim_out):
        with_client(system_file, energise)
        assert not sim.safe()
        up.kill()  # supervisor and HAL in one process, gone at once
        up.wait(timeout=10)
        # Nothing may talk to the device now: any command would feed its watchdog.
        sim_out.until("awen.sim: watchdog expired", timeout=10, anywhere=True)
        assert sim.safe()
        code, text = scpi.parse_error_entry(sim.ask(b"SYST:ERR?").decode())
        assert code == 102, text  # the watchdog, not a HAL, made it safe


HEATERS = 64  # the 8-mode chip `awen sim serve` simulates by default
V_MAX = {"default": 4.0, "5": 2.0, "40": 1.0}
POWER_MAX_W = {"7": 0.004}
POWER_LIMIT_W = 0.12
STRICTER = ', v_max = { default = 4.0, "5" = 2.0, "40" = 1.0 }, power_max_w = { "7" = 0.004 }, power_limit_w = 0.12'


def heater_requests(count: int) -> st.SearchStrategy[list[dict[str, Any]]]:
    """Heater settings of every kind, most of them within the limits, some over, some together over the budget."""
    volts = st.floats(0, 4.5, allow_nan=False).map(lambda v: round(v, 3))
    everything = st.lists(volts, min_size=HEATERS, max_size=HEATERS).map(
        lambda v: {"volts": [x / 4 for x in v], "changes": {}}
    )
    some = st.dictionaries(st.integers(0, HEATERS - 1).map(str), volts, min_size=1, max_size=5).map(
        lambda c: {"volts": None, "changes": c}
    )
    return st.lists(st.one_of(some, some, everything), min_size=count, max_size=count)


def test_clients_in_several_processes_never_take_the_chip_past_the_hals_limits(tmp_path):
    # A HAL configured stricter than the device, hammered by concurrent requests from trio tasks in
    # several client processes; the separate simulator's audit record is the judge. What reached the chip
    # must never break the HAL's limits, must be the accepted requests applied in one order (none lost or
    # half applied), and no read-back alarm may be raised (the chip holds what it should).
    record = tmp_path / "chip.jsonl"
    with lab(tmp_path, record=record, limits=STRICTER) as (_sim, _up, system_file, up_out, _sim_out):
        with_client(system_file, ready)
        budget = POWER_LIMIT_W * 0.9  # the HAL's default margin
        rounds = 0

        @settings(max_examples=6, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(st.lists(heater_requests(12), min_size=3, max_size=3))
        def one_round(per_client: list[list[dict[str, Any]]]) -> None:
            nonlocal rounds
            rounds += 1
            before = sim.read_record(record)
            states = [e.volts for e in before if e.event == "heaters" and e.volts is not None]
            start = np.array(states[-1] if states else np.zeros(HEATERS))
            outcomes = hammer(tmp_path, system_file, per_client)
            entries = sim.read_record(record)[len(before) :]
            assert (
                sim.record_violations(
                    entries,
                    v_max=limits(V_MAX),
                    power_max_w=limits(POWER_MAX_W, np.inf),
                    power_limit_w=budget,
                    nominal=True,
                )
                == []
            )
            assert {e.event for e in entries} <= {"heaters"}, "the device refused or tripped on something the HAL sent"
            requests = [request for client in per_client for request in client]
            accepted = [
                (as_request(request), Readback(outcome))
                for request, outcome in zip(requests, [o for client in outcomes for o in client], strict=True)
                if "error" not in outcome
            ]
            refused = [o for client in outcomes for o in client if "error" in o]
            assert {o["error"] for o in refused} <= {ErrorCode.SAFETY_LIMIT}, refused
            linearise(start, [np.array(e.volts) for e in entries], accepted)
            assert all(readback.mismatched == [] for _, readback in accepted)

        one_round()
        assert rounds >= 3
        with pytest.raises(AssertionError):  # no alarm in the HAL's log, ever
            up_out.until("read differs", timeout=2, anywhere=True)


async def ready(client: Actor) -> None:
    while (await client.request("hal", ListDevices())).devices[0].state != "connected":  # noqa: ASYNC110
        await trio.sleep(0.05)


def limits(table: dict[str, float], unnamed: float | None = None) -> list[float]:
    default = table.get("default", unnamed if unnamed is not None else np.inf)
    values = [default] * HEATERS
    for key, value in table.items():
        if key != "default":
            values[int(key)] = value
    return values


def hammer(tmp_path: Path, system_file: Path, per_client: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    """Run one client process per list of requests, side by side; their outcomes."""
    processes = []
    for i, requests in enumerate(per_client):
        asked, answered = tmp_path / f"requests-{i}.json", tmp_path / f"outcomes-{i}.json"
        asked.write_text(json.dumps(requests))
        answered.unlink(missing_ok=True)
        command = [sys.executable, "-m", "tests.hal_client", str(system_file), str(asked), str(answered)]
        processes.append((subprocess.Popen(command, cwd=REPO), answered))
    outcomes = []
    for process, answered in processes:
        try:
            assert process.wait(timeout=120) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        outcomes.append(json.loads(answered.read_text()))
    return outcomes


class Readback:
    """An accepted request's reply, as `tests.test_hal_concurrency.linearise` reads it."""

    def __init__(self, outcome: dict[str, Any]) -> None:
        self.readback = np.array(outcome["readback"])
        self.mismatched = outcome["mismatched"]


def as_request(request: dict[str, Any]) -> SetHeaters:
    volts = None if request["volts"] is None else np.array(request["volts"])
    return SetHeaters(device="chip", volts=volts, changes={int(h): v for h, v in request["changes"].items()})
