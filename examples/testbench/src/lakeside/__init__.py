"""The Lakeside group's two-photon interference experiments, run on an awen lab."""

from .analysis import coincidence_ratio, fit_visibility, hom_visibility, one_click, router_distribution
from .circuits import hom, photon_router, random_unitary, splitter_sweep
from .sweep import ChipInterlocked, SweepFailed, run_sweep

__all__ = [
    "ChipInterlocked",
    "SweepFailed",
    "coincidence_ratio",
    "fit_visibility",
    "hom",
    "hom_visibility",
    "one_click",
    "photon_router",
    "random_unitary",
    "router_distribution",
    "run_sweep",
    "splitter_sweep",
]
