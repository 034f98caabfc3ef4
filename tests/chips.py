"""Simulated chips the tests share, and what a perfect calibration of one would find."""

from __future__ import annotations

import math

import numpy as np

from actors.calibration import sweep_plan
from protocol.calibration_model import CalibrationModel
from protocol.plan import Plan
from sim import IDEAL_SOURCE, DeviceServer, parse_config
from sim._chip import Chip

CHIP = parse_config({"modes": 4, "heaters": {"drift_rad_per_sqrt_hour": 0.0}, "sources": IDEAL_SOURCE})
"""Four modes, heaters that do not drift, perfect photons: a calibration stays true for the whole test,
and a dip is a dip (the default chip's sources are a published source's, decision 0017)."""

REAL_CHIP = parse_config({"modes": 4, "heaters": {"drift_rad_per_sqrt_hour": 0.0}})
"""CHIP with the default, imperfect sources (brightness 0.6, g2 0.025, M 0.92, M drifting)."""

DEVICE = parse_config({"modes": 8}).description()
BIG = parse_config({"modes": 32}).description()


def truth(server: DeviceServer) -> CalibrationModel:
    """The simulated chip's own parameters, as a perfect calibration would find them."""
    chip = server.device.chip
    return CalibrationModel(version=0, phi0=chip.phi0.copy(), alpha=chip.alpha.copy(), crosstalk=chip.crosstalk.copy())


def sweep_readings(chip: Chip, points: int = 10) -> tuple[Plan, dict[int, np.ndarray]]:
    """A sweep plan and the photodiode readings the chip gives for it."""
    description = CHIP.description()
    plan = sweep_plan("t", description, [7.0] * description.heaters.count, points=points, power_w=1e-4, device="chip")
    rng = np.random.default_rng(0)
    powers = {}
    for phase in plan.phases:
        chip.set_voltages(np.asarray(phase.volts), 0.0)
        by_mode = sorted(phase.inputs, key=lambda i: i.mode)
        field = np.array([math.sqrt(i.power_w) * np.exp(1j * i.phase_rad) for i in by_mode])
        powers[phase.index] = chip.powers(1.0, field, rng)
    return plan, powers
