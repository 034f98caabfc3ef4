"""The physical chip: heaters to phases, phases to transfer matrix, light to detectors.

A heater's phase is ``phi0 + alpha * V**2`` plus thermal crosstalk from its
neighbours (a fraction of *their* heating) plus a slow random walk of phi0
(drift). After a change, each phase approaches its new value exponentially
with the settling time constant. Each source's indistinguishability walks
too (decision 0017 §4), on a stream of its own so that the phases' drift is
the same whether the sources drift or not. ``phi0``, ``alpha`` (from each heater's
resistance and power per pi), crosstalk, losses and detector figures are drawn
once from the seed, around the configured values.
"""

from __future__ import annotations

import math

import numpy as np

from protocol.mesh import MeshLayout, clements_layout, mesh_unitary

from ._config import SimConfig
from ._source import SourceModel

HOUR = 3600.0


def _db(db: float | np.ndarray) -> float | np.ndarray:
    """Transmission of a loss in dB."""
    return 10.0 ** (-np.asarray(db) / 10.0)


class Chip:
    """Hidden parameters and state of one simulated chip.

    Args:
        config: The device description.
        rng: Draws the fabrication spread (used once, here) and the drift.
    """

    def __init__(self, config: SimConfig, rng: np.random.Generator) -> None:
        self.config = config
        self.layout: MeshLayout = clements_layout(config.modes)
        m, n = config.modes, config.heater_count
        h = config.heaters
        self.phi0 = rng.uniform(0.0, 2 * math.pi, n)
        self.resistance = h.resistance_ohm * np.clip(1 + h.resistance_spread * rng.standard_normal(n), 0.5, 1.5)
        p_pi = 1e-3 * h.power_per_pi_mw * np.clip(1 + h.power_per_pi_spread * rng.standard_normal(n), 0.5, 1.5)
        self.alpha = math.pi / (p_pi * self.resistance)  # rad per V**2
        self.crosstalk = np.zeros((n, n))
        for heater in range(n):
            for other in self.layout.neighbours(heater):
                self.crosstalk[heater, other] = h.crosstalk * max(0.0, 1 + h.crosstalk_spread * rng.standard_normal())
        loss = config.loss
        self.input_transmission = float(_db(loss.input_db))
        self.mesh_transmission = float(_db(loss.mzi_db * m))  # balanced: one MZI per column on every path
        self.output_transmission = np.asarray(
            _db(loss.output_db + loss.output_spread_db * rng.standard_normal(m)), dtype=np.float64
        ).clip(0, 1)
        d = config.detectors
        self.efficiency = np.clip(d.efficiency + d.efficiency_spread * rng.standard_normal(m), 0.0, 1.0)
        self.dark_rate = np.full(m, d.dark_rate_hz)
        self.powermeter_gain = 1 + d.powermeter_gain_spread * rng.standard_normal(m)
        self._drift_rng = rng
        self.drift = np.zeros(n)
        self._drift_time = 0.0
        seeds = getattr(rng.bit_generator, "seed_seq", None)
        self._source_rng = np.random.default_rng(
            seeds.spawn(1)[0] if isinstance(seeds, np.random.SeedSequence) else int(rng.integers(2**63))
        )
        self.source_drift = np.zeros(m)  # added to each input's indistinguishability, then reflected
        self._source_time = 0.0
        self.voltages = np.zeros(n)  # as set
        self._from = np.zeros(n)  # heating phase when the last change began
        self._to = np.zeros(n)  # heating phase it is settling towards
        self._changed_at = -math.inf
        self.stuck: dict[int, float] = {}

    # --- heaters ------------------------------------------------------------------------

    def applied_voltages(self) -> np.ndarray:
        """What the heaters really get: the set voltages, except stuck ones."""
        applied = self.voltages.copy()
        for heater, volts in self.stuck.items():
            applied[heater] = volts
        return applied

    def power(self, voltages: np.ndarray | None = None) -> float:
        v = self.applied_voltages() if voltages is None else voltages
        return float(np.sum(v * v / self.resistance))

    def _heating(self, voltages: np.ndarray) -> np.ndarray:
        own = self.alpha * voltages * voltages
        heating: np.ndarray = own + self.crosstalk @ own
        return heating

    def set_voltages(self, voltages: np.ndarray, now: float) -> None:
        current = self._settling_heating(now)
        self.voltages = np.asarray(voltages, dtype=np.float64).copy()
        self._from = current
        self._to = self._heating(self.applied_voltages())
        self._changed_at = now

    def _settling_heating(self, now: float) -> np.ndarray:
        elapsed = now - self._changed_at
        if elapsed == math.inf:
            return self._to.copy()
        decay = math.exp(-elapsed / self.config.heaters.settle_s) if elapsed > 0 else 1.0
        settling: np.ndarray = self._to + (self._from - self._to) * decay
        return settling

    def settled(self, now: float, tolerance: float = 1e-3) -> bool:
        return bool(np.abs(self._settling_heating(now) - self._to).max(initial=0.0) < tolerance)

    def settle_time(self, now: float, tolerance: float = 1e-3) -> float:
        """Seconds from ``now`` until every phase is within ``tolerance`` of its target."""
        gap = float(np.abs(self._settling_heating(now) - self._to).max(initial=0.0))
        if gap < tolerance:
            return 0.0
        return self.config.heaters.settle_s * math.log(gap / tolerance)

    def _advance_drift(self, now: float) -> None:
        elapsed = now - self._drift_time
        rate = self.config.heaters.drift_rad_per_sqrt_hour
        if elapsed > 0 and rate > 0:
            self.drift += rate * math.sqrt(elapsed / HOUR) * self._drift_rng.standard_normal(len(self.drift))
        self._drift_time = max(self._drift_time, now)

    def phases(self, now: float) -> np.ndarray:
        """Every heater's optical phase at device time ``now`` (radians, not wrapped)."""
        self._advance_drift(now)
        phases: np.ndarray = self.phi0 + self.drift + self._settling_heating(now)
        return phases

    def voltages_for(self, phases: np.ndarray, now: float) -> np.ndarray:
        """The voltages that put every heater at ``phases`` (mod 2 pi), from the hidden truth.

        What a perfect calibration would compute: the reference that tests of
        calibration, and tests that need a known mesh, compare against.
        Solves (1 + crosstalk) @ heating = (phases - phi0 - drift) mod 2 pi
        for non-negative heating.
        """
        self._advance_drift(now)
        wanted = np.mod(np.asarray(phases, dtype=np.float64) - self.phi0 - self.drift, 2 * math.pi)
        coupling = np.eye(len(wanted)) + self.crosstalk
        for _ in range(50):
            heating = np.linalg.solve(coupling, wanted)
            negative = heating < 0
            if not negative.any():
                break
            wanted[negative] += 2 * math.pi
        volts: np.ndarray = np.sqrt(np.clip(heating, 0, None) / self.alpha)
        return volts

    def source(self, mode: int, now: float) -> SourceModel:
        """The single-photon source on input ``mode`` at device time ``now``, its M drifted.

        M walks by ``sources.indistinguishability_drift_per_sqrt_hour`` per sqrt(hour)
        (Gaussian steps, seeded), reflected at 0 and 1 so it stays a fraction.
        """
        base = self.config.sources.model(mode)
        rate = self.config.sources.indistinguishability_drift_per_sqrt_hour
        elapsed = now - self._source_time
        if elapsed > 0 and rate > 0:
            self.source_drift += (
                rate * math.sqrt(elapsed / HOUR) * self._source_rng.standard_normal(len(self.source_drift))
            )
        self._source_time = max(self._source_time, now)
        drifted = float(np.mod(base.indistinguishability + self.source_drift[mode], 2.0))
        drifted = 2.0 - drifted if drifted > 1.0 else drifted
        if drifted == base.indistinguishability:
            return base
        return SourceModel(brightness=base.brightness, g2=base.g2, indistinguishability=drifted)

    def unitary(self, now: float) -> np.ndarray:
        """The lossless transfer matrix of the mesh as it is at ``now``."""
        return mesh_unitary(self.phases(now))

    def temperature(self) -> float:
        thermal = self.config.thermal
        return thermal.ambient_c + thermal.kelvin_per_watt * self.power()

    # --- classical light ----------------------------------------------------------------

    def powers(self, now: float, fields: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Photodiode reading per output mode, in W, for input field amplitudes (sqrt W)."""
        u = self.unitary(now)
        through = math.sqrt(self.input_transmission * self.mesh_transmission) * (u @ fields)
        optical = np.abs(through) ** 2 * self.output_transmission
        noise = self.config.detectors.powermeter_noise_w * rng.standard_normal(len(optical))
        reading: np.ndarray = optical * self.powermeter_gain + noise
        return reading
