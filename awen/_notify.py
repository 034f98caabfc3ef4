"""systemd's notify protocol, without a dependency: datagrams to ``$NOTIFY_SOCKET`` (decision 0015 §4).

`notify` sends one datagram (``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``,
``STATUS=...``) to the socket systemd names, a path or, when it begins
with ``@``, a name in the abstract namespace; without ``$NOTIFY_SOCKET``
(not run by systemd) it does nothing. `watchdog_interval` is how often
``WATCHDOG=1`` is due: half of ``$WATCHDOG_USEC``, if the watchdog is meant
for this process (``$WATCHDOG_PID``). `report` is what ``awen up`` runs
beside the lab: ready once the lab is (`awen.daemon.lab_ready`), the
watchdog only while every actor's heartbeat is fresh, a one-line status.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from runtime import Supervisor

log = logging.getLogger("awen.notify")

READY_POLL_S = 0.5
"""How often readiness is asked until the lab is ready."""
STATUS_S = 10.0
"""How often the status line is sent without a watchdog."""


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
    """Tell systemd how the lab is, for as long as it runs, or until ``scope`` is cancelled.

    Without ``$NOTIFY_SOCKET``: nothing.

    ``READY=1`` once `awen.daemon.lab_ready` says so; then, every watchdog interval, ``WATCHDOG=1``
    only while every actor's heartbeat is fresh (systemd restarts a lab that stops sending it),
    and ``STATUS=`` one line: jobs queued, the running job, the calibration version.
    """
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    with scope or trio.CancelScope():
        await _report(supervisor)


async def _report(supervisor: Supervisor) -> None:
    from .daemon import lab_ready, status_line

    interval = watchdog_interval()
    every = min(interval, READY_POLL_S) if interval is not None else READY_POLL_S
    ready, why = False, ""
    while not ready:
        with trio.move_on_after(max(every, 1.0)):
            ready, why = await lab_ready(supervisor)
        if not ready:
            if interval is not None and not stale_actors(supervisor):
                notify("WATCHDOG=1")  # starting is slow (a first calibration), not hung
            notify(f"STATUS=starting: {why or 'waiting for the actors'}")
            await trio.sleep(every)
    notify("READY=1")
    log.info("ready; told the service manager")
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
