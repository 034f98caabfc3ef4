"""Testing helpers for labs that test their experiments against awen's simulated chip (decision 0016).

``assert_distribution`` and ``assert_figure`` are statistical assertions that
state their false-failure rate. The pytest plugin (`awen.testing.plugin`, loaded
by pytest through its entry point) gives the fixtures; ``Bench`` (what
``awen_lab`` gives) and ``SimControl`` (what ``awen_faults`` gives) are here for
a test's annotations.
"""

from typing import Any

from .stats import DistributionMismatch as DistributionMismatch
from .stats import FigureMismatch as FigureMismatch
from .stats import assert_distribution as assert_distribution
from .stats import assert_figure as assert_figure

__all__ = ["Bench", "DistributionMismatch", "FigureMismatch", "SimControl", "assert_distribution", "assert_figure"]


def __getattr__(name: str) -> Any:
    # Imported when asked for: the plugin imports pytest, the simulator's client trio.
    if name == "Bench":
        from .plugin import Bench

        return Bench
    if name == "SimControl":
        from sim import SimControl

        return SimControl
    raise AttributeError(f"module 'awen.testing' has no attribute {name!r}")
