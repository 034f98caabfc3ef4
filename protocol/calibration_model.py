"""The calibration model: heater voltages to optical phases and back.

A heater's phase is ``phi0 + alpha * V**2`` plus thermal crosstalk: a fraction
of each neighbour's heating (``crosstalk[i, j]`` of heater j's ``alpha V**2``
reaches heater i). Calibration fits ``phi0``, ``alpha`` and the crosstalk with
their uncertainties; the executor uses one version of the fit to turn a plan's
target phases into voltages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import msgspec
import numpy as np

from ._errors import AwenError
from ._message import Count, Finite, Label, Text
from .hal import MAX_HEATERS, MAX_MODES
from .sources import SourceModel, hom_visibility, survival_for

TWO_PI = 2 * math.pi

MAX_CROSSTALK = 8 * MAX_HEATERS
"""The most crosstalk entries a calibration holds (a heater has a few neighbours)."""

PerHeater = Annotated[list[Finite], msgspec.Meta(max_length=MAX_HEATERS)]
PerOutput = Annotated[list[Finite], msgspec.Meta(max_length=MAX_MODES)]
Heaters = Annotated[list[Count], msgspec.Meta(max_length=MAX_HEATERS)]
Outputs = Annotated[list[Count], msgspec.Meta(max_length=MAX_MODES)]


class CalibrationUnusable(AwenError):
    """A stored calibration cannot convert phases (missing or inconsistent fits)."""


class _S(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every part of a stored calibration: frozen, strict about unknown fields."""


class Crosstalk(_S, frozen=True, kw_only=True):
    """The crosstalk matrix's non-zero entries: ``values[k]`` of heater ``cols[k]``'s heating reaches ``rows[k]``."""

    rows: Annotated[list[Count], msgspec.Meta(max_length=MAX_CROSSTALK)]
    cols: Annotated[list[Count], msgspec.Meta(max_length=MAX_CROSSTALK)]
    values: Annotated[list[Finite], msgspec.Meta(max_length=MAX_CROSSTALK)]


class CalibrationFits(_S, frozen=True, kw_only=True):
    """The fitted model of one calibration version, as stored: what `CalibrationModel` is made from."""

    phi0: PerHeater
    """Each heater's phase at 0 V (rad)."""
    alpha: PerHeater
    """Each heater's phase per V**2 (rad/V**2)."""
    crosstalk: Crosstalk | None = None


class FactoryCalibration(CalibrationFits, frozen=True, kw_only=True):
    """A chip's factory calibration (a JSON file): the fits calibration starts from when none is stored."""

    format: Label = "photonica-factory-calibration/1"
    identity: Text = ""
    """The device's ``*IDN?``, as the manufacturer measured it."""


class FitUncertainties(_S, frozen=True, kw_only=True):
    """One standard deviation of each fitted value; -1 where the sweep cannot tell (empty: not known)."""

    phi0: PerHeater = msgspec.field(default_factory=list)
    alpha: PerHeater = msgspec.field(default_factory=list)
    crosstalk: Annotated[list[Finite], msgspec.Meta(max_length=MAX_CROSSTALK)] = msgspec.field(default_factory=list)
    """One per crosstalk pair fitted, in the fit's order."""


class FitResiduals(_S, frozen=True, kw_only=True):
    """How well the fit matches the sweep it was made from (nothing: not known)."""

    rms: Finite | None = None
    """RMS of (model - data), relative to the typical reading."""
    reduced_chi2: Finite | None = None
    iterations: Count = 0


class SourceFit(_S, frozen=True, kw_only=True):
    """One single-photon source as the calibration measured it (decision 0017 §5), each figure
    with one standard deviation (-1: it cannot tell).

    A source's brightness cannot be told apart from the loss after it, and a loss the same on
    every output cannot be told from one on every input. So the calibration measures how often
    the source's pulses click on its own output (``efficiency``) and how the outputs compare
    (``output_efficiency``, from the light a balanced coupler sends both ways), and takes the
    brightness as configured (the source's datasheet): the rest is the path's ``transmission()``."""

    mode: Count
    """The input the source feeds (and the output it reaches through the identity)."""
    efficiency: Finite
    efficiency_sigma: Finite
    output_efficiency: Finite = 1.0
    """The output ``mode``'s detection relative to the best measured output (1: the best)."""
    brightness: Finite = 1.0
    """As configured: the calibration cannot tell it from the losses after the source."""
    g2: Finite
    """g2(0) from a Hanbury Brown-Twiss measurement behind a balanced coupler."""
    g2_sigma: Finite
    indistinguishability: Finite
    """M, from the HOM visibilities of the pairs it took part in (decision 0017 §5)."""
    indistinguishability_sigma: Finite

    def model(self, overlap: float | None = None) -> SourceModel:
        """The source as `protocol.sources` models it; ``overlap`` replaces M (a pair's sqrt(M_i M_j))."""
        g2 = min(max(self.g2, 0.0), 1.0)
        brightness = min(max(self.brightness, 0.0), 1.0)
        if 2 * brightness * g2 > 1:
            g2 = 0.5 / brightness
        m = self.indistinguishability if overlap is None else overlap
        return SourceModel(brightness=brightness, g2=g2, indistinguishability=min(max(m, 0.0), 1.0))

    def transmission(self) -> float:
        """Each photon's chance to reach the chip's mesh: what makes its own output click as measured."""
        output = max(self.output_efficiency, 1e-12)
        return min(survival_for(max(self.efficiency, 0.0), self.model()) / output, 1.0)


class HomFit(_S, frozen=True, kw_only=True):
    """A pair of sources' HOM visibility, 1 - 2 C(coupler) / C(no coupler), as measured."""

    modes: Annotated[list[Count], msgspec.Meta(min_length=2, max_length=2)]
    visibility: Finite
    visibility_sigma: Finite
    coincidences: Count
    """Coincidences behind the coupler and without it, together: how much the figure rests on."""


def predicted_visibility(
    sources: dict[int, SourceFit],
    a: int,
    b: int,
    outputs: tuple[int, int] | None = None,
    dark: tuple[float, float] = (0.0, 0.0),
) -> float:
    """The HOM visibility the calibrated sources on inputs ``a`` and ``b`` give, read on ``outputs``
    (default: ``a`` and ``b``), exactly (decision 0017 §5)."""
    fa, fb = sources[a], sources[b]
    overlap = math.sqrt(max(fa.indistinguishability, 0.0) * max(fb.indistinguishability, 0.0))
    c, d = outputs if outputs is not None else (a, b)
    efficiency = tuple(sources[j].output_efficiency if j in sources else 1.0 for j in (c, d))
    return hom_visibility(
        [fa.model(overlap), fb.model(overlap)],
        efficiency=efficiency,
        dark=dark,
        transmission=(fa.transmission(), fb.transmission()),
    )


class CalibrationData(_S, frozen=True, kw_only=True):
    """What a calibration was made from, and what it found besides the fit (empty: not known)."""

    job: Text = ""
    """The sweep's job id."""
    points: Count = 0
    """Voltages per heater in the sweep."""
    fitted_heaters: Heaters = msgspec.field(default_factory=list)
    """The heaters photodiodes could see: the others keep their starting values."""
    output_scales: PerOutput = msgspec.field(default_factory=list)
    """Each output's fitted transmission and gain, as photodiodes read it."""
    detection_efficiency: PerOutput = msgspec.field(default_factory=list)
    """Each output's photon detection efficiency, dark counts taken off."""
    dark_counts_per_shot: PerOutput = msgspec.field(default_factory=list)
    dark_rate_hz: PerOutput = msgspec.field(default_factory=list)
    degraded_outputs: Outputs = msgspec.field(default_factory=list)
    """Outputs reported to the scheduler as degraded (too weak)."""
    started_from: Text = ""
    """``factory``, or the version the fit started from."""
    sources_job: Text = ""
    """The source measurement's job id (HOM and HBT, decision 0017 §5)."""
    sources: Annotated[list[SourceFit], msgspec.Meta(max_length=MAX_MODES)] = msgspec.field(default_factory=list)
    hom: Annotated[list[HomFit], msgspec.Meta(max_length=MAX_MODES)] = msgspec.field(default_factory=list)


@dataclass(frozen=True)
class CalibrationModel:
    version: int
    phi0: np.ndarray
    alpha: np.ndarray
    crosstalk: np.ndarray
    """Dense (heaters x heaters); zero where heaters are not neighbours."""

    @classmethod
    def from_fits(cls, version: int, fits: CalibrationFits) -> CalibrationModel:
        try:
            phi0 = np.asarray(fits.phi0, dtype=np.float64)
            alpha = np.asarray(fits.alpha, dtype=np.float64)
            n = len(phi0)
            crosstalk = np.zeros((n, n))
            if fits.crosstalk is not None:
                rows = np.asarray(fits.crosstalk.rows, dtype=np.int64)
                cols = np.asarray(fits.crosstalk.cols, dtype=np.int64)
                crosstalk[rows, cols] = np.asarray(fits.crosstalk.values, dtype=np.float64)
        except (ValueError, IndexError) as exc:
            raise CalibrationUnusable(f"calibration version {version} lacks usable fits: {exc}") from None
        if alpha.shape != phi0.shape or not np.all(alpha > 0):
            raise CalibrationUnusable(f"calibration version {version}: alpha must be positive, one per heater")
        return cls(version, phi0, alpha, crosstalk)

    def fits(self) -> CalibrationFits:
        rows, cols = np.nonzero(self.crosstalk)
        return CalibrationFits(
            phi0=self.phi0.tolist(),
            alpha=self.alpha.tolist(),
            crosstalk=Crosstalk(rows=rows.tolist(), cols=cols.tolist(), values=self.crosstalk[rows, cols].tolist()),
        )

    def phases_for(self, volts: np.ndarray) -> np.ndarray:
        own = self.alpha * np.asarray(volts) ** 2
        result: np.ndarray = self.phi0 + own + self.crosstalk @ own
        return result

    def volts_for(self, phases: np.ndarray | list[float]) -> np.ndarray:
        """Voltages that set every heater to ``phases`` (mod 2 pi), crosstalk included.

        Solves (1 + crosstalk) @ heating = (phases - phi0) mod 2 pi for
        non-negative heating, adding 2 pi where a heater would need to cool.
        """
        target = np.asarray(phases, dtype=np.float64)
        if target.shape != self.phi0.shape:  # checked first: a job planned for another chip fails, named
            raise CalibrationUnusable(
                f"the plan sets {target.size} heaters; calibration version {self.version} knows {self.phi0.size}"
            )
        wanted = np.mod(target - self.phi0, TWO_PI)
        coupling = np.eye(len(wanted)) + self.crosstalk
        heating = np.linalg.solve(coupling, wanted)
        for _ in range(50):
            negative = heating < 0
            if not negative.any():
                break
            wanted[negative] += TWO_PI
            heating = np.linalg.solve(coupling, wanted)
        volts: np.ndarray = np.sqrt(np.clip(heating, 0, None) / self.alpha)
        return volts
