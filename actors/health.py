"""Whether a lab is ready for work: the checks ``/readyz`` shows and ``awen up`` waits for before ``READY=1``.

One set of checks, asked by any actor of the lab (the web actor for
``/readyz``, the supervisor for systemd) through the actors' own requests,
all at once, each within `CHECK_TIMEOUT_S` (decision 0015 §1, §4):

* ``heartbeat.NAME``: every actor's heartbeats are fresh (the asker says how it knows);
* ``store``: the memory actor answers, its store file is writable, and its disk has at
  least ``min_free_bytes`` free;
* ``devices``: every device of every HAL is connected (or interlocked: the link is up,
  the interlock is the operator's) and has told its identity;
* ``calibration``: every calibration actor's chip has a valid calibration, or one
  being made.

A failed check's ``detail`` says what is wrong and what to do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from protocol import AwenError
from protocol.calibration import CalibrationStatus, GetCalibrationStatus
from protocol.hal import ListDevices
from protocol.memory import GetStoreInfo, StoreInfo
from runtime import Actor

CHECK_TIMEOUT_S = 2.0
"""How long one check waits for its actor's answer."""

MIN_FREE_BYTES = 256 * 2**20
"""The free disk space below which the store is not ready (its writes would soon fail)."""


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str


@dataclass(frozen=True)
class LabActors:
    """Which of a lab's actors the checks ask: names by kind."""

    memory: Sequence[str] = ("memory",)
    hal: Sequence[str] = ("hal",)
    calibration: Sequence[str] = ("calibration",)


async def lab_checks(
    actor: Actor,
    lab: LabActors,
    *,
    heartbeats: Mapping[str, Check],
    min_free_bytes: int = MIN_FREE_BYTES,
) -> dict[str, Check]:
    """Every check by name (``heartbeat.NAME``, ``store``, ``devices``, ``calibration``), in name order."""
    checks: dict[str, Check] = {f"heartbeat.{name}": check for name, check in heartbeats.items()}
    asked: list[tuple[str, Callable[[], Awaitable[Check]]]] = []
    for name in lab.memory:
        asked.append(("store" if len(lab.memory) == 1 else f"store.{name}", _store(actor, name, min_free_bytes)))
    if lab.hal:
        asked.append(("devices", _devices(actor, lab.hal)))
    if lab.calibration:
        asked.append(("calibration", _calibration(actor, lab.calibration)))

    async def run(name: str, check: Callable[[], Awaitable[Check]]) -> None:
        try:
            with trio.fail_after(CHECK_TIMEOUT_S):
                checks[name] = await check()
        except trio.TooSlowError:
            checks[name] = Check(False, f"no answer within {CHECK_TIMEOUT_S:g} s: is the actor up?")
        except AwenError as exc:
            checks[name] = Check(False, str(exc) or type(exc).__name__)

    async with trio.open_nursery() as nursery:
        for name, check in asked:
            nursery.start_soon(run, name, check)
    return dict(sorted(checks.items()))


def summary(checks: Mapping[str, Check]) -> tuple[bool, str]:
    """Ready or not, and one line naming what is not (systemd's ``STATUS=``, ``awen up``'s log)."""
    failed = [f"{name}: {check.detail}" for name, check in checks.items() if not check.ok]
    return not failed, "; ".join(failed)


def _store(actor: Actor, name: str, min_free_bytes: int) -> Callable[[], Awaitable[Check]]:
    async def check() -> Check:
        info: StoreInfo = await actor.request(name, GetStoreInfo())
        if not info.writable:
            return Check(False, f"{info.path} is not writable by awen's user: fix its permissions")
        if info.free_bytes < min_free_bytes:
            return Check(
                False,
                f"{_mib(info.free_bytes)} free where {info.path} is, below {_mib(min_free_bytes)}: free some space "
                "or move data_dir",
            )
        return Check(True, f"{info.path}: {_mib(info.file_bytes)}, {_mib(info.free_bytes)} free")

    return check


def _devices(actor: Actor, hals: Sequence[str]) -> Callable[[], Awaitable[Check]]:
    async def check() -> Check:
        bad: list[str] = []
        good: list[str] = []
        for hal in hals:
            for d in (await actor.request(hal, ListDevices())).devices:
                if d.state not in ("connected", "interlocked") or not d.identity:
                    why = f": {d.detail}" if d.detail else ""
                    bad.append(f"{d.name} is {d.state}{why} (check its cable or address: {d.url})")
                else:
                    good.append(f"{d.name}: {d.identity}" + (" (interlocked)" if d.state == "interlocked" else ""))
        return Check(not bad, "; ".join(bad) if bad else ", ".join(good) or "no devices")

    return check


def _calibration(actor: Actor, calibrations: Sequence[str]) -> Callable[[], Awaitable[Check]]:
    async def check() -> Check:
        details: list[tuple[bool, str]] = []
        for name in calibrations:
            status: CalibrationStatus = await actor.request(name, GetCalibrationStatus())
            details.append(_calibration_detail(status))
        return Check(all(ok for ok, _ in details), "; ".join(d for _, d in details))

    return check


def _calibration_detail(status: CalibrationStatus) -> tuple[bool, str]:
    if status.valid:
        return True, f"{status.device}: version {status.version} valid"
    if status.calibrating:
        return True, f"{status.device}: being calibrated"
    why = f" ({status.last_error})" if status.last_error else ""
    return False, f"{status.device}: no valid calibration{why}: run `awen calibrate`"


def _mib(n: Any) -> str:
    return f"{int(n) / 2**20:.0f} MiB"
