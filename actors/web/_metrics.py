"""``/metrics``: what the actors' heartbeats reported, as a `prometheus_client` collector renders it (0015 §2).

No multi-process mode and no shared files: each actor sends its metrics on its
heartbeats, the web actor keeps the last report of each, and this collector
turns them into families at scrape time. A family reported by several actors
(the runtime's ``awen_messages_handled_total{actor}``) is one family; a series
reported twice (same name, same labels) is taken once, the last report winning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric as Family

from protocol.system import Metric

UP_HELP = "1 while the actor's heartbeats come (the web actor's view), else 0."


class HeartbeatCollector:
    """Families from ``reports()`` (per actor, its last metrics) and ``up()`` (per actor, whether it is up)."""

    def __init__(
        self,
        reports: Callable[[], Mapping[str, Iterable[Metric]]],
        up: Callable[[], Mapping[str, bool]],
    ) -> None:
        self._reports = reports
        self._up = up

    def collect(self) -> Iterator[Family]:
        up = Family("awen_up", UP_HELP, "gauge")
        for actor, alive in sorted(self._up().items()):
            up.add_sample("awen_up", {"actor": actor}, 1.0 if alive else 0.0)
        yield up
        families: dict[str, Family] = {}
        seen: dict[str, dict[tuple[tuple[str, str], ...], int]] = {}
        for actor, metrics in sorted(self._reports().items()):
            for metric in metrics:
                if metric.name == "awen_up":
                    continue
                family = families.get(metric.name)
                if family is None:
                    family = families[metric.name] = Family(_base(metric), metric.help or metric.name, metric.kind)
                    seen[metric.name] = {}
                elif family.type != metric.kind:
                    continue  # two actors disagree on what the metric is: the first one's kind stands
                _add_series(family, metric, seen[metric.name], actor)
        yield from families.values()


def _base(metric: Metric) -> str:
    """A family's name as `prometheus_client` wants it: a counter's without its ``_total``."""
    if metric.kind == "counter" and metric.name.endswith("_total"):
        return metric.name[: -len("_total")]
    return metric.name


def _add_series(family: Family, metric: Metric, seen: dict[tuple[tuple[str, str], ...], int], actor: str) -> None:
    """``metric``'s series as ``family``'s samples, each labelled with the ``actor`` that reported it (two
    executors' shots are two series, not one overwriting the other); a series already there is replaced."""
    for series in metric.series:
        labels = {"actor": actor} | {str(k): str(v) for k, v in series.labels.items()}
        key = tuple(sorted(labels.items()))
        if key in seen:  # replace: drop the samples the earlier report gave
            family.samples = [s for s in family.samples if tuple(sorted(_own(s.labels).items())) != key]
        seen[key] = 1
        if metric.kind == "counter":
            family.add_sample(family.name + "_total", labels, series.value)
        elif metric.kind == "gauge":
            family.add_sample(family.name, labels, series.value)
        else:
            bounds = [*metric.bounds, math.inf]
            for bound, count in zip(bounds, series.buckets, strict=False):
                family.add_sample(family.name + "_bucket", {**labels, "le": _le(bound)}, float(count))
            family.add_sample(family.name + "_sum", labels, series.sum)
            family.add_sample(family.name + "_count", labels, float(series.count))


def _own(labels: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k != "le"}


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def render(collector: HeartbeatCollector) -> bytes:
    """The Prometheus text format (0.0.4) of what ``collector`` gives now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
