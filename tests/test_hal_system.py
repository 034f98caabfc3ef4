"""The HAL as a lab runs it: its own process, a separate simulator, signals and kill -9."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import trio

from actors import Actor, ResolvedSystem, Runtime
from protocol import scpi
from protocol.hal import ConfigureInputs, InputSetting, ListDevices, SetHeaters
from protocol.system import GetStatus

from .helpers import LineReader, awen_process

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
    tmp_path: Path, *, hal_in_process: bool = False
) -> Iterator[tuple[Sim, subprocess.Popen[str], Path, LineReader, LineReader]]:
    simulator = ("sim", "serve", "--tcp", "127.0.0.1:0", "--seed", "3", "--log-level", "info")
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
config = {{ devices = [{{ name = "chip", url = "tcp://127.0.0.1:{port}", watchdog_s = 1.0 }}] }}
"""
        )
        with awen_process("up", str(config)) as (up, up_out):
            system_file = Path(up_out.until("awen: up", timeout=60).rsplit(" ", 1)[1])
            yield Sim(port), up, system_file, up_out, sim_out
        assert sim_proc.poll() is None  # the simulator outlived the HAL


def with_client(system_file: Path, body: object) -> object:
    system = ResolvedSystem.load(system_file)

    async def run() -> object:
        client = Actor("lab-client", Runtime(system.make_directory(), system.runtime))
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
