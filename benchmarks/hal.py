"""A short query through the HAL, against the same query on a raw socket and on raw pyserial.

One run, a simulated device in a process of its own (``awen sim serve``):

* raw socket: a blocking socket sends the exact line the driver sends
  (``HEAT:VOLT? 0;:SYST:ERR?``) and reads the reply;
* raw pyserial: the same over the simulator's pty (``Serial.readline``);
* driver: `drivers.PhotonicaDriver.query` over TCP and over the pty;
* HAL actor: ``hal.get_heater`` from an actor in this process to the HAL
  actor in its own process (ipc), and, as the bare actor baseline, ``sys.ping``
  between the same two actors;
* shots: a 10,000-shot run through the HAL, and the same run on a raw socket.

Targets (issue 4): driver round trip <= 1.5x the raw socket's; through the HAL
<= the driver's round trip + 1.2x a bare actor request/reply.

    python benchmarks/hal.py [--requests N]
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's directory comes first on sys.path, where this
# file would pass for the `hal` package.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import serial
import trio

from actors.lab import lab_system, system_toml
from drivers import open_driver
from protocol import scpi
from protocol.hal import ConfigureInputs, GetHeater, InputSetting, ListDevices, RunShots
from protocol.system import Ping
from runtime import Actor, ResolvedSystem

LINE = b"HEAT:VOLT? 0;:SYST:ERR?\n"
SHOTS = 10_000


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def timed(fn: Callable[[], object], count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def start(*args: str, until: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "awen.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    lines: list[str] = []
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{args} did not start: {lines}")
        lines.append(line.strip())
        if line.startswith(until):
            return proc, "\n".join(lines)


def raw_socket(port: int, count: int) -> list[float]:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        reader = sock.makefile("rb")

        def one() -> None:
            sock.sendall(LINE)
            reader.readline()

        for _ in range(100):
            one()
        return timed(one, count)


def raw_shots(port: int) -> float:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        framer = scpi.Framer()
        start = time.perf_counter()
        sock.sendall(b"INP:CLE;INP:STAT 0,PHOT;INP:STAT 1,PHOT;SOUR:ENAB ON;RUN:SHOT %d;FETC:PATT?\n" % SHOTS)
        while not any(isinstance(m, bytes) for m in framer.feed(sock.recv(1 << 20))):
            pass
        return time.perf_counter() - start


def raw_serial(path: str, count: int) -> list[float]:
    with serial.Serial(path, 115200, timeout=5) as port:

        def one() -> None:
            port.write(LINE)
            port.readline()

        for _ in range(100):
            one()
        return timed(one, count)


async def driver_round_trips(url: str, count: int) -> list[float]:
    async with open_driver(url) as driver:
        for _ in range(100):
            await driver.read_heater(0)
        times = []
        for _ in range(count):
            begin = time.perf_counter()
            await driver.read_heater(0)
            times.append(time.perf_counter() - begin)
        return times


async def through_hal(system_file: Path, count: int) -> tuple[list[float], list[float], float]:
    system = ResolvedSystem.load(system_file)
    client = Actor("bench", system.runtime_for())
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        with trio.fail_after(30):
            while (await client.request("hal", ListDevices())).devices[0].state != "connected":  # noqa: ASYNC110
                await trio.sleep(0.05)
        ping, hal = [], []
        for _ in range(100):
            await client.request("hal", Ping())
            await client.request("hal", GetHeater(device="chip", heater=0))
        for _ in range(count):
            begin = time.perf_counter()
            await client.request("hal", Ping())
            ping.append(time.perf_counter() - begin)
            begin = time.perf_counter()
            await client.request("hal", GetHeater(device="chip", heater=0))
            hal.append(time.perf_counter() - begin)
        photons = [InputSetting(mode=0, state="photon"), InputSetting(mode=1, state="photon")]
        await client.request("hal", ConfigureInputs(device="chip", inputs=photons))
        begin = time.perf_counter()
        shots = await client.request("hal", RunShots(device="chip", shots=SHOTS))
        elapsed = time.perf_counter() - begin
        assert shots.shots == SHOTS
        nursery.cancel_scope.cancel()
    return ping, hal, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    n = args.requests
    sim_tcp, banner = start("sim", "serve", "--tcp", "127.0.0.1:0", "--seed", "1", until="awen sim:")
    sim_pty, pty_lines = start("sim", "serve", "--pty", "--seed", "1", until="awen sim:")
    port = int(banner.rsplit(":", 1)[1])
    pty_path = pty_lines.splitlines()[0]
    try:
        with tempfile.TemporaryDirectory(prefix="awen-bench-") as tmp:
            config = Path(tmp) / "hal.toml"
            hal_alone = lab_system(device_url=f"tcp://127.0.0.1:{port}", actors=("hal",), log_level="warning")
            config.write_text(system_toml(hal_alone))
            socket_rt = raw_socket(port, n)
            serial_rt = raw_serial(pty_path, n)
            driver_tcp = trio.run(driver_round_trips, f"tcp://127.0.0.1:{port}", n)
            driver_pty = trio.run(driver_round_trips, f"serial://{pty_path}?baud=115200", n)
            raw_shot_s = raw_shots(port)
            up, up_lines = start("up", str(config), until="awen: up")
            try:
                system_file = Path(up_lines.splitlines()[-1].rsplit(" ", 1)[1])
                ping, hal, hal_shot_s = trio.run(through_hal, system_file, n)
            finally:
                up.terminate()
                up.wait(timeout=30)
    finally:
        for proc in (sim_tcp, sim_pty):
            proc.terminate()
            proc.wait(timeout=10)

    print(f"awen HAL benchmark: medians of {n} round trips of {LINE.strip()!r}; {SHOTS}-shot runs")
    print()
    rows = [
        ("raw socket (TCP)", median_us(socket_rt), None),
        ("driver over TCP", median_us(driver_tcp), median_us(driver_tcp) / median_us(socket_rt)),
        ("raw pyserial (pty)", median_us(serial_rt), None),
        ("driver over the pty", median_us(driver_pty), median_us(driver_pty) / median_us(serial_rt)),
        ("bare actor request/reply (sys.ping)", median_us(ping), None),
        ("through the HAL actor (hal.get_heater)", median_us(hal), None),
    ]
    for label, value, ratio in rows:
        print(f"  {label:<42}{value:>9.0f} us" + (f"   {ratio:.2f}x raw" if ratio else ""))
    budget = median_us(driver_tcp) + 1.2 * median_us(ping)
    print()
    print(f"  driver / raw socket: {median_us(driver_tcp) / median_us(socket_rt):.2f}x (target <= 1.5x)")
    print(
        f"  HAL / (driver + 1.2 x bare actor): {median_us(hal) / budget:.2f}x "
        f"({median_us(hal):.0f} us against {budget:.0f} us; target <= 1.0x)"
    )
    print(
        f"  {SHOTS} shots through the HAL: {SHOTS / hal_shot_s:,.0f} shots/s "
        f"(raw socket: {SHOTS / raw_shot_s:,.0f} shots/s, {raw_shot_s / hal_shot_s:.2f}x)"
    )


if __name__ == "__main__":
    main()
