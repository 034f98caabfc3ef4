"""Calibration: the model that turns phases into heater voltages, fitted from measurements.

`CalibrationModel` is one version of the fits (``phi0``, ``alpha``,
crosstalk); the executor builds one from the stored calibration its job pins.
"""

from ._actor import CalibrationActor as CalibrationActor
from ._actor import CalibrationConfig as CalibrationConfig
from ._actor import sweep_plan as sweep_plan
from ._fit import FitResult as FitResult
from ._fit import SweepData as SweepData
from ._fit import fit_sweeps as fit_sweeps
from ._model import CalibrationModel as CalibrationModel
from ._model import CalibrationUnusable as CalibrationUnusable

__all__ = [name for name in dir() if not name.startswith("_")]
