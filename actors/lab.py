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

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from protocol import toml_text
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


def system_toml(system: SystemConfig) -> str:
    """``system`` as the TOML file ``awen up`` reads (`runtime.load_system` gives it back).

    Every setting is written out, defaults too, so the file says what runs.
    """
    return toml_text(msgspec.to_builtins(system))
