"""The simulator's audit record: every change that reached the chip, exactly once, in order."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
import trio

from sim import (
    Device,
    DeviceServer,
    RecordEntry,
    SimConfig,
    parse_config,
    parse_fault,
    read_record,
    record_violations,
    serve_tcp,
)

from .helpers import eventually

SMALL = parse_config({"modes": 4})


def recorded(config: SimConfig = SMALL) -> tuple[Device, list[RecordEntry]]:
    entries: list[RecordEntry] = []
    return Device(config, seed=1, record=entries.append), entries


def test_every_change_is_a_line_with_the_state_after_it():
    device, entries = recorded()
    device.handle(b"HEAT:VOLT 3,2.5;HEAT:VOLT 3,9;SOUR:ENAB ON;INP:STAT 0,PHOT;RUN:SHOT 10")
    device.handle(b"HEAT:VOLT:ALL " + b",".join([b"6.9"] * 16))  # over the total: trips the interlock
    device.handle(b"HEAT:VOLT 1,1;SYST:INT:RES;INP:CLE;*RST;*IDN?;HEAT:VOLT? 3")
    assert [(e.seq, e.event, e.command, e.code) for e in entries] == [
        (1, "start", None, None),
        (2, "heaters", "HEAT:VOLT", None),
        (3, "refused", "HEAT:VOLT", -222),
        (4, "sources", "SOUR:ENAB", None),
        (5, "inputs", "INP:STAT", None),
        (6, "shots", "RUN:SHOT", None),
        (7, "interlock", "HEAT:VOLT:ALL", 101),
        (8, "refused", "HEAT:VOLT", 101),
        (9, "interlock_reset", "SYST:INT:RES", None),
        (10, "inputs", "INP:CLE", None),
        (11, "reset", "*RST", None),
    ]
    start, heater, refused, sources, inputs, shots, trip = entries[:7]
    assert start.description == device.description
    assert start.resistance_ohm == device.chip.resistance.tolist()
    assert start.volts == [0.0] * 16
    assert (start.sources, start.interlock) == (False, False)
    assert heater.heater == 3
    assert heater.volts == [2.5 if h == 3 else 0.0 for h in range(16)]
    assert heater.power_w == 2.5**2 / device.chip.resistance[3]
    assert heater.power_nominal_w == 2.5**2 / 1000
    assert heater.heater_power_w is not None
    assert heater.heater_power_w[3] == heater.power_w
    assert refused.volts == heater.volts  # nothing changed
    assert refused.error is not None
    assert "9 V is outside 0-7 V" in refused.error
    assert sources.sources is True
    assert inputs.inputs == ["PHOT", "VAC", "VAC", "VAC"]
    assert shots.shots == 10
    assert (shots.sources, shots.inputs) == (True, inputs.inputs)
    assert trip.volts == [0.0] * 16
    assert trip.interlock is True
    assert entries[-1].sources is False
    assert all(e.connection is None for e in entries)  # no server: nobody to name
    assert record_violations(entries) == []


def test_the_device_s_own_actions_are_lines_without_a_connection():
    clock = [0.0]
    entries: list[RecordEntry] = []
    device = Device(SMALL, seed=1, host_clock=lambda: clock[0], record=entries.append)
    device.handle(b"HEAT:VOLT 2,3;SOUR:ENAB ON;SYST:WATC 2", connection=7)
    clock[0] = 2.5
    assert device.handle(b"SOUR:ENAB?", connection=9) == b"0"  # the message that finds it run out
    watchdog, safe = entries[-2:]
    assert (watchdog.event, watchdog.connection, watchdog.timeout_s, watchdog.volts) == ("watchdog", None, 2.0, None)
    assert (safe.event, safe.connection, safe.volts, safe.sources) == ("safe_state", None, [0.0] * 16, False)
    assert safe.host_s == 2.5
    assert [e.connection for e in entries[1:3]] == [7, 7]


def test_a_stuck_heater_is_recorded_as_it_is_and_an_audit_finds_it():
    config = msgspec.structs.replace(SMALL, faults=[parse_fault("stuck:heater=3,volts=8")])
    device, entries = recorded(config)
    device.handle(b"HEAT:VOLT 3,1")
    assert entries[-1].volts is not None
    assert entries[-1].volts[3] == 8.0
    problems = record_violations(entries)
    assert any("heater 3 at 8.0 V, outside 0-7.0 V" in p for p in problems)


def test_an_audit_against_stricter_limits_names_each_line_over_them():
    device, entries = recorded()
    device.handle(b"HEAT:VOLT 0,4;HEAT:VOLT 1,5.5")
    assert record_violations(entries) == []
    problems = record_violations(entries, v_max=5.0, power_limit_w=0.04)
    assert problems == [
        "line 3 (heaters, connection None): heater 1 at 5.5 V, outside 0-5.0 V",
        f"line 3 (heaters, connection None): total power {entries[2].power_w!r} W, over 0.04 W",
    ]
    assert record_violations(entries, power_max_w=0.02, nominal=True) == [
        "line 3 (heaters, connection None): heater 1 draws 0.03025 W, over 0.02 W"
    ]


def test_an_injected_error_refuses_the_write_it_replaces():
    config = msgspec.structs.replace(SMALL, faults=[parse_fault("error:nth=1,code=-240")])
    device, entries = recorded(config)
    message = b"HEAT:VOLT 1,3;HEAT:VOLT 2,3"
    device.handle(message, device.faults.next(message))  # as the server does
    assert [(e.event, e.heater, e.code) for e in entries[1:]] == [("refused", None, -240), ("heaters", 2, None)]


async def test_a_record_file_is_readable_while_the_device_runs(tmp_path):
    path = tmp_path / "record.jsonl"
    server = DeviceServer(SMALL, seed=1, record=path)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_tcp, server, "127.0.0.1", 0)
        async with await trio.open_tcp_stream(*address) as stream:
            local = stream.socket.getsockname()
            await stream.send_all(b"HEAT:VOLT 5,1.5;*OPC?\n")
            assert await stream.receive_some() == b"1\n"
            lines = read_record(path)  # another reader, while the device goes on
            assert [e.event for e in lines] == ["start", "connect", "heaters"]
            assert lines[1].peer == f"tcp {local[0]}:{local[1]}"
            assert (lines[2].connection, lines[2].peer) == (lines[1].connection, lines[1].peer)
            assert lines[2].volts is not None
            assert lines[2].volts[5] == 1.5

        async def disconnected() -> bool:
            await trio.lowlevel.checkpoint()
            return read_record(path)[-1].event == "disconnect"

        await eventually(disconnected, within=5)
        nursery.cancel_scope.cancel()
    text = path.read_text()
    assert text.count("\n") == 4
    assert '"event":"heaters"' in text.splitlines()[2]


def test_a_record_file_leaves_out_a_line_still_being_written(tmp_path):
    path = tmp_path / "record.jsonl"
    device = Device(SMALL, seed=1, record=path)
    device.handle(b"SOUR:ENAB ON")
    with path.open("ab") as f:
        f.write(b'{"seq":3,"ev')
    assert [e.event for e in read_record(path)] == ["start", "sources"]


def test_a_second_device_on_the_same_file_starts_it_afresh(tmp_path):
    path = tmp_path / "record.jsonl"
    Device(SMALL, seed=1, record=path).handle(b"SOUR:ENAB ON")
    Device(SMALL, seed=1, record=path)
    assert [e.event for e in read_record(path)] == ["start"]


@pytest.mark.parametrize("volts", [np.zeros(16), np.full(16, 1.0)])
def test_no_recorder_costs_nothing_and_changes_nothing(volts):
    plain, (traced, _entries) = Device(SMALL, seed=3), recorded()
    for device in (plain, traced):
        device.handle(b"HEAT:VOLT:ALL " + b",".join(str(v).encode() for v in volts))
    assert plain.handle(b"HEAT:VOLT:ALL?") == traced.handle(b"HEAT:VOLT:ALL?")
