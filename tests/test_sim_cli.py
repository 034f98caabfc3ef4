"""`awen sim serve` as an operator starts it: a separate program on TCP or a pty."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import serial

from protocol import scpi

from .helpers import awen_cli, awen_process

pytestmark = pytest.mark.system


@contextmanager
def awen_sim(*args: str) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    with awen_process("sim", "serve", *args) as (proc, reader):
        reader.until("awen sim:", timeout=30)
        yield proc, reader.seen


def ask_tcp(port: int, *lines: bytes) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        framer = scpi.Framer()
        replies: list[bytes] = []
        for line in lines:
            sock.sendall(line + b"\n")
            while len(replies) < sum(1 for sent in lines[: lines.index(line) + 1] if b"?" in sent):
                replies += [m for m in framer.feed(sock.recv(65536)) if isinstance(m, bytes)]
        return replies


def test_serve_tcp_with_a_seed_and_a_device_file(tmp_path):
    device = tmp_path / "chip.toml"
    device.write_text('modes = 6\n[identity]\nmodel = "PX-6"\nserial = "SN-42"\n')
    with awen_sim("--tcp", "127.0.0.1:0", "--seed", "5", "--device", str(device)) as (_, lines):
        port = int(lines[-1].rsplit(":", 1)[1])
        idn, heaters = ask_tcp(port, b"*IDN?", b"SYST:CAP?")
        assert idn == b"Photonica,PX-6,SN-42,1.4.2"
        assert b'"modes":6' in heaters


def test_the_same_seed_gives_the_same_replies_across_runs():
    script = (b"INP:STAT 0,PHOT;INP:STAT 2,PHOT", b"HEAT:VOLT 4,3", b"SOUR:ENAB ON;RUN:SHOT 200", b"FETC:PATT?")
    runs = []
    for _ in range(2):
        with awen_sim("--tcp", "127.0.0.1:0", "--seed", "11") as (_, lines):
            runs.append(ask_tcp(int(lines[-1].rsplit(":", 1)[1]), *script))
    assert runs[0] == runs[1]


def test_serve_pty_prints_a_path_pyserial_opens():
    with awen_sim("--pty", "--fault", "error:nth=2,code=-240") as (_, lines):
        path = lines[0]
        assert path.startswith("/dev/")
        with serial.Serial(path, 115200, timeout=5) as port:
            port.write(b"*IDN?\n")
            assert port.readline() == b"Photonica,PX-8,SN-000001,1.4.2\n"
            port.write(b"HEAT:VOLT 0,1\n")  # the second message: the injected error
            port.write(b"SYST:ERR?\n")
            assert port.readline().startswith(b"-240,")


def test_a_bad_device_file_is_refused_with_its_name(tmp_path):
    device = tmp_path / "chip.toml"
    device.write_text("modes = 1\n")
    result = awen_cli("sim", "serve", "--tcp", "127.0.0.1:0", "--device", str(device), timeout=60)
    assert result.returncode == 1
    assert f"{device}: Expected `int` >= 2 - at `$.modes`" in result.stderr


def test_serve_writes_an_audit_record_another_process_reads_as_it_grows(tmp_path):
    from sim import read_record, record_violations

    record = tmp_path / "record.jsonl"
    with awen_sim("--tcp", "127.0.0.1:0", "--record", str(record)) as (_, lines):
        port = int(lines[-1].rsplit(":", 1)[1])
        assert ask_tcp(port, b"HEAT:VOLT 2,3;HEAT:VOLT 2,8;SOUR:ENAB ON;*OPC?") == [b"1"]
        entries = read_record(record)  # while it runs
        events = [e.event for e in entries]
        assert events[:5] == ["start", "connect", "heaters", "refused", "sources"]  # written before the reply
        assert events[5:] in ([], ["disconnect"])
        assert entries[2].volts is not None
        assert entries[2].volts[2] == 3.0
        assert record_violations(entries) == []
