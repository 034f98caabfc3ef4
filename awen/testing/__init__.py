"""Testing helpers for labs that test their experiments against awen's simulated chip (decision 0016).

``assert_distribution`` and ``assert_figure`` are statistical assertions that
state their false-failure rate; the pytest plugin's fixtures come later.
"""

from .stats import DistributionMismatch as DistributionMismatch
from .stats import FigureMismatch as FigureMismatch
from .stats import assert_distribution as assert_distribution
from .stats import assert_figure as assert_figure

__all__ = ["DistributionMismatch", "FigureMismatch", "assert_distribution", "assert_figure"]
