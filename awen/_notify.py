"""systemd's notify protocol, without a dependency: datagrams to ``$NOTIFY_SOCKET`` (decision 0015 §4).

`notify` sends one datagram (``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``,
``STATUS=...``) to the socket systemd names, a path or, when it begins
with ``@``, a name in the abstract namespace; without ``$NOTIFY_SOCKET``
(not run by systemd) it does nothing. `watchdog_interval` is how often
``WATCHDOG=1`` is due: half of ``$WATCHDOG_USEC``, if the watchdog is meant
for this process (``$WATCHDOG_PID``). `report` is what ``awen up`` runs
beside the lab, with or without systemd: ``awen: ready`` on stdout (and
``READY=1``) once the lab is (`awen.daemon.lab_ready`), what is not ready
until then; under systemd then the watchdog only while every actor's
heartbeat is fresh, and a one-line status.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING

import trio

from protocol import AwenError

if TYPE_CHECKING:
    from runtime import Supervisor

log = logging.getLogger("awen.notify")

READY_POLL_S = 0.5
"""How often readiness is asked until the lab is ready."""
STATUS_S = 10.0
"""How often the status line is sent without a watchdog."""
NOT_READY_EVERY_S = 5.0
"""The shortest time between two ``awen: not ready`` lines (a new one only when what is not ready changes)."""
CALIBRATE_WAIT_S = 3600.0
"""How long a calibration ``awen up`` queued is waited for (only to log its outcome)."""


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (one or more ``KEY=value`` lines) to ``$NOTIFY_SOCKET``; whether it was sent.

    No socket named: nothing is sent. A socket that cannot be reached is logged, never raised: the
    lab runs on without its service manager.
    """
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("cannot notify the service manager at %s: %s", address.replace("\0", "@"), exc)
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1``: half of ``$WATCHDOG_USEC``; None without a watchdog for this process."""
    env = os.environ if environ is None else environ
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    try:
        if not usec or int(usec) <= 0 or (pid and int(pid) != os.getpid()):
            return None
        return int(usec) / 2e6
    except ValueError:
        log.warning("ignoring a malformed WATCHDOG_USEC=%r or WATCHDOG_PID=%r", usec, pid)
        return None


def stale_actors(supervisor: Supervisor) -> list[str]:
    """The actors whose heartbeat is not fresh (the supervisor sees them other than ``up``)."""
    return [spec.name for spec in supervisor.system.actors if supervisor.peer_state(spec.name) != "up"]


async def report(supervisor: Supervisor, scope: trio.CancelScope | None = None) -> None:
    """Follow the lab's readiness for as long as it runs, or until ``scope`` is cancelled.

    On stdout: ``awen: ready`` once `awen.daemon.lab_ready` says so; until then ``awen: not ready: WHAT``
    whenever WHAT changes, at most every `NOT_READY_EVERY_S`. A lab with no valid calibration and none
    being made (a system file without ``auto = true``) has one queued (`_calibrate_once`): start-up
    checks pass when the calibration is valid or queued (issue 17).

    Under systemd (``$NOTIFY_SOCKET``) also ``READY=1`` then, and afterwards, every watchdog interval,
    ``WATCHDOG=1`` only while every actor's heartbeat is fresh (systemd restarts a lab that stops
    sending it), and ``STATUS=`` one line: jobs queued, the running job, the calibration version.
    """
    with scope or trio.CancelScope():
        async with trio.open_nursery() as beside:  # a calibration queued here runs beside, only logged
            await _until_ready(supervisor, beside)
            if os.environ.get("NOTIFY_SOCKET"):
                await _report(supervisor)


def _say(line: str) -> None:
    print(f"awen: {line}", flush=True)


async def _until_ready(supervisor: Supervisor, beside: trio.Nursery) -> None:
    from .daemon import lab_ready

    interval = watchdog_interval()
    every = min(interval, READY_POLL_S) if interval is not None else READY_POLL_S
    said, said_at, calibrating = "", -math.inf, False
    while True:
        ready, why = False, ""
        with trio.move_on_after(max(every, 1.0)):
            ready, why = await lab_ready(supervisor)
        if ready:
            break
        why = why or "waiting for the actors"
        if not calibrating and not stale_actors(supervisor):
            calibrating = await _calibrate_once(supervisor, beside)
        if why != said and trio.current_time() - said_at >= NOT_READY_EVERY_S:
            _say(f"not ready: {why}")
            said, said_at = why, trio.current_time()
        if interval is not None and not stale_actors(supervisor):
            notify("WATCHDOG=1")  # starting is slow (a first calibration), not hung
        notify(f"STATUS=starting: {why}")
        await trio.sleep(every)
    _say("ready")
    if notify("READY=1"):
        log.info("ready; told the service manager")


async def _calibrate_once(supervisor: Supervisor, beside: trio.Nursery) -> bool:
    """Queue a calibration on each calibration actor whose chip has no valid one and none being made.

    Whether one was queued (then not again: its outcome is only logged). Not waited for: the lab is
    ready once the calibration is being made.
    """
    from protocol.calibration import GetCalibrationStatus

    from .daemon import _ask, actors_of

    missing: list[str] = []
    for name in actors_of(supervisor, "calibration"):
        try:
            status = await _ask(supervisor, name, GetCalibrationStatus())
        except AwenError:
            continue  # not answering yet: the readiness line says so
        if not status.valid and not status.calibrating:
            missing.append(name)
    if not missing:
        return False
    _say("no valid calibration: calibrating now")
    for name in missing:
        beside.start_soon(_calibrate, supervisor, name)
    return True


async def _calibrate(supervisor: Supervisor, name: str) -> None:
    from protocol.calibration import Calibrate

    try:
        with trio.fail_after(CALIBRATE_WAIT_S):
            done = await supervisor.request(name, Calibrate())
    except (AwenError, trio.TooSlowError) as exc:
        log.error("%s: the calibration awen up queued failed: %s", name, exc or "no answer in time")
        return
    log.info("%s: calibrated at start: version %s", name, done.version)


async def _report(supervisor: Supervisor) -> None:
    from .daemon import status_line

    interval = watchdog_interval()
    stale_before: list[str] = []
    while True:
        stale = stale_actors(supervisor)
        if interval is not None and not stale:
            notify("WATCHDOG=1")
        if stale and stale != stale_before:
            log.warning("no watchdog for the service manager: %s not up", ", ".join(stale))
        stale_before = stale
        line = "no heartbeat from " + ", ".join(stale) if stale else ""
        with trio.move_on_after(min(interval or STATUS_S, 5.0)):
            line = line or await status_line(supervisor)
        notify(f"STATUS={line or 'running'}")
        await trio.sleep(interval if interval is not None else STATUS_S)
