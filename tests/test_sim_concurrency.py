"""Several clients at once: their commands never interleave, and nothing the device does waits on a client."""

from __future__ import annotations

import functools
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import msgspec
import numpy as np
import trio

from protocol import scpi
from sim import DeviceServer, RecordEntry, SimConfig, parse_config, parse_fault, record_violations, serve_pty, serve_tcp

from .test_sim_protocol import SerialClient, TcpClient

SMALL = parse_config({"modes": 4})


Connect = Callable[[], Awaitable[TcpClient]]


@asynccontextmanager
async def served(
    config: SimConfig, entries: list[RecordEntry] | None = None
) -> AsyncIterator[tuple[DeviceServer, Connect]]:
    """A device on a TCP port, and a way to connect clients to it (closed on the way out)."""
    server = DeviceServer(config, seed=1, record=entries.append if entries is not None else None)
    async with trio.open_nursery() as nursery, AsyncExitStack() as clients:
        address = await nursery.start(serve_tcp, server, "127.0.0.1", 0)

        async def connect() -> TcpClient:
            return TcpClient(await clients.enter_async_context(await trio.open_tcp_stream(*address)))

        yield server, connect
        nursery.cancel_scope.cancel()


# --- the watchdog never waits on a client ------------------------------------------------------


async def test_a_shot_run_longer_than_the_watchdog_does_not_count_as_silence(autojump_clock):
    # The device is busy for the host during a run: the watchdog counts silence from its end.
    async with served(SMALL) as (server, connect):
        client = await connect()
        await client.send(b"HEAT:VOLT 2,3;SOUR:ENAB ON;INP:STAT 0,PHOT;SYST:WATC 0.5")
        reply = await client.ask(b"RUN:SHOT 1000000;FETC:SHOT?")  # 1 s of shots
        assert reply == b"1000000"
        assert float(await client.ask(b"HEAT:VOLT? 2")) == 3
        assert await client.ask(b"SYST:ERR?") == b'0,"No error"'
        await trio.sleep(1)  # and then real silence
        assert server.device.chip.voltages.max() == 0


async def test_a_delayed_reply_to_one_client_does_not_hold_the_device(autojump_clock):
    config = msgspec.structs.replace(SMALL, faults=[parse_fault("delay:on=*IDN?,nth=1,seconds=10")])
    async with served(config) as (server, connect):
        host, slow, other = await connect(), await connect(), await connect()
        await host.send(b"HEAT:VOLT 2,3;SYST:WATC 1")
        assert float(await host.ask(b"HEAT:VOLT? 2")) == 3
        await slow.send(b"*IDN?")  # its reply is held back 10 s
        start = trio.current_time()
        assert await other.ask(b"SYST:ECHO? 5") == b"5"  # others are answered meanwhile
        assert trio.current_time() - start < 0.1
        await trio.sleep(2)  # the host has gone quiet: the watchdog acts on time
        assert server.device.chip.voltages.max() == 0
        assert await slow.read() == b"Photonica,PX-8,SN-000001,1.4.2"


async def test_a_pty_s_new_line_is_up_before_the_old_one_hangs_up(tmp_path):
    # A client that follows the link when its line hangs up must find the new line there.
    link = tmp_path / "photonica"
    paths: list[str] = []
    seen: list[tuple[bool, bool]] = []
    moved = trio.Event()

    def on_path(path: str) -> None:
        seen.append((os.path.exists(paths[0]), os.readlink(link) == path and os.path.exists(path)))
        moved.set()

    config = msgspec.structs.replace(SMALL, faults=[parse_fault("close:nth=2")])
    server = DeviceServer(config, seed=1)
    async with trio.open_nursery() as nursery:
        paths.append(await nursery.start(functools.partial(serve_pty, server, link=link, on_path=on_path)))
        client = SerialClient(paths[0])
        try:
            assert await client.ask(b"*IDN?")
            await client.send(b"*IDN?")
            with trio.fail_after(10):
                await moved.wait()
        finally:
            client.close()
        nursery.cancel_scope.cancel()
    assert seen == [(True, True)]  # the old line was still up when the new one was announced


def first_block(reply: bytes) -> tuple[bytes, bytes]:
    """A reply that begins with a block: its payload, and what follows the ';' after it."""
    digits = reply[1] - 0x30
    end = 2 + digits + int(reply[2 : 2 + digits])
    assert reply[end : end + 1] == b";"
    return scpi.unblock(reply[:end]), reply[end + 1 :]


# --- many clients --------------------------------------------------------------------------------

CLIENTS = 8
MESSAGES = 40
LIMITS = parse_config(
    {"modes": 3, "heaters": {"v_max": {"default": 6.0, "4": 3.0}, "power_max_w": 0.03, "power_limit_w": 0.12}}
)


async def test_many_clients_at_once_leave_a_record_some_serial_order_explains():
    entries: list[RecordEntry] = []
    sent: dict[int, list[tuple[str, Any]]] = {}  # client's local port -> its accepted writes, in order
    reads: list[tuple[float, list[float]]] = []  # (device time of a read, what it answered)
    n = LIMITS.heater_count
    allowed = {"all": {0, 101}, "over": {-222, 101}, "trip": {101}}  # 101: tripped, or refused while tripped

    async def client(index: int, connect: Connect) -> None:
        rng = random.Random(index)
        me = await connect()
        mine = sent.setdefault(me.stream.socket.getsockname()[1], [])
        for _ in range(MESSAGES):
            kind = rng.choice(["all", "all", "one", "over", "trip", "light", "dark", "read", "reset"])
            if kind in allowed:
                volts = np.round([rng.uniform(0, 2.0) for _ in range(n)], 6)
                if kind == "over":
                    volts[4] = 3.5  # over heater 4's own v_max
                elif kind == "trip":
                    volts[:] = 4.5  # each within its limits (20 mW), 0.17 W in all
                    volts[4] = 2.0
                line = b"HEAT:VOLT:ALL " + scpi.block(volts.astype("<f8").tobytes()) + b";HEAT:VOLT:ALL?;SYST:ERR?"
                back, error = first_block(await me.ask(line))
                code, _ = scpi.parse_error_entry(error.decode())
                assert code in allowed[kind]
                if code == 0:
                    assert np.frombuffer(back, "<f8").tolist() == volts.tolist()  # nobody came between
                    mine.append(("all", volts.tolist()))
            elif kind == "one":
                heater, value = rng.randrange(n), round(rng.uniform(0, 2.5), 6)
                reply = await me.ask(f"HEAT:VOLT {heater},{value!r};HEAT:VOLT? {heater};SYST:ERR?".encode())
                back, error = reply.split(b";", 1)
                if error == b'0,"No error"':
                    assert float(back) == value
                    mine.append(("one", (heater, value)))
            elif kind == "light":
                mode = rng.randrange(LIMITS.modes)
                reply = await me.ask(f"SOUR:ENAB ON;INP:STAT {mode},PHOT;RUN:SHOT 3000;SOUR:ENAB?;FETC:SHOT?".encode())
                assert reply == b"1;3000"
            elif kind == "dark":
                assert await me.ask(b"SOUR:ENAB OFF;SOUR:ENAB?") == b"0"
            elif kind == "read":
                volts_block, status = first_block(await me.ask(b"HEAT:VOLT:ALL?;STAT?"))
                time_s = msgspec.json.decode(scpi.unblock(status))["time_s"]
                reads.append((time_s, np.frombuffer(volts_block, "<f8").tolist()))
            else:
                await me.send(b"SYST:INT:RES")
        await me.stream.aclose()

    async with served(LIMITS, entries) as (_server, connect), trio.open_nursery() as nursery:
        for index in range(CLIENTS):
            nursery.start_soon(client, index, connect)

    # The record is one serial order: numbered without gaps, in device time.
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    times = [e.time_s for e in entries]
    assert times == sorted(times)
    # Nothing over a limit ever reached the chip.
    assert record_violations(entries) == []
    assert record_violations(entries, nominal=True) == []
    # Each client's accepted writes, replayed in its own order, explain every line's heaters.
    port_of = {e.connection: int(e.peer.rsplit(":", 1)[1]) for e in entries if e.event == "connect" and e.peer}
    pending = {port: list(writes) for port, writes in sent.items()}
    state = [0.0] * n
    for entry in entries:
        if entry.volts is None:
            continue
        if entry.event == "heaters":
            kind, value = pending[port_of[entry.connection]].pop(0)
            if kind == "all":
                state = list(value)
            else:
                state = list(state)
                state[value[0]] = value[1]
        elif entry.event in ("interlock", "safe_state", "reset"):
            state = [0.0] * n
        assert entry.volts == state, entry
    assert all(not writes for writes in pending.values())  # every accepted write appears, once
    # A message is carried out whole: a shot run's sources and inputs lines come just before it, from its client.
    by_seq = {e.seq: e for e in entries}
    shots = [e for e in entries if e.event == "shots"]
    for run in shots:
        sources, inputs = by_seq[run.seq - 2], by_seq[run.seq - 1]
        assert (sources.event, inputs.event, run.sources) == ("sources", "inputs", True)
        assert sources.connection == inputs.connection == run.connection
    # Every read answered the state the record holds at its device time.
    for time_s, volts in reads:
        assert [e for e in entries if e.volts is not None and e.time_s <= time_s][-1].volts == volts
    assert {e.event for e in entries} >= {"heaters", "refused", "interlock", "interlock_reset", "shots", "sources"}
    assert len(port_of) == CLIENTS
