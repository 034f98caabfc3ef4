"""awen: a runtime for photonic lab hardware.

This package holds the command line (`awen.cli`) and what it runs (`awen.run`,
`awen.calibrate`); the rest lives in the top-level packages, layered as
docs/architecture.md draws them: `actors` (the five actors and the lab they
make), `runtime` (the actor runtime), `drivers` (devices), `protocol` (the
wire and the domain types) and `sim` (the simulated chip).
"""

__version__ = "0.1.0"
