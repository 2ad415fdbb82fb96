"""The relay's Prometheus metrics, kept with prometheus_client in a registry of the relay's own.

Theory of operation. Counters and the commit histogram are updated as the service works;
the storage gauges are a snapshot taken by the service (an awaited read) just before each
scrape is rendered, synchronously, so two scrapes never mix snapshots. ``/metrics`` is
public, and anyone may read it: the public page names no store (aggregates only); the
per-store series are rendered only for a caller holding the admin token (docs/relay.md,
"Health and metrics").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from pointd.relay.storage import Stats

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# Commit latency buckets (seconds): a durable commit should take a few milliseconds.
COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.5, 1.0)


@dataclass
class _Snapshot:
    """What storage said at the start of the scrape being rendered."""

    stats: Stats = field(default_factory=lambda: Stats(0, 0, 0, 0))
    now: float = 0.0
    missing: Sequence[str] = ()
    stores: int = 0

    def lags(self) -> Iterator[tuple[str, int, float]]:
        """(store, unacknowledged events, age of the oldest of them) per stream."""
        for stream in self.stats.streams:
            oldest = stream.oldest_unacked_at
            age = 0.0 if oldest is None else max(0.0, self.now - oldest)
            yield stream.store, stream.head - stream.acked, age


class _StorageGauges:
    """Aggregate gauges, naming no store."""

    def __init__(self, snapshot: _Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot
        stats = snapshot.stats
        lags = list(snapshot.lags())
        yield from (
            GaugeMetricFamily(name, text, value=value)
            for name, text, value in (
                ("pointd_relay_events", "Events held in storage.", stats.events),
                (
                    "pointd_relay_unrouted_events",
                    "Events no store is known for yet (re-routed when a route is taught).",
                    stats.unrouted,
                ),
                (
                    "pointd_relay_quarantined_events",
                    "Events whose body is not strict JSON.",
                    stats.quarantined,
                ),
                (
                    "pointd_relay_unroutable_fraud_alerts",
                    "Fraud alerts still unrouted after delivery.unroutable_alert_after.",
                    stats.alerted,
                ),
                ("pointd_relay_stores", "Stores configured.", snapshot.stores),
                (
                    "pointd_relay_stores_missing",
                    "Configured stores that have not polled within canary_window.",
                    len(snapshot.missing),
                ),
                (
                    "pointd_relay_delivery_lag_events_max",
                    "The most events any one store has not acknowledged yet.",
                    max((lag for _store, lag, _age in lags), default=0),
                ),
                (
                    "pointd_relay_delivery_lag_seconds_max",
                    "Age of the oldest unacknowledged event of any store.",
                    max((age for _store, _lag, age in lags), default=0.0),
                ),
            )
        )


class _StoreGauges:
    """Per-store gauges: only for a caller holding the admin token."""

    def __init__(self, snapshot: _Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        lag_events = GaugeMetricFamily(
            "pointd_relay_delivery_lag_events",
            "Events a store has not acknowledged yet.",
            labels=["store"],
        )
        lag_seconds = GaugeMetricFamily(
            "pointd_relay_delivery_lag_seconds",
            "Age of a store's oldest unacknowledged event.",
            labels=["store"],
        )
        for store, lag, age in self._snapshot.lags():
            lag_events.add_metric([store], lag)
            lag_seconds.add_metric([store], age)
        missing = GaugeMetricFamily(
            "pointd_relay_store_missing",
            "1 when a store has not polled within canary_window.",
            labels=["store"],
        )
        for store in self._snapshot.missing:
            missing.add_metric([store], 1)
        yield from (lag_events, lag_seconds, missing)


class RelayMetrics:
    """The relay's metrics: updated by the service, rendered on /metrics."""

    def __init__(self) -> None:
        self._snapshot = _Snapshot()
        self.public = CollectorRegistry()
        self._stores = CollectorRegistry()
        self._intake = Counter(
            "pointd_relay_intake",
            "Intake answers by outcome.",
            ["outcome"],
            registry=self.public,
        )
        self._intake_by_outcome: dict[str, Counter] = {}
        self._commit = Histogram(
            "pointd_relay_commit_seconds",
            "Duration of one durable group commit.",
            buckets=COMMIT_BUCKETS,
            registry=self.public,
        )
        self._committed = Counter(
            "pointd_relay_committed_items",
            "Notifications written by group commits.",
            registry=self.public,
        )
        self._rerouted = Counter(
            "pointd_relay_rerouted_events",
            "Events routed after they were stored, when a later event taught their route.",
            registry=self.public,
        )
        self._alerted = Counter(
            "pointd_relay_fraud_alerts_alerted",
            "Fraud alerts found still unrouted after delivery.unroutable_alert_after.",
            registry=self.public,
        )
        self.public.register(_StorageGauges(self._snapshot))
        self._stores.register(_StoreGauges(self._snapshot))

    def count_intake(self, outcome: str) -> None:
        """Count one intake answer by outcome (stored, duplicate, unauthorized, ...)."""
        counter = self._intake_by_outcome.get(outcome)
        if counter is None:
            # labels() takes a lock and validates the label on every call; the outcomes
            # are a handful of fixed words, so each child is looked up once.
            counter = self._intake_by_outcome[outcome] = self._intake.labels(outcome)
        counter.inc()

    def observe_commit(self, items: int, seconds: float) -> None:
        """Record one group commit's size and duration."""
        self._commit.observe(seconds)
        self._committed.inc(items)

    def count_rerouted(self, events: int) -> None:
        """Count events routed after they were stored."""
        self._rerouted.inc(events)

    def count_alerted(self, events: int) -> None:
        """Count fraud alerts newly found unroutable."""
        self._alerted.inc(events)

    def intake_counts(self) -> dict[str, int]:
        """Intake answers so far, by outcome (for the admin API)."""
        return {
            sample.labels["outcome"]: int(sample.value)
            for metric in self._intake.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        }

    def render(
        self, stats: Stats, now: float, missing: Sequence[str], *, stores: int, per_store: bool
    ) -> bytes:
        """The text exposition; per-store series only when ``per_store``."""
        self._snapshot.stats = stats
        self._snapshot.now = now
        self._snapshot.missing = missing
        self._snapshot.stores = stores
        text = generate_latest(self.public)
        if per_store:
            text += generate_latest(self._stores)
        return text
