"""awen: a runtime for photonic lab hardware.

This package holds the command line (`awen.cli`); the runtime lives in the
top-level packages `actors`, `hal`, `drivers`, `protocol` and `sim`.
"""

__version__ = "0.1.0"
