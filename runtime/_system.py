"""A system: which actors run, where they listen, how they are restarted.

Read from TOML (`load_system`), then resolved (`SystemConfig.resolve`) into
concrete addresses: a run directory for ``ipc://`` socket files, free loopback
ports for ``tcp://``. The resolved form is what child processes receive.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
import zmq

from protocol import Backoff, Catalog, ConfigError, convert_settings, load_settings

from ._config import Address, Directory, Runtime, RuntimeOptions
from ._transport import LocalNetwork, scheme_of

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]

DEFAULT_CATALOG = "protocol.catalog:CATALOG"
"""The lab's actors' messages: named, not imported, so that the runtime depends only on the wire."""
Transport = Literal["ipc", "tcp", "inproc", "mem"]


class RestartPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a crashed actor is restarted: always, later and later, loudly once it keeps crashing.

    Crashes count as *in a row* until the actor has run ``window`` seconds
    without crashing. The n-th crash in a row is followed by a restart after
    ``backoff * 2**(n-1)`` seconds, at most ``backoff_max``. Past
    ``max_restarts`` crashes in a row the actor is *crash-looping*: the
    supervisor says so at CRITICAL and publishes ``actor.crash_looping`` with
    every further restart, and the HAL puts its devices in their safe state;
    the rest of the lab goes on, and the actor is tried again every
    ``backoff_max`` until it stays up. With ``give_up``, the supervisor instead
    stops the whole system at that point (``actor.gave_up``, exit status 1): for
    a test bench that should fail fast, not for a lab left alone.
    """

    max_restarts: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 5
    window: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 60.0
    backoff: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 0.1
    backoff_max: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 300.0
    give_up: bool = False

    def delay(self, crashes: int) -> float:
        """Seconds before restarting an actor after its ``crashes``-th crash in a row: exact, no jitter."""
        return Backoff(first=self.backoff, longest=self.backoff_max, jitter=0).delay(crashes - 1)


class ActorSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One ``[[actor]]`` table.

    Attributes:
        name: Unique in the system.
        factory: ``"module:callable"`` that builds the actor:
            ``callable(name, runtime, **config)``.
        process: Run in a child process of its own (True) or as a task in the
            supervisor's process.
        address: Where it takes requests; chosen from ``transport`` if omitted.
        events: Where it publishes events; chosen from ``transport`` if omitted.
        start_timeout: Seconds it has to report ready after it is started.
        config: Keyword arguments for the factory.
    """

    name: Name
    factory: str = "runtime:Actor"
    process: bool = True
    address: str | None = None
    events: str | None = None
    start_timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    restart: RestartPolicy = msgspec.field(default_factory=RestartPolicy)
    config: dict[str, Any] = msgspec.field(default_factory=dict)


class SystemConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A whole system, as written in its TOML file.

    Attributes:
        transport: Default for addresses not given: ``ipc`` (socket files in
            the run directory), ``tcp`` (free ports on ``tcp_host``),
            ``inproc`` or ``mem`` (one process only).
        tcp_host: Interface for ``tcp`` addresses.
        run_dir: Directory for ``ipc`` socket files; a fresh temporary
            directory (removed at exit) if omitted.
        supervisor: The supervisor's own actor name.
        log_level: For every process of the system.
        log_format: For every process of the system: ``text`` lines, or
            ``json`` objects one per line (``AWEN_LOG_FORMAT`` overrides it).
        catalog: ``"package.module:NAME"`` of the `protocol.Catalog` its actors
            speak: the runtime knows only its own messages; a lab's actors
            speak `protocol.catalog.CATALOG`, the default.
    """

    transport: Transport = "ipc"
    tcp_host: str = "127.0.0.1"
    run_dir: str | None = None
    supervisor: Name = "supervisor"
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["text", "json"] = "text"
    catalog: str = DEFAULT_CATALOG
    runtime: RuntimeOptions = msgspec.field(default_factory=RuntimeOptions)
    actors: list[ActorSpec] = msgspec.field(default_factory=list, name="actor")

    def __post_init__(self) -> None:
        names = [self.supervisor, *(spec.name for spec in self.actors)]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"actor names must be unique; repeated: {', '.join(duplicates)}", field="actor.name")

    def resolve(self, run_dir: str) -> ResolvedSystem:
        """Concrete addresses for every actor; ``run_dir`` holds ipc socket files."""
        entries: dict[str, Address] = {}
        for name, address, events in [
            (self.supervisor, None, None),
            *((spec.name, spec.address, spec.events) for spec in self.actors),
        ]:
            entries[name] = Address(
                address=_concrete(address) if address else self._default_address(name, run_dir, ""),
                events=_concrete(events) if events else self._default_address(name, run_dir, ".events"),
            )
        for spec in self.actors:
            if spec.process:
                for role in ("address", "events"):
                    where = getattr(entries[spec.name], role)
                    if scheme_of(where) in ("mem", "inproc"):
                        raise ConfigError(
                            f"actor {spec.name!r} runs in a process of its own, so its {role} cannot be {where} "
                            "(mem:// and inproc:// reach only one process): use transport ipc or tcp, "
                            "or process = false",
                            field=f"actor.{role}",
                        )
            load_factory(spec.factory)  # fail now, with the file's context, not in a child
        load_catalog(self.catalog)
        return ResolvedSystem(
            supervisor=self.supervisor,
            run_dir=run_dir,
            log_level=self.log_level,
            log_format=self.log_format,
            catalog=self.catalog,
            runtime=self.runtime,
            directory=entries,
            actors=self.actors,
        )

    def _default_address(self, name: str, run_dir: str, suffix: str) -> str:
        if self.transport == "ipc":
            return f"ipc://{run_dir}/{name}{suffix}.sock"
        if self.transport == "tcp":
            return f"tcp://{self.tcp_host}:{free_tcp_port(self.tcp_host)}"
        return f"{self.transport}://{name}{suffix}"


class ResolvedSystem(msgspec.Struct, frozen=True, kw_only=True):
    """A `SystemConfig` with every address concrete; handed to child processes as JSON."""

    supervisor: str
    run_dir: str
    log_level: str
    catalog: str
    runtime: RuntimeOptions
    directory: dict[str, Address]
    actors: list[ActorSpec]
    log_format: str = "text"

    def spec(self, name: str) -> ActorSpec:
        for spec in self.actors:
            if spec.name == name:
                return spec
        raise ConfigError(f"no actor named {name!r} in this system (has: {', '.join(s.name for s in self.actors)})")

    def make_directory(self) -> Directory:
        return Directory(self.directory)

    def runtime_for(self, *, local: LocalNetwork | None = None, context: zmq.Context[Any] | None = None) -> Runtime:
        """What an actor of this system (or a client of it) is given: the directory, options and catalog."""
        runtime = Runtime(self.make_directory(), self.runtime, local=local, catalog=load_catalog(self.catalog))
        return runtime if context is None else dataclasses.replace(runtime, context=context)

    def dump(self, path: Path) -> None:
        path.write_bytes(msgspec.json.encode(self))

    @classmethod
    def load(cls, path: str | Path) -> ResolvedSystem:
        try:
            return msgspec.json.decode(Path(path).read_bytes(), type=cls)
        except (OSError, msgspec.DecodeError) as exc:
            raise ConfigError(f"cannot read the resolved system {path}: {exc}") from exc


def _concrete(address: str) -> str:
    """``tcp://host:0`` becomes a free port, fixed for the life of the system."""
    parts = urlsplit(address)
    if parts.scheme == "tcp" and parts.port == 0:
        host = parts.hostname or "127.0.0.1"
        return f"tcp://{host}:{free_tcp_port(host)}"
    return address


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago; the actor binds it (and keeps it across restarts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _load(path: str, what: str, field: str) -> Any:
    """The object named by ``"package.module:attribute"``."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{what} {path!r} must look like 'package.module:Name'", field=field)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{what} {path!r}: cannot import {module_name}: {exc}", field=field) from exc
    if not hasattr(module, attr):
        raise ConfigError(f"{what} {path!r}: {module_name} has no {attr!r}", field=field)
    return getattr(module, attr)


def load_factory(path: str) -> Callable[..., Any]:
    """The callable named by ``"package.module:attribute"``."""
    factory = _load(path, "factory", "actor.factory")
    if not callable(factory):
        raise ConfigError(f"factory {path!r} is not callable", field="actor.factory")
    return factory  # type: ignore[no-any-return]


def load_catalog(path: str) -> Catalog:
    """The `protocol.Catalog` named by ``"package.module:NAME"``."""
    catalog = _load(path, "catalog", "catalog")
    if not isinstance(catalog, Catalog):
        raise ConfigError(f"catalog {path!r} is a {type(catalog).__name__}, not a protocol.Catalog", field="catalog")
    return catalog


def parse_system(data: dict[str, Any], *, source: str = "configuration") -> SystemConfig:
    return _check_factories(convert_settings(data, SystemConfig, source=source), source)


def load_system(path: str | os.PathLike[str]) -> SystemConfig:
    """Read and validate a system's TOML file; errors name the file and the field."""
    return _check_factories(load_settings(path, SystemConfig), str(path))


def _check_factories(config: SystemConfig, source: str) -> SystemConfig:
    """Import every actor's factory now, so a typo is reported with the file's name."""
    try:
        for spec in config.actors:
            load_factory(spec.factory)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}", field=exc.field) from exc.__cause__
    return config
