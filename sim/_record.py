"""The audit record: every change that reached the simulated chip, one JSON line each.

A lab audits a host (awen's HAL, or anything else) against a separate
simulator: whatever the host does, the record must never show a voltage or a
power over the limits. Each line is self-contained: the state of the chip after
the change (every heater's voltage as applied, the power they draw with the
chip's true resistances and with the nominal ones, the sources, the inputs),
when it happened, and which connection caused it. docs/simulator.md documents
the format.

`Device` writes the record through a callback; `RecordFile` is the callback
that appends each line to a file and closes it again, so that another process
reading the file sees every line as soon as it happened, and nothing is left
open when the device goes away.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

import msgspec

from protocol.photonica import DeviceDescription

RecordEvent = Literal[
    "start",
    "connect",
    "disconnect",
    "heaters",
    "sources",
    "inputs",
    "shots",
    "refused",
    "interlock",
    "interlock_reset",
    "watchdog",
    "safe_state",
    "reset",
]


class RecordEntry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One line of the audit record.

    Attributes:
        seq: 1, 2, 3... in the order the device carried the changes out.
        event: What happened (docs/simulator.md lists them).
        time_s: Device time (the clock replies are computed at).
        host_s: Host seconds since the device was built (its watchdog's clock).
        unix_s: Wall-clock time, to line the record up with a host's log.
        connection: The connection whose command caused it (numbered from 1 in
            the order clients connected); None for what the device did by itself.
        peer: That connection's far end (``tcp 127.0.0.1:50312``, ``pty /dev/pts/4``, ``in-process``).
        command: The command (short form) that caused it, ``HEAT:VOLT:ALL``.
        heater: The heater a ``HEAT:VOLT`` set.
        volts: Every heater's voltage after it, as applied (a stuck heater shows what it has).
        power_w: Total electrical power of ``volts`` with the chip's true resistances.
        power_nominal_w: The same with the nominal resistances of the description.
        heater_power_w: Each heater's power with its true resistance.
        sources: Whether the sources are on after it.
        interlock: Whether the interlock is tripped after it.
        inputs: Each mode's input after it, as ``INP:STAT?`` answers (``PHOT``,
            ``VAC``, ``COH,<power>,<phase>``).
        shots: The shots of a ``shots`` line.
        code: The SCPI error number of a ``refused`` or ``interlock`` line.
        error: Its text.
        timeout_s: The timeout of a ``watchdog`` that ran out.
        seed: The device's seed (``start``).
        description: What the device says about itself, limits included (``start``).
        resistance_ohm: The heaters' true resistances (``start``).
    """

    seq: int
    event: RecordEvent
    time_s: float
    host_s: float
    unix_s: float
    connection: int | None = None
    peer: str | None = None
    command: str | None = None
    heater: int | None = None
    volts: list[float] | None = None
    power_w: float | None = None
    power_nominal_w: float | None = None
    heater_power_w: list[float] | None = None
    sources: bool | None = None
    interlock: bool | None = None
    inputs: list[str] | None = None
    shots: int | None = None
    code: int | None = None
    error: str | None = None
    timeout_s: float | None = None
    seed: int | None = None
    description: DeviceDescription | None = None
    resistance_ohm: list[float] | None = None


Recorder = Callable[[RecordEntry], None]
"""Receives each entry as the device makes it, in order, before the device goes on."""

RecordTarget = str | os.PathLike[str] | Recorder
"""Where a device's record goes: a file (JSON lines) or a callback."""

_encoder = msgspec.json.Encoder()


def encode_entry(entry: RecordEntry) -> bytes:
    """One line of the file, newline included."""
    return _encoder.encode(entry) + b"\n"


class RecordFile:
    """Appends each entry to a JSON-lines file as it comes (the file is emptied first).

    Each line is written whole with one ``write`` to a file opened for appending
    and closed again at once: a reader in another process sees complete lines,
    in order, as they happen, and there is no open file to leak.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.write_bytes(b"")

    def __call__(self, entry: RecordEntry) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, encode_entry(entry))
        finally:
            os.close(fd)


def recorder(target: RecordTarget) -> Recorder:
    """The callback for a record target: a file path, or the callback itself."""
    if isinstance(target, str | os.PathLike):
        return RecordFile(target)
    return target


def read_record(path: str | os.PathLike[str]) -> list[RecordEntry]:
    """Every complete line of a record file (one still being written is left out)."""
    data = Path(path).read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    return [msgspec.json.decode(line, type=RecordEntry) for line in complete.splitlines()]


def record_violations(
    entries: Iterable[RecordEntry],
    *,
    v_max: float | list[float] | None = None,
    power_max_w: float | list[float] | None = None,
    power_limit_w: float | None = None,
    nominal: bool = False,
) -> list[str]:
    """Every line whose state breaks a limit, described; empty if none does.

    The limits default to the device's own, from the record's ``start`` line;
    pass stricter ones to audit a host configured stricter than the device.
    Powers are the true ones (what the chip draws), or with ``nominal`` the ones
    a host computes from the description's resistances.
    """
    problems: list[str] = []
    v_limits = p_limits = r_nominal = None
    total = power_limit_w
    for entry in entries:
        if entry.event == "start" and entry.description is not None:
            heaters = entry.description.heaters
            v_limits = _per_heater(v_max, heaters.count) or list(heaters.v_max)
            p_limits = _per_heater(power_max_w, heaters.count) or heaters.power_max_w
            r_nominal = heaters.resistance_ohm
            total = power_limit_w if power_limit_w is not None else heaters.power_limit_w
        if entry.volts is None:
            continue
        count = len(entry.volts)
        v_limits = v_limits or _per_heater(v_max, count) or [math.inf] * count
        p_limits = p_limits or _per_heater(power_max_w, count)
        if nominal:
            powers = None if r_nominal is None else [v * v / r for v, r in zip(entry.volts, r_nominal, strict=True)]
            power = entry.power_nominal_w
        else:
            powers, power = entry.heater_power_w, entry.power_w
        where = f"line {entry.seq} ({entry.event}, connection {entry.connection})"
        for heater, volts in enumerate(entry.volts):
            if not 0 <= volts <= v_limits[heater]:
                problems.append(f"{where}: heater {heater} at {volts!r} V, outside 0-{v_limits[heater]!r} V")
            if p_limits is not None and powers is not None and powers[heater] > p_limits[heater]:
                problems.append(f"{where}: heater {heater} draws {powers[heater]!r} W, over {p_limits[heater]!r} W")
        if total is not None and power is not None and power > total:
            problems.append(f"{where}: total power {power!r} W, over {total!r} W")
    return problems


def _per_heater(value: float | list[float] | None, count: int) -> list[float] | None:
    if value is None or isinstance(value, list):
        return value
    return [float(value)] * count
