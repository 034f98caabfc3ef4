"""Messages of the calibration actor: calibrate a device, and what came of it."""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from ._message import Event, Reply, Request


class Calibrated(Reply, frozen=True, kw_only=True):
    """A new calibration version, stored; the figures of its fit."""

    TYPE = "cal.calibrated"
    device: str
    version: int
    job: str
    heaters_fitted: int
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
    device: str
    version: int | None
    age_s: float | None
    valid: bool
    """A calibration exists and is younger than ``max_age_s``."""
    calibrating: bool
    last_error: str


class GetCalibrationStatus(Request[CalibrationStatus], frozen=True, kw_only=True):
    TYPE = "cal.get_status"
    REPLY = CalibrationStatus


class ReferenceChecked(Reply, frozen=True, kw_only=True):
    """How well the chip, set with the current calibration, still does a known two-photon circuit."""

    TYPE = "cal.reference_checked"
    device: str
    version: int
    fidelity: float
    """Classical fidelity (sum of sqrt(p q)) of the measured coincidence patterns against the model's."""
    threshold: float
    events: int
    job: str
    recalibrated: bool
    new_version: int | None
    reason: str
    """Why it recalibrated (fidelity below threshold, calibration too old), or empty."""


class CheckReference(Request[ReferenceChecked], frozen=True, kw_only=True):
    """Run the reference circuit now (as the drift check does on its schedule); recalibrate if needed."""

    TYPE = "cal.check_reference"
    REPLY = ReferenceChecked


class CalibrationStarted(Event, frozen=True, kw_only=True):
    TYPE = "cal.started"
    device: str
    job: str
    phases: int


class CalibrationDone(Event, frozen=True, kw_only=True):
    TYPE = "cal.done"
    device: str
    version: int
    residual_rms: float


class ReferenceResult(Event, frozen=True, kw_only=True):
    TYPE = "cal.reference"
    device: str
    version: int
    fidelity: float
    threshold: float


class CalibrationFailed(Event, frozen=True, kw_only=True):
    TYPE = "cal.failed"
    device: str
    reason: str


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
