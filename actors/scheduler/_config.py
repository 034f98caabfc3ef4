"""The scheduler's configuration: which device, which actors it asks, what it accepts, how it plans.

Configured in the system file::

    [[actor]]
    name = "scheduler"
    factory = "actors.scheduler:SchedulerActor"
    config = { device = "chip", strategy = { kind = "dynamic", objectives = ["min_duration"] } }
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from protocol.scheduler import StrategyConfig

from ._limits import Limits


class SchedulerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The scheduler's ``config`` table.

    Attributes:
        device: The device (as the HAL names it) jobs run on.
        hal, memory: The actors it asks for the device's description and to store jobs.
        limits: What circuits may ask for (`Limits`).
        strategy: How plans are made and the device shared (`StrategyConfig`).
        plan_ahead: Queued jobs planned before their turn.
        plan_workers: Worker processes for large circuits (0: plan everything in threads).
        process_threshold_ops: Circuits with more operations than this go to a worker process.
        deadline_check_s: How often waiting jobs' deadlines are checked.
        max_queue: The most jobs the queue holds (waiting and running); a submission past it is refused
            ``queue-full``, naming the limit. A calibration procedure is not refused: the lab needs it to run.
    """

    device: str = "chip"
    hal: str = "hal"
    memory: str = "memory"
    limits: Limits = msgspec.field(default_factory=Limits)
    strategy: StrategyConfig = msgspec.field(default_factory=StrategyConfig)
    plan_ahead: int = msgspec.field(default=8)
    plan_workers: int = 1
    process_threshold_ops: int = 5000
    deadline_check_s: float = 0.5
    max_queue: Annotated[int, msgspec.Meta(ge=1)] = 10_000
