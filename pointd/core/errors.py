"""The core's exception tree; the state machine itself never raises for an event.

::

    CoreError
    ├── PolicyError        a Policy value is unusable (raised when the config is built)
    ├── EventDecodeError   journaled or wire JSON is not a well-formed core event
    └── StateDecodeError   a journaled snapshot is not a well-formed, consistent core state

Events that make no sense for a sale are not errors: ``step`` answers them with a
``Rejection`` and the unchanged state.
"""

from __future__ import annotations


class CoreError(Exception):
    """Base of every error the core package raises."""


class PolicyError(CoreError, ValueError):
    """A Policy field is out of its allowed range."""


class EventDecodeError(CoreError, ValueError):
    """Text is not the JSON of a known core event with well-typed fields."""


class StateDecodeError(CoreError, ValueError):
    """Text is not the JSON of a core state (a snapshot) with well-typed, consistent fields."""
