"""Reading events journaled by older daemons with the meaning those daemons gave them.

Replay must make the decisions the live daemon made (``Journal.rebuild``), but the core's
rules change: an event journaled under old rules is read here as the event that, under
today's rules, has the effect on the sale that it had then. Only ``rebuild`` uses this;
timelines and exports show every event exactly as it was journaled.

Schema 4: relayed notifications stop being core events
    Up to schema 3 a relayed Point intent body was journaled as ``IntentObserved`` with
    source ``notification`` and moved the sale like an API answer, except that a state
    ending the sale without a payment (CANCELED, ERROR, ABANDONED) only made the daemon
    fetch the intent. Today's core rejects every notification-sourced observation (rule 6:
    a notification names no fact), so an old one is read as what it was to its daemon:
    an API answer (source ``poll``) for progress and paid states, and for the three states
    that only triggered a fetch, an OPEN answer, which adopts a not-yet-known intent exactly
    as the old daemon did and is otherwise stale. One difference is left, on purpose: an
    old notification of progress re-armed the POLL timer, an answer keeps the one pending,
    so after an upgrade a sale in progress may be polled once a little sooner.

Snapshot format 3: the refund book joins the core state
    Up to ``pointd-core-state/2`` a snapshot held only the sales: the daemon rebuilt its
    refunds at every start from every refund event ever journaled. Refunds are now part of
    the core state (they are snapshotted and forgotten with their sales), so a format-2
    snapshot is read with an empty book, and ``refunds_through_snapshot`` replays the refund
    events journaled up to it into that book. Refund events change only the book (their
    admission reads the sale's facts journaled in ``RefundRequested``, never the sale
    table), so the result is the state the snapshot would hold had it been written today,
    except that refunds of sales forgotten before the snapshot are still there; the next
    ``SettledSalesForgotten`` removes them (they are settled refunds of unknown sales).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from pointd.core.events import (
    Event,
    IntentObserved,
    ObservationSource,
)
from pointd.core.machine import step
from pointd.core.policy import Policy
from pointd.core.records import CoreState
from pointd.core.refunds import REFUND_EVENT_TYPES
from pointd.core.states import IntentState

NOTIFICATION_OBSERVATIONS = "notification_observations"

# The states whose notification only made the pre-4 daemon fetch the intent.
_FETCH_ONLY = frozenset({IntentState.CANCELED, IntentState.ERROR, IntentState.ABANDONED})


def notification_observation_as_decided(event: Event) -> Event:
    """A schema-3 notification observation as the event that decides like it did then."""
    if not isinstance(event, IntentObserved) or event.source is not ObservationSource.NOTIFICATION:
        return event
    if event.state.strip().upper() in _FETCH_ONLY:
        return dataclasses.replace(event, state=IntentState.OPEN.value, payment_id=None,
                                   payment_state=None, source=ObservationSource.POLL)
    return dataclasses.replace(event, source=ObservationSource.POLL)


def refunds_through_snapshot(state: CoreState, events: Iterable[tuple[float, Event]],
                             policy: Policy) -> CoreState:
    """A format-2 snapshot's ``state`` with the refund events journaled up to it replayed.

    ``events`` are (time, event) of every refund event up to the snapshot's seq, in order.
    """
    for at, event in events:
        if isinstance(event, REFUND_EVENT_TYPES):
            state = step(state, event, now=at, policy=policy).state
    return state
