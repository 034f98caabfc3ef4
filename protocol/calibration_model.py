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
from typing import Any

import numpy as np

from ._errors import AwenError

TWO_PI = 2 * math.pi


class CalibrationUnusable(AwenError):
    """A stored calibration cannot convert phases (missing or inconsistent fits)."""


@dataclass(frozen=True)
class CalibrationModel:
    version: int
    phi0: np.ndarray
    alpha: np.ndarray
    crosstalk: np.ndarray
    """Dense (heaters x heaters); zero where heaters are not neighbours."""

    @classmethod
    def from_fits(cls, version: int, fits: dict[str, Any]) -> CalibrationModel:
        try:
            phi0 = np.asarray(fits["phi0"], dtype=np.float64)
            alpha = np.asarray(fits["alpha"], dtype=np.float64)
            n = len(phi0)
            crosstalk = np.zeros((n, n))
            entries = fits.get("crosstalk", {})
            if entries:
                rows = np.asarray(entries["rows"], dtype=np.int64)
                cols = np.asarray(entries["cols"], dtype=np.int64)
                crosstalk[rows, cols] = np.asarray(entries["values"], dtype=np.float64)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise CalibrationUnusable(f"calibration version {version} lacks usable fits: {exc}") from None
        if alpha.shape != phi0.shape or not np.all(alpha > 0):
            raise CalibrationUnusable(f"calibration version {version}: alpha must be positive, one per heater")
        return cls(version, phi0, alpha, crosstalk)

    def fits(self) -> dict[str, Any]:
        rows, cols = np.nonzero(self.crosstalk)
        return {
            "phi0": self.phi0,
            "alpha": self.alpha,
            "crosstalk": {"rows": rows, "cols": cols, "values": self.crosstalk[rows, cols]},
        }

    def phases_for(self, volts: np.ndarray) -> np.ndarray:
        own = self.alpha * np.asarray(volts) ** 2
        result: np.ndarray = self.phi0 + own + self.crosstalk @ own
        return result

    def volts_for(self, phases: np.ndarray | list[float]) -> np.ndarray:
        """Voltages that set every heater to ``phases`` (mod 2 pi), crosstalk included.

        Solves (1 + crosstalk) @ heating = (phases - phi0) mod 2 pi for
        non-negative heating, adding 2 pi where a heater would need to cool.
        """
        wanted = np.mod(np.asarray(phases, dtype=np.float64) - self.phi0, TWO_PI)
        if wanted.shape != self.phi0.shape:
            raise CalibrationUnusable(
                f"the plan sets {wanted.size} heaters; calibration version {self.version} knows {self.phi0.size}"
            )
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
