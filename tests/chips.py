"""Simulated chips the tests share, and what a perfect calibration of one would find."""

from __future__ import annotations

from protocol.calibration_model import CalibrationModel
from sim import DeviceServer, parse_config

CHIP = parse_config({"modes": 4, "heaters": {"drift_rad_per_sqrt_hour": 0.0}})
"""Four modes, heaters that do not drift: a calibration stays true for the whole test."""

DEVICE = parse_config({"modes": 8}).description()
BIG = parse_config({"modes": 32}).description()


def truth(server: DeviceServer) -> CalibrationModel:
    """The simulated chip's own parameters, as a perfect calibration would find them."""
    chip = server.device.chip
    return CalibrationModel(version=0, phi0=chip.phi0.copy(), alpha=chip.alpha.copy(), crosstalk=chip.crosstalk.copy())
