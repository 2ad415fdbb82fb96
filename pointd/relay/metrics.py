"""The relay's Prometheus metrics, kept in process and rendered in the text exposition format.

Written by hand rather than with prometheus_client: the relay needs a handful of counters
and one histogram, and stays free of another dependency.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from pointd.relay.storage import Stats

# Commit latency buckets (seconds): a durable commit should take a few milliseconds.
COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.5, 1.0)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass
class RelayMetrics:
    """Counters updated by the service; rendered on /metrics together with storage stats."""

    intake: Counter[str] = field(default_factory=Counter)
    commit_counts: list[int] = field(default_factory=lambda: [0] * len(COMMIT_BUCKETS))
    commit_sum: float = 0.0
    commit_total: int = 0
    committed_items: int = 0

    def count_intake(self, outcome: str) -> None:
        """Count one intake answer by outcome (stored, duplicate, unauthorized, ...)."""
        self.intake[outcome] += 1

    def observe_commit(self, items: int, seconds: float) -> None:
        """Record one group commit's size and duration."""
        self.commit_total += 1
        self.committed_items += items
        self.commit_sum += seconds
        for index, bound in enumerate(COMMIT_BUCKETS):
            if seconds <= bound:
                self.commit_counts[index] += 1

    def render(self, stats: Stats, now: float, missing: Sequence[str] = ()) -> str:
        """The text exposition of every metric."""
        lines = [
            "# HELP pointd_relay_intake_total Intake answers by outcome.",
            "# TYPE pointd_relay_intake_total counter",
        ]
        for outcome, count in sorted(self.intake.items()):
            lines.append(f'pointd_relay_intake_total{{outcome="{_label(outcome)}"}} {count}')
        lines += [
            "# HELP pointd_relay_commit_seconds Duration of one durable group commit.",
            "# TYPE pointd_relay_commit_seconds histogram",
        ]
        for bound, count in zip(COMMIT_BUCKETS, self.commit_counts, strict=True):
            lines.append(f'pointd_relay_commit_seconds_bucket{{le="{bound}"}} {count}')
        lines += [
            f'pointd_relay_commit_seconds_bucket{{le="+Inf"}} {self.commit_total}',
            f"pointd_relay_commit_seconds_sum {self.commit_sum:.6f}",
            f"pointd_relay_commit_seconds_count {self.commit_total}",
            "# HELP pointd_relay_committed_items_total Notifications written by group commits.",
            "# TYPE pointd_relay_committed_items_total counter",
            f"pointd_relay_committed_items_total {self.committed_items}",
            "# HELP pointd_relay_events Events held in storage.",
            "# TYPE pointd_relay_events gauge",
            f"pointd_relay_events {stats.events}",
            "# HELP pointd_relay_unrouted_events Events waiting for an operator to assign a store.",
            "# TYPE pointd_relay_unrouted_events gauge",
            f"pointd_relay_unrouted_events {stats.unrouted}",
            "# HELP pointd_relay_quarantined_events Events whose body is not strict JSON.",
            "# TYPE pointd_relay_quarantined_events gauge",
            f"pointd_relay_quarantined_events {stats.quarantined}",
            "# HELP pointd_relay_delivery_lag_events Events a store has not acknowledged yet.",
            "# TYPE pointd_relay_delivery_lag_events gauge",
        ]
        for stream in stats.streams:
            lag = stream.head - stream.acked
            lines.append(
                f'pointd_relay_delivery_lag_events{{store="{_label(stream.store)}"}} {lag}'
            )
        lines += [
            "# HELP pointd_relay_delivery_lag_seconds Age of the oldest unacknowledged event.",
            "# TYPE pointd_relay_delivery_lag_seconds gauge",
        ]
        for stream in stats.streams:
            age = (
                0.0
                if stream.oldest_unacked_at is None
                else max(0.0, now - stream.oldest_unacked_at)
            )
            lines.append(
                f'pointd_relay_delivery_lag_seconds{{store="{_label(stream.store)}"}} {age:.3f}'
            )
        lines += [
            "# HELP pointd_relay_store_missing 1 when a store has not polled within canary_window.",
            "# TYPE pointd_relay_store_missing gauge",
        ]
        lines += [f'pointd_relay_store_missing{{store="{_label(store)}"}} 1' for store in missing]
        return "\n".join(lines) + "\n"
