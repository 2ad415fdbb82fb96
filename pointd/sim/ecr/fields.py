"""Messages as register protocol §4 and §6 define them: a TYPE byte and ``key=value`` fields.

A message is its type letter and a mapping of fields. ``encode`` refuses what §4 forbids
(bad keys, control characters in values); ``decode`` refuses a malformed DATA, and leaves
keys it does not know in the mapping for the caller to ignore, as §4 asks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

# §4: fields are separated by 1F (unit separator); a key is 1..16 lower-case letters/digits.
SEPARATOR = b"\x1f"
KEY = re.compile(r"[a-z0-9]{1,16}")
# §4: correlation ids are 1..32 characters of A-Z a-z 0-9 _ -.
CORRELATION_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
# §4: amounts are 1..9999999999 cents, decimal digits only.
MAX_AMOUNT = 9_999_999_999

# §6.1, register → daemon.
HELLO = "H"
SALE = "S"
CANCEL = "C"
STATUS = "Q"
HANDOVER_CHECK = "K"
HANDOVER_DONE = "D"
REFUND = "R"
# §6.2, daemon → register.
HELLO_REPLY = "h"
DISPLAY = "d"
RESULT = "r"
HOLD = "w"
RELEASE = "g"
WITHDRAW = "x"
STATUS_REPLY = "q"
HANDOVER_REPLY = "k"
ERROR = "e"
REFUND_RESULT = "f"

# §6.2 STATUS_REPLY: the final states, and "approved", which waits only for HANDOVER_DONE.
FINAL_STATES = frozenset({"handed_over", "declined", "canceled", "failed", "abandoned",
                          "overridden", "handover_unconfirmed"})
UNKNOWN_STATE = "unknown"
# §7 "After a reconnect": what a final state (or approved) means as the sale's outcome.
OUTCOME_OF_STATE = {
    "approved": "approved",
    "overridden": "approved",
    "handover_unconfirmed": "approved",
    "handed_over": "approved",
    "declined": "declined",
    "canceled": "canceled",
    "failed": "error",
    "abandoned": "abandoned",
}


class MessageError(ValueError):
    """DATA that §4 does not allow."""


@dataclass(frozen=True, slots=True)
class Message:
    """One message: its type letter and its fields."""

    kind: str
    fields: Mapping[str, str] = field(default_factory=dict)

    def get(self, key: str) -> str | None:
        """A field's value, None when absent."""
        return self.fields.get(key)


def encode(kind: str, fields: Mapping[str, str]) -> tuple[int, bytes]:
    """The TYPE byte and the DATA of a message."""
    if len(kind) != 1 or not 0x20 <= ord(kind) <= 0x7E:
        raise MessageError(f"type {kind!r} is not one printable character")
    parts = []
    for key, value in fields.items():
        if not KEY.fullmatch(key):
            raise MessageError(f"key {key!r} is not 1..16 lower-case letters or digits")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise MessageError(f"the value of {key!r} holds a control character")
        parts.append(f"{key}={value}".encode())
    return ord(kind), SEPARATOR.join(parts)


def decode(kind: int, data: bytes) -> Message:
    """The message a data frame carries; MessageError when its fields are malformed."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MessageError("the fields are not UTF-8") from None
    fields: dict[str, str] = {}
    if text:
        for part in text.split("\x1f"):
            key, equals, value = part.partition("=")
            if not equals or not KEY.fullmatch(key):
                raise MessageError(f"field {part!r} is not key=value")
            if key in fields:
                raise MessageError(f"key {key!r} appears twice")
            if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
                raise MessageError(f"the value of {key!r} holds a control character")
            fields[key] = value
    return Message(chr(kind), fields)


def amount_text(cents: int) -> str:
    """An amount field (§4): integer cents, 1..9999999999."""
    if not 1 <= cents <= MAX_AMOUNT:
        raise MessageError(f"{cents} cents is outside 1..{MAX_AMOUNT}")
    return str(cents)
