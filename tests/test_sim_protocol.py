"""The simulator on the wire: every command over TCP and over a pty (pyserial), faults, garbage."""

from __future__ import annotations

import functools
import json
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import numpy as np
import pytest
import serial
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import scpi
from protocol.photonica import COMMANDS, decode_description
from sim import DeviceServer, SimConfig, parse_config, parse_fault, serve_pty, serve_tcp

Ask = Callable[[bytes], Awaitable[bytes]]


class TcpClient:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.framer = scpi.Framer()
        self.ready: list[bytes] = []

    async def send(self, line: bytes) -> None:
        await self.stream.send_all(line + b"\n")

    async def read(self) -> bytes:
        while not self.ready:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("the device closed the connection")
            self.ready.extend(m for m in self.framer.feed(data) if isinstance(m, bytes))
        return self.ready.pop(0)

    async def ask(self, line: bytes) -> bytes:
        await self.send(line)
        with trio.fail_after(10):
            return await self.read()


class SerialClient:
    """pyserial on the pty's far end, driven from a worker thread."""

    def __init__(self, path: str) -> None:
        self.port = serial.Serial(path, 115200, timeout=0.2)
        self.framer = scpi.Framer()
        self.ready: list[bytes] = []

    def _ask(self, line: bytes) -> bytes:
        self.port.write(line + b"\n")
        for _ in range(50):
            if self.ready:
                break
            data = self.port.read(max(1, self.port.in_waiting))
            self.ready.extend(m for m in self.framer.feed(data) if isinstance(m, bytes))
        if not self.ready:
            raise TimeoutError(f"no reply to {line[:40]!r}")
        return self.ready.pop(0)

    async def send(self, line: bytes) -> None:
        await trio.to_thread.run_sync(self.port.write, line + b"\n")

    async def ask(self, line: bytes) -> bytes:
        return await trio.to_thread.run_sync(self._ask, line)

    def close(self) -> None:
        self.port.close()


@asynccontextmanager
async def tcp_device(
    config: SimConfig, seed: int = 1
) -> AsyncIterator[tuple[DeviceServer, TcpClient, tuple[str, int]]]:
    server = DeviceServer(config, seed=seed)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_tcp, server, "127.0.0.1", 0)
        stream = await trio.open_tcp_stream(*address)
        async with stream:
            yield server, TcpClient(stream), address
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def pty_device(
    config: SimConfig, seed: int = 1, link: Path | None = None, on_path: Callable[[str], None] | None = None
) -> AsyncIterator[tuple[DeviceServer, SerialClient, str]]:
    server = DeviceServer(config, seed=seed)
    async with trio.open_nursery() as nursery:
        path = await nursery.start(functools.partial(serve_pty, server, link=link, on_path=on_path))
        client = SerialClient(path)
        try:
            yield server, client, path
        finally:
            client.close()
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def any_device(kind: str, config: SimConfig) -> AsyncIterator[tuple[DeviceServer, TcpClient | SerialClient]]:
    if kind == "tcp":
        async with tcp_device(config) as (server, client, _):
            yield server, client
    else:
        async with pty_device(config) as (server, client, _):
            yield server, client


def no_error(reply: bytes) -> None:
    assert reply == b'0,"No error"'


def floats(reply: bytes) -> list[float]:
    return [float(x) for x in reply.split(b",")]


SMALL = parse_config({"modes": 4, "delay_lines": {"count": 2}})


@pytest.mark.parametrize("kind", ["tcp", "pty"])
async def test_every_command_over_the_wire(kind):
    covered: set[str] = set()

    async with any_device(kind, SMALL) as (_server, client):

        async def ask(line: bytes) -> bytes:
            covered.update(c.pattern + ("?" if c.query else "") for c in _named(line))
            return await client.ask(line)

        async def do(line: bytes) -> None:
            covered.update(c.pattern + ("?" if c.query else "") for c in _named(line))
            no_error(await client.ask(line + b";:SYST:ERR?"))

        assert await ask(b"*IDN?") == b"Photonica,PX-8,SN-000001,1.4.2"
        assert await ask(b"*TST?") == b"0"
        assert await ask(b"SYST:ECHO? 12345") == b"12345"
        description = decode_description(scpi.unblock(await ask(b"SYST:CAP?")))
        assert description.modes == 4
        assert description.heaters.count == 16
        assert await ask(b"SYST:ERR?") == b'0,"No error"'
        await do(b"HEAT:VOLT 3,2.5")
        assert float(await ask(b"HEAT:VOLT? 3")) == pytest.approx(2.5)
        volts = np.linspace(0, 3, 16)
        await do(b"HEAT:VOLT:ALL " + scpi.block(volts.astype("<f8").tobytes()))
        assert np.allclose(np.frombuffer(scpi.unblock(await ask(b"HEAT:VOLT:ALL?")), "<f8"), volts)
        await do(b"HEAT:VOLT:ALL " + b",".join(b"1.5" for _ in range(16)))
        assert float(await ask(b"HEAT:POW?")) > 0
        assert await ask(b"*OPC?") == b"1"
        assert await ask(b"STAT:SETT?") == b"1"
        status = json.loads(scpi.unblock(await ask(b"STAT?")))
        assert status["interlock"] is False
        assert 20 < float(await ask(b"STAT:TEMP?")) < 40
        await do(b"SYST:WATC 30")
        assert float(await ask(b"SYST:WATC?")) == 30
        await do(b"SYST:WATC 0")
        assert await ask(b"SYST:INT?") == b"0"
        await do(b"SYST:INT:RES")
        await do(b"INP:STAT 0,PHOT;INP:STAT 1,PHOT")
        assert await ask(b"INP:STAT? 0") == b"PHOT"
        await do(b"SOUR:ENAB OFF")
        assert await ask(b"SOUR:ENAB?") == b"0"
        await do(b"SOUR:ENAB ON")
        await do(b"RUN:SHOT 1000")
        assert await ask(b"FETC:WIDT?") == b"4"
        assert await ask(b"FETC:SHOT?") == b"1000"
        patterns = np.frombuffer(scpi.unblock(await ask(b"FETC:PATT?")), np.uint8).reshape(1000, 4)
        counts = [int(x) for x in (await ask(b"FETC:COUN?")).split(b",")]
        assert counts == patterns.sum(axis=0).tolist()
        histogram = scpi.unblock(await ask(b"FETC:HIST?"))
        records = [histogram[i : i + 8] for i in range(0, len(histogram), 8)]
        assert sum(struct.unpack("<I", r[4:])[0] for r in records) == 1000
        await do(b"INP:CLE;INP:STAT 2,COH,1e-3")
        assert (await ask(b"INP:STAT? 2")).startswith(b"COH,1.0")
        powers = floats(await ask(b"MEAS:POW?"))
        assert len(powers) == 4
        assert 0 < sum(powers) < 1e-3
        assert float(await ask(b"MEAS:POW? 1")) == pytest.approx(powers[1], abs=5e-9)
        await do(b"INP:CLE")
        await do(b"FFOR:MEAS 0")
        assert await ask(b"FFOR:MEAS?") == b"0"
        await do(b"FFOR:RULE 1,2,1.5")
        assert json.loads(scpi.unblock(await ask(b"FFOR:RULE?"))) == {"1": {"2": 1.5}}
        assert float(await ask(b"FFOR:LAT?")) == pytest.approx(200e-9)
        await do(b"DLIN:ROUT 0,2,2,10")
        assert json.loads(scpi.unblock(await ask(b"DLINe:ROUTe?"))) == {"0": {"out": 2, "in": 2, "rounds": 10}}
        assert float(await ask(b"DLIN:LOOP?")) == pytest.approx(25e-9)
        await do(b"INP:STAT 1,PHOT;RUN:SHOT 100")
        assert await ask(b"FETC:WIDT?") == b"8"
        await do(b"DLIN:CLE;FFOR:CLE")
        assert await ask(b"FFOR:MEAS?") == b""
        await do(b"*CLS;*RST")
        assert float(await ask(b"HEAT:VOLT? 3")) == 0
    assert covered >= {c.pattern + ("?" if c.query else "") for c in COMMANDS}


def test_the_simulator_carries_out_every_command_of_the_command_set_and_no_other():
    from sim import Device

    assert set(Device(SMALL)._handlers) == set(COMMANDS)


def _named(line: bytes) -> list[object]:
    from protocol.photonica import find_command

    found = []
    for parsed in scpi.parse_message(line):
        if isinstance(parsed, scpi.Parsed):
            command = find_command(parsed.header, parsed.query)
            if command is not None:
                found.append(command)
    return found


@pytest.mark.parametrize(
    ("line", "code", "detail"),
    [
        (b"HEAT:VOLT 99,1", -222, "heater 99 does not exist"),
        (b"HEAT:VOLT 2,8", -222, "8 V is outside 0-7 V"),
        (b"HEAT:VOLT 2,-1", -222, "outside"),
        (b"HEAT:VOLT 2,abc", -104, "expected a number"),
        (b"HEAT:VOLT 2", -109, "needs <volts>"),
        (b"HEAT:VOLT 2,1,3", -108, "takes 2 parameter"),
        (b"HEAT:VOLT:ALL #18abcdefgh", -161, "expected 16 float64"),
        (b"HEAT:VOLT:ALL 1,2", -109, "expected 16 voltages"),
        (b"FROB:NICATE", -113, "unknown command"),
        (b"SYST:ERR", -113, "only as a query"),
        (b"INP:STAT 0,LASER", -224, "not one of PHOT|COH|VAC"),
        (b"INP:STAT 0,COH", -109, "needs a power"),
        (b"INP:STAT 0,COH,5", -222, "coherent power"),
        (b"INP:STAT 0,PHOT,1", -108, "takes no power"),
        (b"SOUR:ENAB MAYBE", -224, "expected ON, OFF"),
        (b"RUN:SHOT 0", -222, "0 shots"),
        (b"FETC:PATT?", -230, "no results"),
        (b"FFOR:RULE 1,0,1.0", -221, "feed-forward modes first"),
        (b"DLIN:ROUT 5,0,0,3", -222, "delay line 5 does not exist"),
        (b"SYST:WATC 1e9", -222, "watchdog timeout"),
        (b'HEAT:VOLT "3",1', -104, "expected an integer"),
        (b"HEAT:VOLT\t3 ,1 extra", -104, "expected a number"),
        (b"HEAT:VOLT:3", -103, "expected a space after the header"),
        (b":::", -113, "cannot read a header"),
        (b"\x00\x01\x02", -101, "Invalid character"),
        (b'SYST:NAME "unterminated', -102, "unterminated string"),
        (b"HEAT:VOLT #0abc", -161, "indefinite-length"),
    ],
)
async def test_bad_input_goes_to_the_error_queue_with_its_scpi_number(line, code, detail):
    async with tcp_device(SMALL) as (_, client, _address):
        await client.send(line)
        reply = await client.ask(b"SYST:ERR?")
        got, text = scpi.parse_error_entry(reply.decode())
        assert got == code, text
        assert detail in text
        assert await client.ask(b"*IDN?") == b"Photonica,PX-8,SN-000001,1.4.2"  # and it goes on


async def test_an_over_long_line_is_an_input_buffer_overrun():
    async with tcp_device(SMALL) as (_, client, _address):
        await client.send(b"HEAT:VOLT " + b"1" * (scpi.MAX_MESSAGE + 10))
        assert (await client.ask(b"SYST:ERR?")).startswith(b"-363,")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=400))
async def test_garbage_never_stops_the_server(data):
    async with tcp_device(SMALL) as (_, client, _address):
        await client.send(data)
        await client.send(b"")  # end whatever line the garbage left open
        # Garbage may hold valid queries: skip their replies up to a marker.
        await client.send(b"SYST:ECHO? 918273645")
        with trio.fail_after(10):
            while await client.read() != b"918273645":
                pass
        for _ in range(scpi.MAX_MESSAGE // 400):
            reply = await client.ask(b"SYST:ERR?")
            code, _text = scpi.parse_error_entry(reply.decode())
            assert code in scpi.ERROR_TEXT or code > 0
            if code == 0:
                break
        assert await client.ask(b"*IDN?") == b"Photonica,PX-8,SN-000001,1.4.2"


# --- faults ----------------------------------------------------------------------------------


def with_faults(*specs: str) -> SimConfig:
    return msgspec.structs.replace(SMALL, faults=[parse_fault(s) for s in specs])


async def test_close_fault_drops_the_connection_and_the_server_takes_the_next():
    async with tcp_device(with_faults("close:nth=2")) as (_, client, address):
        assert await client.ask(b"*IDN?")
        await client.send(b"*IDN?")
        with pytest.raises(EOFError), trio.fail_after(5):
            await client.read()
        again = TcpClient(await trio.open_tcp_stream(*address))
        assert await again.ask(b"*IDN?") == b"Photonica,PX-8,SN-000001,1.4.2"
        await again.stream.aclose()


async def test_delay_fault_holds_the_reply_back(autojump_clock):
    async with tcp_device(with_faults("delay:nth=1,seconds=5")) as (_, client, _address):
        await client.send(b"*IDN?")
        start = trio.current_time()
        with trio.move_on_after(4) as waited:
            await client.read()
        assert waited.cancelled_caught
        assert await client.read() == b"Photonica,PX-8,SN-000001,1.4.2"
        assert trio.current_time() - start == pytest.approx(5, abs=0.1)


async def test_corrupt_fault_flips_a_byte_of_the_reply():
    async with tcp_device(with_faults("corrupt:nth=1")) as (_, client, _address):
        reply = await client.ask(b"*IDN?")
        good = b"Photonica,PX-8,SN-000001,1.4.2"
        assert len(reply) == len(good)
        assert sum(a != b for a, b in zip(reply, good, strict=True)) == 1
        assert await client.ask(b"*IDN?") == good


async def test_a_fault_on_a_command_counts_only_that_command_and_corrupts_the_byte_asked_for():
    async with tcp_device(with_faults("corrupt:on=*IDN?,nth=2,at=0")) as (_, client, _address):
        good = b"Photonica,PX-8,SN-000001,1.4.2"
        assert await client.ask(b"*IDN?") == good
        for _ in range(3):  # other commands do not count
            assert await client.ask(b"SYST:ECHO? 42") == b"42"
        reply = await client.ask(b"*idn?")  # the second *IDN?: its first byte flipped
        assert reply[1:] == good[1:]
        assert reply[0] != good[0]
        assert await client.ask(b"*IDN?") == good


async def test_error_fault_answers_with_a_device_error_and_does_nothing():
    async with tcp_device(with_faults("error:nth=1,code=-240,message=heater driver fault")) as (_, client, _address):
        await client.send(b"HEAT:VOLT 1,3")
        assert await client.ask(b"SYST:ERR?") == b'-240,"Hardware error; heater driver fault"'
        assert float(await client.ask(b"HEAT:VOLT? 1")) == 0


async def test_interlock_fault_trips_the_interlock():
    async with tcp_device(with_faults("interlock:nth=2")) as (_, client, _address):
        await client.send(b"HEAT:VOLT 1,3")
        assert await client.ask(b"SYST:INT?") == b"1"
        assert float(await client.ask(b"HEAT:VOLT? 1")) == 0
        code, _ = scpi.parse_error_entry((await client.ask(b"SYST:ERR?")).decode())
        assert code == 101


async def test_probability_faults_fire_at_their_rate():
    async with tcp_device(with_faults("corrupt:p=0.3")) as (_, client, _address):
        good = b"Photonica,PX-8,SN-000001,1.4.2"
        corrupted = sum([await client.ask(b"*IDN?") != good for _ in range(400)])
        assert 120 - 4 * 9.2 < corrupted < 120 + 4 * 9.2  # binomial(400, 0.3): mean 120, sigma 9.2


async def test_stuck_heater_reads_back_what_it_really_has():
    async with tcp_device(with_faults("stuck:heater=3,volts=1.25")) as (_, client, _address):
        await client.send(b"HEAT:VOLT 3,4")
        assert float(await client.ask(b"HEAT:VOLT? 3")) == pytest.approx(1.25)


async def test_power_over_the_budget_trips_the_interlock_until_reset():
    async with tcp_device(SMALL) as (_, client, _address):
        await client.send(b"HEAT:VOLT:ALL " + b",".join(b"6.9" for _ in range(16)))
        assert await client.ask(b"SYST:INT?") == b"1"
        await client.send(b"HEAT:VOLT 0,1")
        assert (await client.ask(b"SYST:ERR?")).startswith(b"101,")  # the trip
        assert (await client.ask(b"SYST:ERR?")).startswith(b"101,")  # the refused write
        await client.send(b"SYST:INT:RES;HEAT:VOLT 0,1")
        assert float(await client.ask(b"HEAT:VOLT? 0")) == 1


async def test_watchdog_puts_the_device_in_its_safe_state(autojump_clock):
    async with tcp_device(SMALL) as (server, client, _address):
        await client.send(b"HEAT:VOLT 2,3;SOUR:ENAB ON;SYST:WATC 2")
        assert float(await client.ask(b"HEAT:VOLT? 2")) == 3
        await trio.sleep(1.5)
        assert float(await client.ask(b"HEAT:VOLT? 2")) == 3  # fed in time
        await trio.sleep(3)  # silence: the watchdog runs out with nobody asking
        assert server.device.chip.voltages.max() == 0
        assert await client.ask(b"SOUR:ENAB?") == b"0"
        assert (await client.ask(b"SYST:ERR?")).startswith(b"102,")


async def test_several_tcp_clients_are_served_one_command_at_a_time():
    async with tcp_device(SMALL) as (_, first, address):
        clients = [first] + [TcpClient(await trio.open_tcp_stream(*address)) for _ in range(4)]
        answers: list[bytes] = []

        async def hammer(client: TcpClient, heater: int) -> None:
            for volts in (1, 2, 3):
                answers.append(await client.ask(f"HEAT:VOLT {heater},{volts};HEAT:VOLT? {heater}".encode()))

        async with trio.open_nursery() as nursery:
            for heater, client in enumerate(clients):
                nursery.start_soon(hammer, client, heater)
        assert sorted(float(a) for a in answers) == sorted([1.0, 2.0, 3.0] * 5)
        for client in clients[1:]:
            await client.stream.aclose()


async def test_pty_close_fault_hangs_up_and_a_new_line_appears(tmp_path):
    link = tmp_path / "photonica"
    new_lines: list[str] = []
    moved = trio.Event()

    def on_path(path: str) -> None:
        new_lines.append(path)
        moved.set()

    async with pty_device(with_faults("close:nth=2"), link=link, on_path=on_path) as (_, client, path):
        assert os.readlink(link) == path
        assert await client.ask(b"*IDN?")
        await client.send(b"*IDN?")
        with trio.fail_after(10):
            await moved.wait()
        assert os.readlink(link) == new_lines[0] != path
        again = SerialClient(str(link))
        try:
            assert await again.ask(b"*IDN?") == b"Photonica,PX-8,SN-000001,1.4.2"
        finally:
            again.close()
