"""The standard lab system: the five actors on one device, as one function builds them.

``awen run`` and ``awen calibrate`` start it, the kill -9 campaign and the
system tests start it under ``awen up``, the end-to-end benchmark measures
it: each with its own data directory, device URL and a few options of its
own, and otherwise the same system. `lab_system` is that system;
`system_toml` writes it as the file ``awen up`` reads.

The actors, in the order the supervisor starts them::

    memory       actors.memory:MemoryActor            the store, in data_dir
    hal          actors.hal:HalActor                  the device at device_url
    scheduler    actors.scheduler:SchedulerActor      the queue and the planner
    executor     actors.executor:ExecutorActor        runs plans on the device
    calibration  actors.calibration:CalibrationActor  from the factory calibration file
    door         actors.door:DoorActor                clients' one address (with ``door=ENDPOINTS``)
    web          actors.web:WebActor                  the HTTP port (with ``web=HOST:PORT``)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from runtime import RestartPolicy, RuntimeOptions, SystemConfig, parse_system

LAB_ACTORS = ("memory", "hal", "scheduler", "executor", "calibration")
"""The standard lab's actors, in the order they start."""

FACTORIES = {
    "memory": "actors.memory:MemoryActor",
    "hal": "actors.hal:HalActor",
    "scheduler": "actors.scheduler:SchedulerActor",
    "executor": "actors.executor:ExecutorActor",
    "calibration": "actors.calibration:CalibrationActor",
    "door": "actors.door:DoorActor",
    "web": "actors.web:WebActor",
}


def lab_system(
    *,
    data_dir: str | Path | None = None,
    device_url: str | None = None,
    factory_calibration: str | Path | None = None,
    device: str = "chip",
    device_options: Mapping[str, Any] | None = None,
    actors: Sequence[str] = LAB_ACTORS,
    log_level: str = "info",
    runtime: RuntimeOptions | None = None,
    run_dir: str | Path | None = None,
    restart: RestartPolicy | None = None,
    transport: str = "ipc",
    config: Mapping[str, Mapping[str, Any]] | None = None,
    door: Sequence[str] | None = None,
    web: str | None = None,
) -> SystemConfig:
    """The standard lab system on one device.

    Args:
        data_dir: The memory actor's data directory (its store); by default
            the memory actor's own (``$AWEN_DATA_DIR``, or the user's data directory).
        device_url: Where the HAL finds the device: ``sim://?seed=1&modes=8``,
            ``tcp://HOST:PORT``, ``serial:///dev/ttyUSB0``. Required if the HAL runs.
        factory_calibration: The chip's factory calibration file, where the
            calibration actor starts when the store has no calibration yet.
        device: The device's name, as every actor names it.
        device_options: More of the device's HAL settings (``watchdog_s``, ``timeout_s``, ...).
        actors: Which of the five to run (some tests run fewer), in start order.
        log_level: For every process of the system.
        runtime: The ``[runtime]`` table (heartbeat interval, liveness, request timeout, ...).
        run_dir: Where the ipc socket files go (default: a temporary directory).
        restart: Every actor's restart policy (default: the runtime's).
        transport: ``ipc`` or ``tcp`` between the actors' processes.
        config: Per actor, settings merged into its ``config`` table (``{"executor": {"batch_shots": 2000}}``).
        door: Where clients connect (``ipc://...``, ``tcp://127.0.0.1:PORT``): the door actor starts
            last, at these endpoints. None: no door (the lab is reached through its actors).
        web: Where the web actor serves HTTP (``127.0.0.1:7461``; port 0: any): it starts after the
            door (decision 0015 §1). None: no web actor.
    """
    if door is not None:
        actors = [*actors, "door"]
    if web is not None:
        actors = [*actors, "web"]
    unknown = sorted(set(actors) - set(FACTORIES)) + sorted(set(config or {}) - set(actors))
    if unknown:
        raise ValueError(f"not actors of this lab: {', '.join(unknown)} (it runs {', '.join(actors)})")
    if device_url is None and "hal" in actors:
        raise ValueError("the HAL needs a device: give lab_system a device_url")
    settings: dict[str, dict[str, Any]] = {
        "memory": {} if data_dir is None else {"data_dir": str(data_dir)},
        "hal": {"devices": [{"name": device, "url": device_url, **(device_options or {})}]},
        "scheduler": {"device": device},
        "executor": {"device": device},
        "calibration": {"device": device},
        "door": {"endpoints": list(door or [])},
        "web": {"listen": web},
    }
    if factory_calibration is not None:
        settings["calibration"]["factory"] = str(factory_calibration)
    table: dict[str, Any] = {"transport": transport, "log_level": log_level}
    if run_dir is not None:
        table["run_dir"] = str(run_dir)
    if runtime is not None:
        table["runtime"] = msgspec.to_builtins(runtime)
    table["actor"] = []
    for name in actors:
        spec: dict[str, Any] = {
            "name": name,
            "factory": FACTORIES[name],
            "config": settings[name] | dict((config or {}).get(name, {})),
        }
        if restart is not None:
            spec["restart"] = msgspec.to_builtins(restart)
        table["actor"].append(spec)
    return parse_system(table, source="the standard lab system")


# --- the system file ----------------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def system_toml(system: SystemConfig) -> str:
    """``system`` as the TOML file ``awen up`` reads (`runtime.load_system` gives it back).

    Every setting is written out, defaults too, so the file says what runs.
    """
    data = _without_none(msgspec.to_builtins(system))
    return _table(data, ())


def _without_none(value: Any) -> Any:
    """TOML has no null: an unset setting is left out (and takes its default when read)."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def _is_table(value: Any) -> bool:
    return isinstance(value, dict) and bool(value)


def _is_array_of_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_table(v) for v in value)


def _table(data: dict[str, Any], path: tuple[str, ...]) -> str:
    """A table's ``key = value`` lines, then its sub-tables and arrays of tables under headers of their own."""
    lines = [f"{_key(k)} = {_value(v)}" for k, v in data.items() if not (_is_table(v) or _is_array_of_tables(v))]
    text = "".join(line + "\n" for line in lines)
    for k, v in data.items():
        name = (*path, k)
        header = ".".join(_key(part) for part in name)
        if _is_table(v):
            text += f"\n[{header}]\n" + _table(v, name)
        elif _is_array_of_tables(v):
            for item in v:
                text += f"\n[[{header}]]\n" + _table(item, name)
    return text


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    # A JSON string is a TOML basic string, but for DEL, which TOML wants escaped; non-ASCII stays
    # as it is (JSON would write astral characters as surrogate pairs, which TOML refuses).
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(value: Any) -> str:
    """One value inline: a string, a number, a boolean, an array or an inline table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    raise TypeError(f"a system file cannot hold {type(value).__name__} {value!r}")
