"""The factory calibration a chip ships with: its maker's measurement, good but not exact.

Photonica characterises every chip before shipping and writes ``phi0`` and
``alpha`` per heater and the nominal crosstalk to a file. The values carry the
errors of that measurement and of the chip's ageing since (``error_rad`` on
``phi0``, ``alpha_error`` relative on ``alpha``); awen's calibration starts
from them and measures the chip as it is now.
"""

from __future__ import annotations

import os

import msgspec
import numpy as np

from protocol.calibration_model import Crosstalk, FactoryCalibration

from ._chip import Chip
from ._config import SimConfig


def chip_of(config: SimConfig, seed: int | None = None) -> Chip:
    """The chip a `Device` with this configuration and seed simulates (the same draws)."""
    seed = seed if seed is not None else (config.seed if config.seed is not None else 0)
    chip_seed, _, _ = np.random.SeedSequence(seed).spawn(3)
    return Chip(config, np.random.default_rng(chip_seed))


def factory_calibration(
    config: SimConfig, seed: int | None = None, *, error_rad: float = 0.05, alpha_error: float = 0.02
) -> FactoryCalibration:
    """The factory calibration of the chip with this seed: the truth with a manufacturer's errors."""
    chip = chip_of(config, seed)
    rng = np.random.default_rng([seed or 0, 0xFAC])
    n = config.heater_count
    rows, cols = np.nonzero(chip.crosstalk)
    return FactoryCalibration(
        identity=config.description().identity.idn(),
        phi0=np.mod(chip.phi0 + error_rad * rng.standard_normal(n), 2 * np.pi).tolist(),
        alpha=(chip.alpha * (1 + alpha_error * rng.standard_normal(n))).tolist(),
        crosstalk=Crosstalk(rows=rows.tolist(), cols=cols.tolist(), values=[config.heaters.crosstalk] * len(rows)),
    )


def write_factory_calibration(path: str | os.PathLike[str], config: SimConfig, seed: int | None = None) -> None:
    """The factory calibration as the file its maker ships (JSON)."""
    with open(path, "wb") as f:
        f.write(msgspec.json.encode(factory_calibration(config, seed)))
