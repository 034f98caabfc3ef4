"""The calibration actor: sweeps the heaters through the queue, fits the model, versions every fit.

The model itself (`protocol.calibration_model.CalibrationModel`: ``phi0``,
``alpha``, crosstalk) is what the calibration actor writes and the executor
reads, so it lives in the protocol, below both.
"""

from ._actor import CalibrationActor as CalibrationActor
from ._actor import CalibrationConfig as CalibrationConfig
from ._actor import sweep_plan as sweep_plan
from ._fit import FitResult as FitResult
from ._fit import SweepData as SweepData
from ._fit import fit_sweeps as fit_sweeps

__all__ = [name for name in dir() if not name.startswith("_")]
