"""The daemon (decision 0014 §2): one per data directory, found by its ``awen.json``.

* `DaemonLock`: ``flock`` on ``DATA_DIR/awen.lock`` for the daemon's life; the
  kernel drops it on any death (kill -9 too), so a second ``awen up`` on the
  same data directory is refused, and a leftover ``awen.json`` is known stale
  when the lock can be taken (`daemon_file_is_stale`), which pid reuse cannot fool.
* `write_daemon_file` / `read_daemon_file` / `remove_daemon_file`: what runs
  there and where clients reach it, written atomically.
* `default_lab`: what ``awen up`` runs without a file: the standard lab on a
  seeded simulated chip, calibrating at start if no calibration is valid.
* `check_system_file`: every problem of a system file at once (``awen config check``).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import importlib.metadata
import inspect
import json
import os
import re
import socket
import sys
import tempfile
import time
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec
import trio

from actors.lab import LAB_ACTORS, lab_system
from protocol import PROTOCOL_VERSION, AwenError, ConfigError
from protocol.paths import (
    DEFAULT_PORT,
    daemon_file,
    default_tcp_endpoint,
    ipc_endpoint,
    is_loopback,
    lock_file,
)
from runtime import ActorSpec, RuntimeOptions, Supervisor, SystemConfig
from runtime._system import load_catalog, load_factory

DOOR_FACTORY = "actors.door:DoorActor"


class DaemonRunning(AwenError):
    """Another ``awen up`` holds the data directory."""


class DaemonLock:
    """``flock(LOCK_EX | LOCK_NB)`` on ``DATA_DIR/awen.lock``, held until `release` (or the process dies).

    The holder writes its pid into the file, so that one refused can say who holds it.

    Raises:
        DaemonRunning: on entry, when another process holds the lock.
    """

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir)
        self.path = lock_file(self.data_dir)
        self._fd: int | None = None

    def acquire(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise DaemonRunning(
                f"another awen is running on {self.data_dir} (pid {holder or 'unknown'}); "
                "stop it or use another data directory (AWEN_DATA_DIR)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> DaemonLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


# --- awen.json ---------------------------------------------------------------------------------


def daemon_info(
    *,
    data_dir: str | os.PathLike[str],
    lab: str,
    endpoints: Sequence[str],
    system_file: str | os.PathLike[str] | None,
    started: float | None = None,
    http: str | None = None,
) -> dict[str, Any]:
    """What ``awen.json`` holds about this process's daemon."""
    return {
        "awen": importlib.metadata.version("awen"),
        "protocol": PROTOCOL_VERSION,
        "pid": os.getpid(),
        "started": time.time() if started is None else started,
        "data_dir": str(data_dir),
        "lab": lab,
        "endpoints": list(endpoints),
        "system_file": None if system_file is None else str(system_file),
        "http": http,
    }


WEB_FACTORY = "actors.web:WebActor"


def http_url(config: SystemConfig) -> str | None:
    """Where the system's web actor serves HTTP (``http://127.0.0.1:7461``); None without one."""
    for spec in config.actors:
        if spec.factory == WEB_FACTORY:
            return f"http://{spec.config.get('listen', '127.0.0.1:7461')}"
    return None


def ports_in_use(config: SystemConfig, endpoints: Sequence[str]) -> list[str]:
    """The TCP addresses the lab would listen on (the door's, the web actor's) that something holds already.

    Asked before the lab starts, so that ``awen up`` says so in one line instead of starting an actor
    that cannot bind, and is restarted, and keeps the lab from being ready. (Another program may
    take a port between this look and the bind: then that actor says so in the log.)
    """
    wanted = [e.removeprefix("tcp://") for e in endpoints if e.startswith("tcp://")]
    url = http_url(config)
    if url is not None:
        wanted.append(url.removeprefix("http://"))
    taken: list[str] = []
    for address in wanted:
        host, _, port = address.rpartition(":")
        if not port.isdigit() or int(port) == 0:
            continue
        with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: a closed one's
            try:  # connections in TIME_WAIT do not hold the port, a listener does
                sock.bind((host.strip("[]"), int(port)))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    taken.append(address)
    return taken


def write_daemon_file(data_dir: str | os.PathLike[str], info: Mapping[str, Any]) -> Path:
    """``DATA_DIR/awen.json``, written whole or not at all (a temporary file beside it, renamed)."""
    path = daemon_file(data_dir)
    fd, temporary = tempfile.mkstemp(prefix=".awen-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(dict(info), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return path


def remove_daemon_file(data_dir: str | os.PathLike[str]) -> None:
    daemon_file(data_dir).unlink(missing_ok=True)


def read_daemon_file(data_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What ``awen.json`` says, or None if there is none (or it is not a JSON object)."""
    try:
        data = json.loads(daemon_file(data_dir).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def daemon_file_is_stale(data_dir: str | os.PathLike[str]) -> bool:
    """Whether no daemon holds the data directory: its lock can be taken (so ``awen.json`` is left over)."""
    try:
        fd = os.open(lock_file(data_dir), os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


# --- the default lab ---------------------------------------------------------------------------


def client_endpoints(
    data_dir: str | os.PathLike[str], *, port: int = DEFAULT_PORT, tcp: bool = True, listen: Sequence[str] = ()
) -> list[str]:
    """The door's endpoints: ipc in the data directory, and ``listen`` or else tcp loopback on ``port``."""
    endpoints = [ipc_endpoint(data_dir)]
    if listen:
        endpoints += [url for url in listen if url not in endpoints]
    elif tcp:
        endpoints.append(default_tcp_endpoint(port))
    return endpoints


def default_lab(
    data_dir: str | os.PathLike[str],
    *,
    seed: int = 1,
    modes: int = 8,
    port: int = DEFAULT_PORT,
    tcp: bool = True,
    listen: Sequence[str] = (),
    log_level: str = "info",
    web: str | None = None,
) -> SystemConfig:
    """The standard lab on a seeded simulated chip, its store in ``data_dir``.

    The chip's factory calibration (what its maker would ship) is written into
    ``data_dir``, and the calibration actor calibrates at start (``auto``) when
    the store holds no valid calibration. With a door actor in the lab, it
    listens on `client_endpoints`; with ``web`` (``127.0.0.1:7461``), the web actor serves HTTP there
    (decision 0015 §1). The run directory is a fresh temporary one.
    """
    import sim  # the CLI's layer starts the simulator

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    sim_config = sim.parse_config({"modes": modes})
    factory = data_dir / f"factory-calibration-seed{seed}-{modes}modes.json"
    _write_atomically(factory, msgspec.json.encode(sim.factory_calibration(sim_config, seed)))
    config: dict[str, dict[str, Any]] = {"calibration": {"auto": True}}
    endpoints = client_endpoints(data_dir, port=port, tcp=tcp, listen=listen)
    door: dict[str, Any] = {}
    if "door" in inspect.signature(lab_system).parameters:  # the door is asked for by its endpoints
        door["door"] = endpoints
    elif "door" in LAB_ACTORS:  # the door is one of the lab's actors: its endpoints are its config
        config["door"] = {"endpoints": endpoints}
    return lab_system(
        data_dir=data_dir,
        device_url=f"sim://?seed={seed}&modes={modes}",
        factory_calibration=factory,
        log_level=log_level,
        runtime=RuntimeOptions(request_timeout=60.0),
        config=config,
        web=web,
        **door,
    )


def _write_atomically(path: Path, data: bytes) -> None:
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def door_spec(system: SystemConfig) -> ActorSpec | None:
    """The system's door actor, if it has one."""
    for spec in system.actors:
        if spec.factory == DOOR_FACTORY or spec.name == "door":
            return spec
    return None


def door_endpoints(system: SystemConfig, data_dir: str | os.PathLike[str]) -> list[str]:
    """Where the system's door listens (its ``endpoints``, else its defaults); none without a door."""
    spec = door_spec(system)
    if spec is None:
        return []
    endpoints = spec.config.get("endpoints")
    if isinstance(endpoints, list) and all(isinstance(e, str) for e in endpoints):
        return list(endpoints)
    port = spec.config.get("port", DEFAULT_PORT)
    tcp = spec.config.get("tcp", True)
    return client_endpoints(data_dir, port=port if isinstance(port, int) else DEFAULT_PORT, tcp=tcp is not False)


def with_door_endpoints(system: SystemConfig, endpoints: Sequence[str]) -> SystemConfig:
    """``system`` with its door listening on ``endpoints`` (unchanged without a door)."""
    spec = door_spec(system)
    if spec is None:
        return system
    door = msgspec.structs.replace(spec, config={**spec.config, "endpoints": list(endpoints)})
    return msgspec.structs.replace(system, actors=[door if a is spec else a for a in system.actors])


def lab_name(system: SystemConfig) -> str:
    """The lab's name, as its door tells clients: the door's ``lab`` setting, else awen's."""
    spec = door_spec(system)
    name = spec.config.get("lab") if spec is not None else None
    return name if isinstance(name, str) else "awen"


def memory_data_dir(system: SystemConfig) -> str | None:
    """The memory actor's configured ``data_dir``, if the system names one."""
    for spec in system.actors:
        if spec.factory == "actors.memory:MemoryActor" and isinstance(spec.config.get("data_dir"), str):
            return str(spec.config["data_dir"])
    return None


def with_data_dir(system: SystemConfig, data_dir: str | os.PathLike[str]) -> SystemConfig:
    """``system`` with its memory actor's store in ``data_dir``."""
    actors = [
        msgspec.structs.replace(a, config={**a.config, "data_dir": str(data_dir)})
        if a.factory == "actors.memory:MemoryActor"
        else a
        for a in system.actors
    ]
    return msgspec.structs.replace(system, actors=actors)


def refused_endpoints(endpoints: Sequence[str]) -> list[str]:
    """The endpoints a daemon may not listen on yet: anything but loopback tcp and ipc."""
    return [url for url in endpoints if not is_loopback(url)]


def refusal(url: str) -> str:
    """The one line ``awen up`` exits 2 with for a non-loopback endpoint."""
    return (
        f"awen: error: refusing to listen on {url}: clients are not authenticated yet, so awen listens only on "
        "loopback and ipc; reach it from elsewhere with ssh -L 7460:127.0.0.1:7460 HOST"
    )


# --- awen config check -------------------------------------------------------------------------


class Report(msgspec.Struct, kw_only=True):
    """What `check_system_file` found: problems fail the check, warnings do not."""

    actors: int = 0
    problems: list[str] = msgspec.field(default_factory=list)
    warnings: list[str] = msgspec.field(default_factory=list)


_AT = re.compile(r"^(?P<text>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_FIELD = re.compile(r"(?P<what>unknown|missing required) field `(?P<name>[^`]+)`")
_TOKEN = re.compile(r"\.([^.\[]+)|\[(\d+)\]")

Path_ = list[str | int]


def _tokens(path: str) -> Path_:
    return [key if key else int(index) for key, index in _TOKEN.findall(path)]


def _dotted(path: Path_, rename: Mapping[str, str]) -> str:
    text = ""
    for i, token in enumerate(path):
        if isinstance(token, int):
            text += f"[{token}]"
        else:
            name = rename.get(token, token) if i == 0 else token
            text += f".{name}" if text else name
    return text or "(the table)"


def validation_problems(data: Any, type_: type[Any], *, rename: Mapping[str, str] | None = None) -> list[str]:
    """Every problem of ``data`` as ``type_``, not only the first msgspec meets.

    Each problem is reported, the setting at fault taken out, and the rest
    validated again, until nothing is wrong or what is wrong cannot be taken out.
    """
    rename = rename or {}
    if not isinstance(data, dict):
        return [f"expected a table, got {type(data).__name__}"]
    data = copy.deepcopy(data)
    problems: list[str] = []
    removed: set[str] = set()
    for _ in range(200):
        try:
            msgspec.convert(data, type_)
            return problems
        except msgspec.ValidationError as exc:
            text = str(exc)
        except ConfigError as exc:  # a check across fields (__post_init__)
            problems.append(str(exc))
            return problems
        match = _AT.match(text)
        message, path = (match["text"], _tokens(match["path"] or "")) if match else (text, [])
        field = _FIELD.search(message)
        target: Path_
        if field is not None and field["what"] == "unknown":
            target = [*path, field["name"]]
            problems.append(f"{_dotted(target, rename)}: unknown setting")
        elif field is not None:
            missing = _dotted([*path, field["name"]], rename)
            if missing not in removed:
                problems.append(f"{missing}: required, missing")
            target = path
        else:
            target = path
            problems.append(f"{_dotted(path, rename)}: {message}")
        while target and isinstance(target[-1], int):
            target = target[:-1]
        if not target:
            return problems
        parent: Any = data
        for token in target[:-1]:
            parent = parent[token]
        if not isinstance(parent, dict) or target[-1] not in parent:
            return problems
        del parent[target[-1]]
        removed.add(_dotted(target, rename))
    return problems


def _actor_config_struct(factory: Any) -> type[Any] | None:
    """The msgspec struct an actor class converts its ``config`` into: ``CONFIG``, else ``<Kind>Config`` beside it."""
    declared = getattr(factory, "CONFIG", None)
    if isinstance(declared, type) and issubclass(declared, msgspec.Struct):
        return declared
    if not isinstance(factory, type) or not factory.__name__.endswith("Actor"):
        return None
    module = sys.modules.get(factory.__module__)
    found = getattr(module, factory.__name__.removesuffix("Actor") + "Config", None)
    return found if isinstance(found, type) and issubclass(found, msgspec.Struct) else None


def _check_file(report: Report, where: str, path: Any, what: str) -> None:
    if isinstance(path, str) and not Path(path).expanduser().exists():
        report.warnings.append(f"{where}: {what} {path} does not exist (yet)")


def _check_hal(report: Report, where: str, config: dict[str, Any]) -> None:
    from actors.hal import DeviceConfig, HalConfig, load_hal_config
    from drivers import endpoint_from_url

    unknown = sorted(set(config) - {"devices", "config_file"})
    for key in unknown:
        report.problems.append(f"{where}: {key}: unknown setting (the HAL takes devices or config_file)")
    if "config_file" in config:
        try:
            load_hal_config(config["config_file"])
        except ConfigError as exc:
            report.problems.append(f"{where}: config_file: {exc}")
        return
    devices = config.get("devices", [])
    if not isinstance(devices, list):
        report.problems.append(f"{where}: devices: expected an array of tables, got {type(devices).__name__}")
        return
    fine = True
    for i, device in enumerate(devices):
        found = validation_problems(device, DeviceConfig)
        report.problems += [
            f"{where}: devices[{i}].{p}" if not p.startswith("expected") else f"{where}: devices[{i}]: {p}"
            for p in found
        ]
        fine = fine and not found
        url = device.get("url") if isinstance(device, dict) else None
        if isinstance(url, str):
            try:
                endpoint_from_url(url)
            except (ConfigError, ValueError) as exc:
                report.problems.append(f"{where}: devices[{i}].url: {exc}")
        if isinstance(device, dict):
            _check_file(report, f"{where}: devices[{i}].calibration", device.get("calibration"), "file")
    if fine:
        report.problems += [f"{where}: {p}" for p in validation_problems({"device": devices}, HalConfig)]


def _check_actor_config(report: Report, where: str, factory: Any, config: dict[str, Any]) -> None:
    from actors.hal import HalActor

    if isinstance(factory, type) and issubclass(factory, HalActor):
        _check_hal(report, where, config)
        return
    struct = _actor_config_struct(factory)
    if struct is not None:
        report.problems += [f"{where}: {p}" for p in validation_problems(config, struct)]
    else:  # no struct to check against: at least the factory's keyword arguments
        try:
            inspect.signature(factory).bind("name", None, **config)
        except TypeError as exc:
            report.problems.append(f"{where}: {exc}")
        except ValueError:
            pass  # no signature to read
    if factory.__name__ == "CalibrationActor":
        _check_file(report, f"{where}: factory", config.get("factory"), "the factory calibration")


def check_system_file(path: str | os.PathLike[str]) -> Report:
    """Every problem of a system file, at once: TOML, the system's tables, each actor's config, device URLs, files.

    Never raises: whatever goes wrong is a problem in the report.
    """
    report = Report()
    try:
        _check_system(report, path)
    except Exception as exc:  # noqa: BLE001 - a check reports, it does not crash
        report.problems.append(f"cannot check it: {type(exc).__name__}: {exc}")
    return report


def _check_system(report: Report, path: str | os.PathLike[str]) -> None:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        report.problems.append(f"cannot read it: {exc.strerror}")
        return
    except tomllib.TOMLDecodeError as exc:
        report.problems.append(f"not valid TOML: {exc}")
        return
    actors = data.pop("actor", [])
    report.problems += validation_problems(data, SystemConfig)
    if isinstance(data.get("catalog"), str):
        try:
            load_catalog(data["catalog"])
        except ConfigError as exc:
            report.problems.append(f"catalog: {exc}")
    if not isinstance(actors, list):
        report.problems.append("actor: expected an array of tables ([[actor]])")
        return
    report.actors = len(actors)
    names: list[str] = [data.get("supervisor", "supervisor")]
    for i, entry in enumerate(actors):
        name = entry.get("name") if isinstance(entry, dict) else None
        where = f"actor {name!r}" if isinstance(name, str) else f"actor[{i}]"
        if not isinstance(entry, dict):
            report.problems.append(f"{where}: expected a table, got {type(entry).__name__}")
            continue
        if isinstance(name, str):
            if name in names:
                report.problems.append(f"{where}: name: repeated (actor names must be unique)")
            names.append(name)
        config = entry.get("config", {})
        report.problems += [
            f"{where}: {p}"
            for p in validation_problems({**entry, "config": {}} if isinstance(config, dict) else entry, ActorSpec)
        ]
        if not isinstance(config, dict):
            continue
        factory_path = entry.get("factory", "runtime:Actor")
        if not isinstance(factory_path, str):
            continue
        try:
            factory = load_factory(factory_path)
        except ConfigError as exc:
            report.problems.append(f"{where}: {exc}")
            continue
        _check_actor_config(report, where, factory, config)


# --- the running lab, as ``awen up`` sees it (decision 0015 §4) -------------------------------------

LAB_ASK_S = 2.0
"""How long a readiness or status question waits for each actor's answer."""


def actors_of(supervisor: Supervisor, kind: str) -> list[str]:
    """The lab's actors of a kind (``hal``, ``scheduler``, ``calibration``): by their factory's module."""
    return [s.name for s in supervisor.system.actors if s.factory.partition(":")[0].rsplit(".", 1)[-1] == kind]


async def _ask(supervisor: Supervisor, name: str, request: Any) -> Any:
    """The actor's answer; an `AwenError` saying why not (no answer within `LAB_ASK_S` too)."""
    try:
        with trio.fail_after(LAB_ASK_S):
            return await supervisor.request(name, request)
    except trio.TooSlowError:
        raise AwenError(f"{name} did not answer {request.TYPE} within {LAB_ASK_S:g} s") from None


async def lab_ready(supervisor: Supervisor) -> tuple[bool, str]:
    """Whether the lab is ready for work, and if not, why (one line): `actors.health`'s checks, as
    ``/readyz`` shows them, with the supervisor's word on each actor's heartbeats."""
    from actors.health import Check, LabActors, lab_checks, summary

    heartbeats = {
        s.name: Check(supervisor.peer_state(s.name) == "up", supervisor.peer_state(s.name))
        for s in supervisor.system.actors
    }
    lab = LabActors(
        memory=actors_of(supervisor, "memory"),
        hal=actors_of(supervisor, "hal"),
        calibration=actors_of(supervisor, "calibration"),
    )
    return summary(await lab_checks(supervisor, lab, heartbeats=heartbeats))


async def status_line(supervisor: Supervisor) -> str:
    """One line on the lab: jobs queued, the running job, the calibration version (systemd's ``STATUS=``)."""
    from protocol.calibration import GetCalibrationStatus
    from protocol.scheduler import GetQueue

    parts: list[str] = []
    for name in actors_of(supervisor, "scheduler"):
        try:
            queue = await _ask(supervisor, name, GetQueue())
        except AwenError as exc:
            parts.append(str(exc))
            continue
        waiting = sum(1 for j in queue.jobs if j.job != queue.running)
        running = next((j for j in queue.jobs if j.job == queue.running), None)
        part = f"{waiting} jobs queued, " + (
            f"running {running.job} (phase {running.next_phase + 1}/{running.phases})" if running else "none running"
        )
        if queue.paused:
            part += ", paused"
        if queue.suspended:
            part += ", suspended: " + ", ".join(queue.suspended)
        parts.append(part)
    for name in actors_of(supervisor, "calibration"):
        try:
            status = await _ask(supervisor, name, GetCalibrationStatus())
        except AwenError as exc:
            parts.append(str(exc))
            continue
        version = f"calibration v{status.version}" if status.version is not None else "no calibration"
        parts.append(version + (" (calibrating)" if status.calibrating else "" if status.valid else " (not valid)"))
    return "; ".join(parts)


async def drain(supervisor: Supervisor, timeout_s: float) -> list[str]:
    """Ask every scheduler to drain (``sched.drain``) before the lab stops; one line on how each went.

    Bounded by ``timeout_s`` (and a few seconds for the answer): a running job that reaches no phase
    boundary by then is interrupted by the stop, as without a drain.
    """
    from protocol.scheduler import Drain

    lines: list[str] = []

    async def one(name: str) -> None:
        try:
            with trio.fail_after(timeout_s + LAB_ASK_S):
                reply = await supervisor.request(name, Drain(timeout_s=timeout_s))
        except (AwenError, trio.TooSlowError) as exc:
            lines.append(f"{name} did not drain: {exc or 'no answer'}")
            return
        if reply.job is None:
            what = "no job was running"
        elif reply.timed_out:
            what = f"{reply.job} reached no phase boundary within {timeout_s:g} s: it is interrupted"
        else:
            what = f"{reply.job} left the device (preempted at a phase boundary, or it finished)"
        lines.append(f"{name}: {what}; {reply.queued} jobs stay queued")

    async with trio.open_nursery() as nursery:
        for name in actors_of(supervisor, "scheduler"):
            nursery.start_soon(one, name)
    return lines
