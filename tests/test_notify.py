"""systemd's notify protocol (decision 0015 §4): `awen._notify` on real AF_UNIX datagram sockets, and
``awen up`` telling a socket of the test's what systemd would hear: READY, WATCHDOG, STATUS, STOPPING."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import time
from pathlib import Path

import pytest

from awen._notify import notify, watchdog_interval

from .helpers import awen_process, free_port


def datagram_socket(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_notify_sends_one_datagram_to_a_path(tmp_path):
    path = str(tmp_path / "n.sock")
    with datagram_socket(path) as sock:
        assert notify("READY=1\nSTATUS=up", {"NOTIFY_SOCKET": path})
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_notify_to_an_at_sign_is_the_abstract_namespace():
    name = f"awen-test-{secrets.token_hex(6)}"
    with datagram_socket("\0" + name) as sock:
        assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_notify_without_a_socket_does_nothing_and_a_dead_one_is_not_an_error(tmp_path):
    assert notify("READY=1", {}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": ""}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "nobody.sock")}) is False


def test_the_watchdog_is_due_at_half_its_period_and_only_for_this_process():
    assert watchdog_interval({"WATCHDOG_USEC": "2000000"}) == 1.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


def received(sock: socket.socket, seconds: float) -> list[str]:
    """Every line of every datagram that comes within ``seconds``."""
    lines: list[str] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            lines += sock.recv(65536).decode().splitlines()
        except TimeoutError:
            break
    return lines


def until(sock: socket.socket, wanted: str, seconds: float, seen: list[str]) -> None:
    """Read lines into ``seen`` until one is ``wanted``; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while wanted not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {wanted} within {seconds:g} s; got {seen}"
        sock.settimeout(left)
        try:
            seen += sock.recv(65536).decode().splitlines()
        except TimeoutError:
            continue


@pytest.mark.system
def test_awen_up_tells_systemd_ready_watchdog_status_and_stopping(tmp_path, monkeypatch):
    path = Path(tmp_path) / "notify.sock"
    monkeypatch.setenv("AWEN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    with (
        datagram_socket(str(path)) as sock,
        awen_process("up", "--modes", "4", "--port", str(free_port()), "--no-http") as (
            proc,
            out,
        ),
    ):
        seen: list[str] = []
        began = time.monotonic()
        until(sock, "READY=1", 60, seen)
        ready_s = time.monotonic() - began
        before_ready = list(seen)
        seen.clear()
        until(sock, "WATCHDOG=1", 5, seen)
        seen.remove("WATCHDOG=1")
        until(sock, "WATCHDOG=1", 5, seen)
        status = [line for line in seen if line.startswith("STATUS=")]
        print(f"READY after {ready_s:.1f} s (before it: {before_ready}); then {seen}")
        assert status, seen
        assert "jobs queued" in status[-1]
        assert "calibration" in status[-1]  # a version, or "(calibrating)" at the first start
        proc.send_signal(signal.SIGTERM)
        seen.clear()
        until(sock, "STOPPING=1", 10, seen)
        assert proc.wait(timeout=30) == 0
        after = received(sock, 0.5)
        assert "WATCHDOG=1" not in after  # nothing more once it stops
        assert "READY=1" not in after
        assert "awen: SIGTERM: draining" in "\n".join(out.seen + out.rest(timeout=5))


@pytest.mark.system
def test_awen_up_without_systemd_prints_when_the_lab_is_ready(tmp_path, monkeypatch):
    monkeypatch.setenv("AWEN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    with awen_process("up", "--modes", "4", "--port", str(free_port()), "--no-http") as (proc, out):
        out.until("awen: up", timeout=60)
        out.until("awen: ready", timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


@pytest.mark.system
def test_awen_up_queues_a_calibration_when_none_is_valid_and_none_is_being_made(tmp_path, monkeypatch):
    import msgspec

    from actors.lab import system_toml
    from awen.daemon import default_lab

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    lab = default_lab(tmp_path / "data", modes=4, port=free_port())
    actors = [
        msgspec.structs.replace(a, config={**a.config, "auto": False}) if a.name == "calibration" else a
        for a in lab.actors
    ]
    path = tmp_path / "lab.toml"
    path.write_text(system_toml(msgspec.structs.replace(lab, actors=actors)))
    with awen_process("up", str(path)) as (proc, out):
        out.until("awen: no valid calibration: calibrating now", timeout=60)
        out.until("awen: ready", timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
