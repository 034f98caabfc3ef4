"""The simulator's control port (decision 0016 §2): `awen sim serve --control` and `sim.SimControl`."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from protocol import scpi
from protocol.photonica import StatusReport, decode_status
from sim import SimControl

from .helpers import awen_process

pytestmark = pytest.mark.system


class Device:
    """A raw device-protocol connection."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.framer = scpi.Framer()
        self.pending: list[bytes] = []

    def ask(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\n")
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.pending += [m for m in self.framer.feed(data) if isinstance(m, bytes)]
        return self.pending.pop(0)

    def close(self) -> None:
        self.sock.close()


@contextmanager
def sim_with_control() -> Iterator[tuple[int, SimControl]]:
    with awen_process("sim", "serve", "--tcp", "127.0.0.1:0", "--control", "127.0.0.1:0", "--seed", "3") as (
        _,
        reader,
    ):
        device_line = reader.until("awen sim: Photonica", timeout=30)
        control_line = reader.until("awen sim: control on", timeout=30)
        device_port = int(device_line.rsplit(":", 1)[1])
        control = SimControl("127.0.0.1", int(control_line.rsplit(":", 1)[1]))
        try:
            yield device_port, control
        finally:
            control.close()


def status(device: Device) -> StatusReport:
    return decode_status(scpi.unblock(device.ask(b"STAT?")))


def test_faults_injected_and_cleared_through_the_control_port():
    with sim_with_control() as (port, control):
        device = Device(port)
        try:
            assert device.ask(b"SYST:INT?") == b"0"
            control.interlock()
            assert device.ask(b"SYST:INT?") == b"1"
            assert status(device).interlock
            assert control.state()["interlock"] is True
            control.clear()
            assert device.ask(b"SYST:INT?") == b"0"

            device.ask(b"HEAT:VOLT 3,1.5;*OPC?")
            control.stuck(3)
            device.ask(b"HEAT:VOLT 3,2.5;*OPC?")
            assert float(device.ask(b"HEAT:VOLT? 3")) == 1.5
            control.clear()
            assert float(device.ask(b"HEAT:VOLT? 3")) == 2.5

            control.slow(0.2)
            start = time.monotonic()
            device.ask(b"*IDN?")
            assert time.monotonic() - start >= 0.15
            control.clear()

            control.fault("close", nth=1)
            with pytest.raises((ConnectionError, OSError)):
                device.ask(b"*IDN?")
        finally:
            device.close()
        device = Device(port)  # the server carries on: a new connection is answered normally
        try:
            control.clear()
            assert device.ask(b"*IDN?").startswith(b"Photonica")
            assert control.state()["injected"] == 0
        finally:
            device.close()


def test_drift_advances_device_time_and_the_heater_phases():
    with sim_with_control() as (port, control):
        before = control.state()
        control.drift(10)
        after = control.state()
        assert after["clock_s"] >= before["clock_s"] + 10 * 3600
        assert after["drift_rad_rms"] > before["drift_rad_rms"]
        device = Device(port)
        try:
            assert status(device).time_s >= 10 * 3600
        finally:
            device.close()


def test_a_bad_command_is_an_error_and_the_connection_carries_on():
    with sim_with_control() as (_, control):
        assert control.send("frobnicate").startswith("error: unknown command 'frobnicate'")
        assert control.send("fault close nth=x").startswith("error: fault")
        assert control.send("drift soon").startswith("error: drift")
        assert control.send("stuck 9999").startswith("error: stuck")
        assert control.send("").startswith("error:")
        assert control.send("state").startswith("ok {")


def test_a_non_loopback_control_port_is_refused():
    with awen_process("sim", "serve", "--tcp", "127.0.0.1:0", "--control", "0.0.0.0:0") as (proc, reader):
        assert proc.wait(timeout=30) != 0
        assert any("loopback" in line for line in reader.rest())
