"""Messages of the calibration actor: calibrate a device, and what came of it."""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from ._message import Count, Event, Index, Label, Reply, Request, Text
from .memory import CalibrationVersion, JobId


class Calibrated(Reply, frozen=True, kw_only=True):
    """A new calibration version, stored; the figures of its fit."""

    TYPE = "cal.calibrated"
    device: Label
    version: CalibrationVersion
    job: JobId
    heaters_fitted: Count
    phi0_sigma_max: float
    """Largest uncertainty of a fitted ``phi0`` (rad)."""
    alpha_sigma_max: float
    """Largest relative uncertainty of a fitted ``alpha``."""
    residual_rms: float
    """RMS of (model - data), relative to the typical reading."""
    reduced_chi2: float
    seconds: float


class Calibrate(Request[Calibrated], frozen=True, kw_only=True):
    """Measure the device (a sweep of every heater with coherent light, run through the scheduler's
    queue like any job) and fit a new calibration version. Takes as long as the sweep and the fit."""

    TYPE = "cal.calibrate"
    REPLY = Calibrated
    points: Annotated[int, msgspec.Meta(ge=4, le=64)] | None = None


class CalibrationStatus(Reply, frozen=True, kw_only=True):
    TYPE = "cal.status"
    device: Label
    version: CalibrationVersion | None
    age_s: float | None
    valid: bool
    """A calibration exists and is younger than ``max_age_s``."""
    calibrating: bool
    last_error: Text


class GetCalibrationStatus(Request[CalibrationStatus], frozen=True, kw_only=True):
    TYPE = "cal.get_status"
    REPLY = CalibrationStatus


class ReferenceChecked(Reply, frozen=True, kw_only=True):
    """How well the chip, set with the current calibration, still does a known two-photon circuit."""

    TYPE = "cal.reference_checked"
    device: Label
    version: CalibrationVersion
    fidelity: float
    """Classical fidelity (sum of sqrt(p q)) of the measured coincidence patterns against the model's."""
    threshold: float
    events: Count
    job: JobId
    recalibrated: bool
    new_version: CalibrationVersion | None
    reason: Text
    """Why it recalibrated (fidelity below threshold, the sources' HOM visibility moved, calibration
    too old), or empty."""
    visibility: float | None = None
    """The HOM visibility of the calibration's first source pair, measured now (none: not checked)."""
    visibility_sigma: float | None = None
    visibility_calibrated: float | None = None
    """The same pair's visibility when the calibration was made."""
    visibility_inputs: Annotated[list[Index], msgspec.Meta(max_length=2)] = msgspec.field(default_factory=list)
    """The pair of inputs checked (each check the next pair the calibration measured)."""


class CheckReference(Request[ReferenceChecked], frozen=True, kw_only=True):
    """Run the reference circuit now (as the drift check does on its schedule); recalibrate if needed."""

    TYPE = "cal.check_reference"
    REPLY = ReferenceChecked


class CalibrationStarted(Event, frozen=True, kw_only=True):
    TYPE = "cal.started"
    device: Label
    job: JobId
    phases: Index


class CalibrationDone(Event, frozen=True, kw_only=True):
    TYPE = "cal.done"
    device: Label
    version: CalibrationVersion
    residual_rms: float


class ReferenceResult(Event, frozen=True, kw_only=True):
    TYPE = "cal.reference"
    device: Label
    version: CalibrationVersion
    fidelity: float
    threshold: float


class CalibrationFailed(Event, frozen=True, kw_only=True):
    TYPE = "cal.failed"
    device: Label
    reason: Text


CALIBRATION_MESSAGES: Final = (
    Calibrate,
    Calibrated,
    GetCalibrationStatus,
    CalibrationStatus,
    CheckReference,
    ReferenceChecked,
    ReferenceResult,
    CalibrationStarted,
    CalibrationDone,
    CalibrationFailed,
)
