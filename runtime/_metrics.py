"""Metrics an actor keeps: counters, gauges and histograms with labels, reported on its heartbeats.

Decision 0015 §2. Each actor has one registry (``actor.metrics``, a `Metrics`);
it registers its metrics once, then counts on its hot paths::

    shots = self.metrics.counter("awen_shots_total", "Shots fired.")
    links = self.metrics.gauge("awen_device_link_up", "1 while the link is up.", labels=("device",))
    shots.inc(2000)
    links.set(1, device="chip")

An update is a dict lookup and an add (and one to the registry's `version`):
no lock, no allocation once the series exists. `Metrics.report` is what the
heartbeat calls: it runs the registry's `on_collect` callbacks (gauges read
from state kept elsewhere) and returns every metric, as the wire has them
(`protocol.system.Metric`), when any changed since the last report, else None.

Bounded: at most ``max_series`` series in all (`protocol.system.MAX_SERIES`,
what one heartbeat carries). A new label combination past that is dropped,
and counted in ``awen_metric_series_dropped_total``. Names, label names and
bucket bounds are checked when a metric is registered (`ValueError`).
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, Protocol, TypeVar

from protocol.system import MAX_SERIES, Metric, Series

NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]{0,127}$")
"""A metric's name, as the wire's `protocol.system.MetricName` allows."""

LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,63}$")
"""A label's name, as Prometheus allows (names beginning ``__`` are reserved, and refused too)."""

MAX_LABELS = 8
MAX_HELP = 256
MAX_BOUNDS = 63
MAX_LABEL_VALUE = 256

DROPPED = "awen_metric_series_dropped_total"

Kind = Literal["counter", "gauge", "histogram"]
Key = tuple[str, ...]
F = TypeVar("F", bound="_Family")
S = TypeVar("S", bound="_Scalar")


class _Family:
    """What every metric has: a name, a help text, its label names, and its series by label values."""

    kind: Kind

    def __init__(self, registry: Metrics, name: str, help: str, labels: Sequence[str]) -> None:
        self._registry = registry
        self.name = name
        self.help = help
        self.labels: tuple[str, ...] = tuple(labels)
        self._only = self.labels[0] if len(self.labels) == 1 else ""
        """The one label's name, if it has one (the common case, made quick)."""

    def _key(self, labels: dict[str, str]) -> Key:
        """The series' key: its label values, in the order the labels were declared."""
        try:
            if len(labels) == len(self.labels):
                return (labels[self._only],) if self._only else tuple([labels[name] for name in self.labels])
        except KeyError:
            pass
        raise ValueError(f"{self.name} takes the labels {self.labels}, not {tuple(labels)}")

    def _admit(self, key: Key) -> bool:
        """Whether a new series ``key`` fits under the registry's bound (counting it as dropped if not)."""
        if len(key) != len(self.labels):
            raise ValueError(f"{self.name} takes the labels {self.labels}")
        return self._registry._admit()

    def _labels(self, key: Key) -> dict[str, str]:
        return {name: _label_value(value) for name, value in zip(self.labels, key, strict=True)}

    def _series(self) -> list[Series]:
        raise NotImplementedError

    def _same(self, kind: Kind, labels: Sequence[str], bounds: Sequence[float] = ()) -> bool:
        return kind == self.kind and tuple(labels) == self.labels

    def metric(self) -> Metric:
        return Metric(name=self.name, kind=self.kind, help=self.help, series=self._series())


class _Scalar(_Family):
    """A counter's or a gauge's values, by label values."""

    def __init__(self, registry: Metrics, name: str, help: str, labels: Sequence[str]) -> None:
        super().__init__(registry, name, help, labels)
        self._values: dict[Key, float] = {}
        if not self.labels:  # one series, there from the start: reported as 0 until it moves
            self._values[()] = 0.0

    def value(self, **labels: str) -> float:
        """The series' value now (0 if it has none yet)."""
        return self._values.get(self._key(labels) if labels else (), 0.0)

    def _add(self, key: Key, amount: float) -> None:
        """Add to a series that does not exist yet (the slow path of an update)."""
        if self._admit(key):
            self._values[key] = amount
            self._registry.version += 1

    def _assign(self, value: float, labels: dict[str, str]) -> None:
        """The series of ``labels`` to ``value``; the registry changes only if the value did."""
        key = self._key(labels) if labels else ()
        old = self._values.get(key)
        if old is None:
            self._add(key, value)
        elif old != value:
            self._values[key] = value
            self._registry.version += 1

    def _series(self) -> list[Series]:
        return [Series(labels=self._labels(key), value=v) for key, v in self._values.items()]


class Counter(_Scalar):
    """A count that only grows (``_total``): `inc`."""

    kind: Kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` (not negative) to the series of ``labels``."""
        if amount < 0:
            raise ValueError(f"{self.name}: a counter does not go down ({amount})")
        key = self._key(labels) if labels else ()
        try:
            self._values[key] += amount
        except KeyError:
            self._add(key, amount)
            return
        self._registry.version += 1

    def set_total(self, total: float, **labels: str) -> None:
        """Set the series to ``total``: for a count kept elsewhere (which must not go down), read at collection."""
        self._assign(total, labels)


class Gauge(_Scalar):
    """A value that goes up and down: `set`, `inc`, `dec`."""

    kind: Kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        """Set the series of ``labels`` to ``value`` (setting the value it has changes nothing)."""
        self._assign(value, labels)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels) if labels else ()
        try:
            self._values[key] += amount
        except KeyError:
            self._add(key, amount)
            return
        self._registry.version += 1

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self.inc(-amount, **labels)

    def remove(self, **labels: str) -> None:
        """Forget the series of ``labels`` (a device no longer configured), freeing its place under the bound."""
        if self._values.pop(self._key(labels), None) is not None:
            self._registry._count -= 1
            self._registry.version += 1


class _Buckets:
    """One histogram series: observations per bucket (not cumulative; the last is +Inf), their sum and count."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self, n: int) -> None:
        self.counts = [0] * n
        self.sum = 0.0
        self.count = 0


class Histogram(_Family):
    """Observations counted into fixed buckets: `observe`. Reported cumulative, as Prometheus has them."""

    kind: Kind = "histogram"

    def __init__(self, registry: Metrics, name: str, help: str, bounds: Sequence[float], labels: Sequence[str]) -> None:
        super().__init__(registry, name, help, labels)
        self.bounds: tuple[float, ...] = tuple(float(b) for b in bounds)
        self._buckets: dict[Key, _Buckets] = {}
        if not self.labels:
            self._buckets[()] = _Buckets(len(self.bounds) + 1)

    def observe(self, value: float, **labels: str) -> None:
        """Count ``value`` into the series of ``labels``: in the first bucket whose bound is at least ``value``."""
        key = self._key(labels) if labels else ()
        buckets = self._buckets.get(key)
        if buckets is None:
            if not self._admit(key):
                return
            buckets = self._buckets[key] = _Buckets(len(self.bounds) + 1)
        buckets.counts[bisect.bisect_left(self.bounds, value)] += 1
        buckets.sum += value
        buckets.count += 1
        self._registry.version += 1

    def _same(self, kind: Kind, labels: Sequence[str], bounds: Sequence[float] = ()) -> bool:
        return super()._same(kind, labels) and tuple(float(b) for b in bounds) == self.bounds

    def _series(self) -> list[Series]:
        series = []
        for key, b in self._buckets.items():
            cumulative, total = [], 0
            for n in b.counts:
                total += n
                cumulative.append(total)
            series.append(Series(labels=self._labels(key), buckets=cumulative, sum=b.sum, count=b.count))
        return series

    def metric(self) -> Metric:
        return Metric(name=self.name, kind=self.kind, help=self.help, bounds=list(self.bounds), series=self._series())


class Metrics:
    """One actor's metrics (``actor.metrics``), reported on its heartbeats.

    Args:
        max_series: The most series it keeps, all metrics together.
    """

    DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0)
    """Bucket bounds for durations in seconds, a millisecond to an hour, about a factor of 2 to 6 apart."""

    def __init__(self, max_series: int = MAX_SERIES) -> None:
        self.max_series = max_series
        self.version = 0
        """Adds one with every change of a value: a report is due when it differs from the last reported."""
        self._reported = -1
        self._count = 0
        self._families: dict[str, _Family] = {}
        self._collectors: list[Callable[[], None]] = []
        self.dropped = self.counter(DROPPED, "Metric series not kept: past the bound on series an actor keeps.")

    # --- registration -----------------------------------------------------------------------------------

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        """A counter; registering one again with the same name, kind and labels returns the first."""
        return self._register(Counter, name, help, labels)

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Gauge:
        return self._register(Gauge, name, help, labels)

    def histogram(self, name: str, help: str, bounds: Iterable[float], labels: Sequence[str] = ()) -> Histogram:
        """A histogram with the buckets ``bounds`` (finite, increasing; +Inf is added)."""
        bounds = tuple(bounds)
        if not bounds or len(bounds) > MAX_BOUNDS:
            raise ValueError(f"{name}: a histogram has 1 to {MAX_BOUNDS} bucket bounds, not {len(bounds)}")
        if not all(math.isfinite(b) for b in bounds) or any(a >= b for a, b in itertools.pairwise(bounds)):
            raise ValueError(f"{name}: bucket bounds must be finite and increasing: {bounds}")
        existing = self._existing(name, "histogram", labels, bounds)
        if existing is not None:
            return existing  # type: ignore[return-value]
        _check(name, help, labels)
        histogram = Histogram(self, name, help, bounds, labels)
        return self._add_family(histogram)

    def on_collect(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` before each report: to set gauges (and `Counter.set_total`) from state kept elsewhere."""
        self._collectors.append(fn)

    def _register(self, cls: type[S], name: str, help: str, labels: Sequence[str]) -> S:
        existing = self._existing(name, cls.kind, labels)
        if existing is not None:
            return existing  # type: ignore[return-value]
        _check(name, help, labels)
        return self._add_family(cls(self, name, help, labels))

    def _existing(self, name: str, kind: Kind, labels: Sequence[str], bounds: Sequence[float] = ()) -> _Family | None:
        family = self._families.get(name)
        if family is not None and not family._same(kind, labels, bounds):
            raise ValueError(f"metric {name} is registered already, as another {family.kind} or with other labels")
        return family

    def _add_family(self, family: F) -> F:
        if not family.labels:
            if self._count >= self.max_series:
                raise ValueError(f"{family.name}: no room for its series ({self.max_series} series at most)")
            self._count += 1
        self._families[family.name] = family
        self.version += 1
        return family

    def _admit(self) -> bool:
        if self._count < self.max_series:
            self._count += 1
            return True
        self.dropped._values[()] += 1
        self.version += 1
        return False

    # --- reporting --------------------------------------------------------------------------------------

    @property
    def series(self) -> int:
        """Series kept now, all metrics together."""
        return self._count

    @property
    def changed(self) -> bool:
        """Whether a value changed since the last `report` (callbacks not run yet)."""
        return self.version != self._reported

    def collect(self) -> None:
        """Run the `on_collect` callbacks."""
        for fn in self._collectors:
            fn()

    def snapshot(self) -> list[Metric]:
        """Every metric, its callbacks run first, as the wire has them."""
        self.collect()
        return [family.metric() for family in self._families.values()]

    def report(self, *, force: bool = False) -> list[Metric] | None:
        """For a heartbeat: every metric if any changed since the last report (or ``force``), else None."""
        self.collect()
        if not force and self.version == self._reported:
            return None
        self._reported = self.version
        return [family.metric() for family in self._families.values()]


class _Counts(Protocol):
    name: str

    @property
    def handled(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def malformed(self) -> int: ...


def count_messages(metrics: Metrics, actor: _Counts) -> None:
    """The runtime's own metrics of an actor: its messages handled, failed and malformed, read at each report."""
    handled = metrics.counter("awen_messages_handled_total", "Messages whose handler has finished.", ("actor",))
    failed = metrics.counter("awen_messages_failed_total", "Requests answered with an error.", ("actor",))
    malformed = metrics.counter("awen_messages_malformed_total", "Frames that could not be read.", ("actor",))

    def collect() -> None:
        handled.set_total(actor.handled, actor=actor.name)
        failed.set_total(actor.failed, actor=actor.name)
        malformed.set_total(actor.malformed, actor=actor.name)

    metrics.on_collect(collect)


def _check(name: str, help: str, labels: Sequence[str]) -> None:
    if not NAME.match(name):
        raise ValueError(f"{name!r} is not a metric name: letters, digits, '_' and ':', not a digit first")
    if len(help) > MAX_HELP:
        raise ValueError(f"{name}: help longer than {MAX_HELP} characters")
    if len(labels) > MAX_LABELS or len(set(labels)) != len(labels):
        raise ValueError(f"{name}: at most {MAX_LABELS} labels, each once: {tuple(labels)}")
    for label in labels:
        if not LABEL.match(label) or label.startswith("__"):
            raise ValueError(f"{name}: {label!r} is not a label name")


def _label_value(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= MAX_LABEL_VALUE else text[: MAX_LABEL_VALUE - 1] + "…"
