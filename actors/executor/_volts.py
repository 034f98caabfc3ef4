"""From a plan's target phases to heater voltages, through the calibration the plan was made with."""

from __future__ import annotations

import numpy as np

from protocol.calibration_model import CalibrationModel
from protocol.memory import GetCalibration
from protocol.plan import Phase, Plan
from runtime import Actor, RemoteError

from ._config import ExecutorConfig
from ._faults import Failed

VOLTS_CACHE = 4096
"""Phases whose heater voltages the executor keeps (a repeated circuit skips the conversion)."""


class PhaseVolts:
    """Each phase's heater voltages, worked out once.

    A plan pins the calibration version it was made with, and neither a plan
    nor a calibration version ever changes: each version is read from the
    memory actor once, and each phase of each plan converted once
    (`CalibrationModel.volts_for`: ``phi0 + alpha V^2`` with thermal crosstalk).
    """

    def __init__(self, actor: Actor, config: ExecutorConfig) -> None:
        self.actor = actor
        self.config = config
        self._models: dict[int, CalibrationModel] = {}
        self._volts: dict[tuple[str, int, int], np.ndarray] = {}

    async def model(self, plan: Plan) -> CalibrationModel | None:
        """The calibration ``plan`` was made with; None for a plan of explicit voltages (a procedure).

        Raises:
            Failed: the plan needs a calibration and there is none, or it cannot be read.
        """
        if plan.calibration is None:
            if any(p.volts is None for p in plan.phases):
                raise Failed(f"{self.config.device} has no calibration: calibrate it before running circuits")
            return None
        model = self._models.get(plan.calibration)
        if model is None:
            try:
                record = await self.actor.request(
                    self.config.memory, GetCalibration(device=self.config.device, version=plan.calibration)
                )
            except RemoteError as exc:
                raise Failed(f"calibration version {plan.calibration} cannot be read: {exc.message}") from None
            model = self._models[plan.calibration] = CalibrationModel.from_fits(record.version, record.fits)
        return model

    def for_phase(self, plan: str, phase: Phase, model: CalibrationModel | None) -> np.ndarray | None:
        """The heater voltages of ``phase`` of plan ``plan``; None if it has neither voltages nor a calibration."""
        if phase.volts is not None:
            return np.asarray(phase.volts, dtype=np.float64)
        if model is None:
            return None
        key = (plan, phase.index, model.version)
        volts = self._volts.get(key)
        if volts is None:
            if len(self._volts) >= VOLTS_CACHE:
                del self._volts[next(iter(self._volts))]  # the oldest
            volts = self._volts[key] = model.volts_for(phase.mesh_phases)
        return volts
