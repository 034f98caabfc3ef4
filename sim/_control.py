"""The simulator's control port (decision 0016 §2): faults and drift injected while it runs.

A second TCP socket, not the device's (the device protocol stays what the
hardware speaks): newline-terminated text commands, one reply line each,
``ok``, ``ok JSON`` or ``error: MESSAGE``::

    fault KIND [key=value ...]   close|delay|corrupt|error (keys as --fault: nth, p, seconds, code, on, at)
    fault interlock | interlock  trip the interlock now (with nth= or p=: on those messages)
    fault stuck H | stuck H [volts=V]   heater H keeps its voltage (or V) whatever it is set to
    fault slow S | slow S        every reply held back S seconds
    clear                        undo everything injected here
    drift HOURS                  advance device time (and the seeded heater drift) by HOURS
    state                        ok {"faults": [...], "clock_s": ..., "interlock": ..., ...}

``nth`` counts from the injection: ``fault close nth=1`` closes the
connection on the next message. Commands run in the server's trio loop
between awaits, so each one acts on the device atomically.
"""

from __future__ import annotations

import functools
import json
import math
import socket
from typing import Any

import msgspec
import numpy as np
import trio

from protocol.paths import is_loopback
from protocol.scpi import ScpiError

from ._config import FaultConfig, SimConfigError, parse_fault
from ._server import DeviceServer

MAX_LINE = 4096
HOUR = 3600.0


class ControlError(Exception):
    """A control command that cannot be carried out; its message is the reply."""


class Controller:
    """Carries out control commands on a `DeviceServer`, remembering what it injected."""

    def __init__(self, server: DeviceServer) -> None:
        self.server = server
        self.injected: list[FaultConfig] = []
        self.stuck: set[int] = set()
        self.tripped = False

    def command(self, line: str) -> str:
        """One command line carried out; its reply line (without newline)."""
        words = line.split()
        if not words:
            return "error: empty command"
        try:
            return self._dispatch(words[0].lower(), words[1:])
        except ControlError as exc:
            return f"error: {exc}"

    def _dispatch(self, verb: str, args: list[str]) -> str:
        if verb == "fault":
            if not args:
                raise ControlError("fault needs a kind: close, delay, corrupt, error, interlock, stuck, slow")
            verb, args = args[0].lower(), args[1:]
            if verb in ("close", "delay", "corrupt", "error") or (verb == "interlock" and args):
                return self._fault(verb, args)
        if verb == "interlock":
            self._no_args(verb, args)
            self.server.device.trip_interlock("control port")
            self.tripped = True
            return "ok"
        if verb == "stuck":
            return self._stuck(args)
        if verb == "slow":
            self.server.slow = self._number(verb, args, "SECONDS")
            return "ok"
        if verb == "drift":
            self.server.device.advance(self._number(verb, args, "HOURS") * HOUR)
            return "ok"
        if verb == "clear":
            self._no_args(verb, args)
            self.clear()
            return "ok"
        if verb == "state":
            self._no_args(verb, args)
            return "ok " + json.dumps(self.state(), separators=(",", ":"))
        raise ControlError(f"unknown command {verb!r} (fault, interlock, stuck, slow, clear, drift, state)")

    @staticmethod
    def _no_args(verb: str, args: list[str]) -> None:
        if args:
            raise ControlError(f"{verb} takes no arguments, got {' '.join(args)!r}")

    @staticmethod
    def _number(verb: str, args: list[str], name: str) -> float:
        if len(args) != 1:
            raise ControlError(f"{verb} expects {name}")
        try:
            value = float(args[0])
        except ValueError:
            raise ControlError(f"{verb}: {args[0]!r} is not a number") from None
        if not (math.isfinite(value) and value >= 0):
            raise ControlError(f"{verb}: {name} must be a finite number >= 0, got {args[0]}")
        return value

    def _fault(self, kind: str, args: list[str]) -> str:
        try:
            fault = parse_fault(f"{kind}:{','.join(args)}")
        except SimConfigError as exc:
            raise ControlError(str(exc)) from None
        if not fault.nth and not fault.probability:
            raise ControlError(f"fault {kind}: give nth=N (from now) or p=P, or it never fires")
        plan = self.server.device.faults
        base = plan.counted(fault.on) if fault.on else plan.count
        fault = msgspec.structs.replace(fault, nth=[n + base for n in fault.nth])
        plan.faults.append(fault)
        self.injected.append(fault)
        return "ok"

    def _stuck(self, args: list[str]) -> str:
        if not args or not args[0].isdigit():
            raise ControlError("stuck expects HEATER [volts=V]")
        volts: float | None = None
        for item in args[1:]:
            key, _, value = item.partition("=")
            if key != "volts":
                raise ControlError(f"stuck: unknown key {item!r} (volts=V)")
            try:
                volts = float(value)
            except ValueError:
                raise ControlError(f"stuck: {value!r} is not a number") from None
        heater = int(args[0])
        try:
            self.server.device.stick(heater, volts)
        except ScpiError as exc:  # the device's own refusal (a heater that does not exist)
            raise ControlError(f"stuck: {exc}") from None
        self.stuck.add(heater)
        return "ok"

    def clear(self) -> None:
        """Remove every fault injected here, un-stick, un-slow, re-arm an interlock tripped here."""
        device = self.server.device
        device.faults.faults = [f for f in device.faults.faults if all(f is not g for g in self.injected)]
        self.injected.clear()
        for heater in sorted(self.stuck):
            device.unstick(heater)
        self.stuck.clear()
        self.server.slow = 0.0
        if self.tripped:
            device.rearm_interlock()
            self.tripped = False

    def state(self) -> dict[str, Any]:
        device = self.server.device
        return {
            "faults": [msgspec.to_builtins(f) for f in device.faults.faults],
            "injected": len(self.injected),
            "stuck": {str(h): v for h, v in sorted(device.chip.stuck.items())},
            "slow_s": self.server.slow,
            "clock_s": device.clock,
            "messages": device.faults.count,
            "interlock": device.interlock,
            "drift_rad_rms": float(np.sqrt(np.mean(device.chip.drift**2))),
            # The true offsets (phi0 plus the drift accrued so far), for comparing a calibration with the truth.
            "phase_offsets_rad": np.mod(device.chip.phi0 + device.chip.drift, 2 * math.pi).tolist(),
        }


async def _handle(controller: Controller, stream: trio.SocketStream) -> None:
    buffer = b""
    async with stream:
        while True:
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if not data:
                return
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            replies = []
            for raw in lines:
                line = raw.decode("utf-8", "replace").strip()
                replies.append(controller.command(line))
            if len(buffer) > MAX_LINE:
                buffer = b""
                replies.append(f"error: line longer than {MAX_LINE} bytes")
            if replies:
                try:
                    await stream.send_all("".join(r + "\n" for r in replies).encode())
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return


async def serve_control(
    server: DeviceServer,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control port of ``server`` on loopback ``host``:``port``; reports (host, port) when listening.

    Raises:
        ValueError: ``host`` is not a loopback address (nothing is authenticated).
    """
    if not is_loopback(f"tcp://{host}:{port}" if ":" not in host else f"tcp://[{host}]:{port}"):
        raise ValueError(f"refusing a control port on {host}: nothing is authenticated; use loopback")
    controller = Controller(server)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, functools.partial(_handle, controller), port, host=host)
        )
        bound_host, bound_port = listeners[0].socket.getsockname()[:2]
        task_status.started((bound_host, bound_port))


class SimControl:
    """A blocking client of a simulator's control port (``awen sim serve --control``).

    Every method sends one command and returns its reply; a reply ``error: ...``
    raises `SimControlError` (except from `send`, which returns any reply).
    """

    def __init__(self, host: str, port: int, *, timeout: float = 30.0) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._file = self._sock.makefile("rb")

    def send(self, line: str) -> str:
        """Send one command line; its reply line, without the newline."""
        self._sock.sendall(line.encode() + b"\n")
        reply = self._file.readline()
        if not reply:
            raise ConnectionError("the control port closed the connection")
        return reply.decode().rstrip("\n")

    def _ok(self, line: str) -> str:
        reply = self.send(line)
        if reply.startswith("error:"):
            raise SimControlError(reply[len("error:") :].strip())
        return reply

    def fault(self, kind: str, **keys: Any) -> None:
        """Inject a fault: ``fault("close", nth=1)``, ``fault("delay", nth=[1, 3], seconds=0.5)``, ``p=0.1``."""
        words = [kind]
        for key, value in keys.items():
            value = "+".join(str(v) for v in value) if isinstance(value, list | tuple) else value
            words.append(f"{key}={value}")
        self._ok("fault " + " ".join(words))

    def clear(self) -> None:
        self._ok("clear")

    def drift(self, hours: float) -> None:
        self._ok(f"drift {hours!r}")

    def state(self) -> dict[str, Any]:
        reply = self._ok("state")
        state: dict[str, Any] = json.loads(reply[len("ok") :])
        return state

    def interlock(self) -> None:
        self._ok("interlock")

    def stuck(self, heater: int, volts: float | None = None) -> None:
        self._ok(f"stuck {heater}" + ("" if volts is None else f" volts={volts!r}"))

    def slow(self, seconds: float) -> None:
        self._ok(f"slow {seconds!r}")

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> SimControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SimControlError(RuntimeError):
    """The control port answered ``error: ...``."""
