"""Calibration: the model that turns phases into heater voltages, fitted from measurements.

`CalibrationModel` is one version of the fits (``phi0``, ``alpha``,
crosstalk); the executor builds one from the stored calibration its job pins.
"""

from ._model import CalibrationModel as CalibrationModel
from ._model import CalibrationUnusable as CalibrationUnusable

__all__ = [name for name in dir() if not name.startswith("_")]
