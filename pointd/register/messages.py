"""The register protocol's messages: frozen values and their payload codec.

Theory of operation
-------------------
A payload (the DATA of one link frame, see ``pointd.link.frame``) is one message-type byte
followed by fields ``key=value`` separated by 0x1F (ASCII unit separator). Keys are
lower-case ASCII; values are UTF-8 text without control characters, so a register written
in C can build a message with ``snprintf`` and parse one with ``strtok``. Receivers ignore
keys they do not know (minor versions add fields); a missing or malformed required field
is a ``MessageError`` carrying the protocol error code to answer with.

Upper-case types travel register → daemon, lower-case daemon → register. The normative
description for register vendors is docs/register-protocol.md.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from pointd.link.frame import ETX, STX, DataFrame, FrameError, parse_frame

FIELD_SEPARATOR = b"\x1f"
PROTOCOL_VERSION = "1.0"
SUPPORTED_MAJOR_VERSIONS = frozenset({1})
MAX_CORRELATION_ID_LENGTH = 32
# 99 999 999.99 in any currency: far above a checkout sale, still an exact integer in C.
MAX_AMOUNT_CENTS = 9_999_999_999
MAX_DISPLAY_LINES = 4

_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_TERMINAL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PAYMENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_VERSION = re.compile(r"(\d{1,3})\.(\d{1,3})")
_KEY = re.compile(rb"[a-z0-9]{1,16}")
_DIGITS = re.compile(r"[0-9]{1,11}")
_LAST4 = re.compile(r"[0-9]{4}")
_LANGUAGE = re.compile(r"[a-z]{2}")
CARD_REDACTION = "****"

_E = TypeVar("_E", bound=enum.Enum)


class MessageType(enum.IntEnum):
    """The type byte of each message."""

    HELLO = ord("H")
    SALE = ord("S")
    CANCEL = ord("C")
    STATUS = ord("Q")
    HANDOVER_CHECK = ord("K")
    HANDOVER_DONE = ord("D")
    REFUND = ord("R")
    HELLO_REPLY = ord("h")
    DISPLAY = ord("d")
    RESULT = ord("r")
    HOLD = ord("w")
    RELEASE = ord("g")
    WITHDRAW = ord("x")
    STATUS_REPLY = ord("q")
    HANDOVER_REPLY = ord("k")
    ERROR = ord("e")
    REFUND_RESULT = ord("f")


class ErrorCode(enum.StrEnum):
    """Codes of the ERROR message; the register acts on the code, shows or logs the text."""

    MALFORMED = "malformed"  # a field is missing or invalid: fix the register's encoder
    UNKNOWN_TYPE = "unknown_type"  # the type byte is not in this protocol
    UNSUPPORTED_MESSAGE = "unsupported_message"  # a reserved type this daemon does not serve
    UNSUPPORTED_VERSION = "unsupported_version"  # no offered major version is spoken here
    HELLO_REQUIRED = "hello_required"  # send HELLO on this connection first, then repeat
    ID_REUSED = "id_reused"  # same correlation id, different amount: use a new id
    UNKNOWN_SALE = "unknown_sale"  # no sale with this correlation id on this lane
    WRONG_DIRECTION = "wrong_direction"  # a daemon-to-register type was sent to the daemon
    INTERNAL = "internal"  # the daemon failed; ask STATUS later


class Severity(enum.StrEnum):
    """How a DISPLAY should look: info normal, warn highlighted, error alarming."""

    INFO = "info"
    WARN = "warn"
    ERROR = "error"


class Outcome(enum.StrEnum):
    """The final answer to one SALE in a RESULT message."""

    APPROVED = "approved"  # paid and verified: hand over the goods
    DECLINED = "declined"  # the payment was rejected or cancelled
    CANCELED = "canceled"  # the sale was canceled before payment
    ERROR = "error"  # the payment failed for a technical reason; nothing was charged
    ABANDONED = "abandoned"  # the customer never paid at the terminal
    REFUSED = "refused"  # refused before anything was sent to Mercado Pago: safe to retry


class RefundOutcome(enum.StrEnum):
    """The final answer to one REFUND in a REFUND_RESULT message."""

    REFUNDED = "refunded"  # the money went back to the customer
    FAILED = "failed"  # Mercado Pago refused or failed it: nothing was refunded
    REFUSED = "refused"  # refused before anything was sent (e.g. more than was paid)


class MessageError(ValueError):
    """A payload that is not a valid message, with the ERROR code to answer it with."""

    def __init__(self, code: ErrorCode, text: str, correlation_id: str | None = None) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.correlation_id = correlation_id


# --- field validation ---------------------------------------------------------------------


def _match(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not pattern.fullmatch(value):
        raise MessageError(ErrorCode.MALFORMED, f"invalid {what}: {value[:40]!r}")
    return value


def _check_id(value: str) -> str:
    return _match(_ID, value, "correlation id")


def _check_text(value: str, what: str) -> str:
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise MessageError(ErrorCode.MALFORMED, f"{what} contains a control character")
    return value


def _check_amount(value: int) -> int:
    if not 1 <= value <= MAX_AMOUNT_CENTS:
        raise MessageError(ErrorCode.MALFORMED, f"amount must be 1..{MAX_AMOUNT_CENTS} cents")
    return value


def _parse_amount(text: str) -> int:
    return _check_amount(int(_match(_DIGITS, text, "amount")))


def _parse_bool(text: str, what: str) -> bool:
    if text not in ("yes", "no"):
        raise MessageError(ErrorCode.MALFORMED, f"{what} must be yes or no")
    return text == "yes"


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


# --- the field codec ------------------------------------------------------------------------


def encode_fields(message_type: MessageType, fields: Mapping[str, str | None]) -> bytes:
    """Build a payload from the type and its fields; None values are left out."""
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        _check_text(value, key)
        parts.append(key.encode("ascii") + b"=" + value.encode("utf-8"))
    return bytes((message_type,)) + FIELD_SEPARATOR.join(parts)


def decode_fields(data: bytes) -> dict[str, str]:
    """Split the bytes after the type into fields; raise MessageError if malformed."""
    fields: dict[str, str] = {}
    if not data:
        return fields
    for part in data.split(FIELD_SEPARATOR):
        key, sep, raw = part.partition(b"=")
        if not sep or not _KEY.fullmatch(key):
            raise MessageError(ErrorCode.MALFORMED, f"bad field {part[:20]!r}")
        name = key.decode("ascii")
        if name in fields:
            raise MessageError(ErrorCode.MALFORMED, f"field {name} appears twice")
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MessageError(ErrorCode.MALFORMED, f"field {name} is not UTF-8") from exc
        fields[name] = _check_text(value, name)
    return fields


def _require(fields: dict[str, str], key: str) -> str:
    try:
        return fields[key]
    except KeyError:
        raise MessageError(ErrorCode.MALFORMED, f"missing field {key}") from None


# --- register -> daemon ---------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """Register → daemon: the protocol versions the register speaks, best first."""

    versions: tuple[str, ...]
    register: str | None = None

    def __post_init__(self) -> None:
        if not self.versions:
            raise MessageError(ErrorCode.MALFORMED, "HELLO offers no version")
        for version in self.versions:
            _match(_VERSION, version, "version")
        if self.register is not None:
            _check_text(self.register, "register")

    def to_payload(self) -> bytes:
        """Encode as a payload."""
        fields = {"versions": ",".join(self.versions), "register": self.register}
        return encode_fields(MessageType.HELLO, fields)


@dataclass(frozen=True)
class Sale:
    """Register → daemon: take ``amount_cents`` by card; the id names this sale for ever."""

    correlation_id: str
    amount_cents: int
    terminal_id: str | None = None

    def __post_init__(self) -> None:
        _check_id(self.correlation_id)
        _check_amount(self.amount_cents)
        if self.terminal_id is not None:
            _match(_TERMINAL_ID, self.terminal_id, "terminal id")

    def to_payload(self) -> bytes:
        """Encode as a payload."""
        fields = {
            "id": self.correlation_id,
            "amount": str(self.amount_cents),
            "terminal": self.terminal_id,
        }
        return encode_fields(MessageType.SALE, fields)


@dataclass(frozen=True)
class _SaleRequest:
    """A register request that names one sale by its correlation id and nothing else."""

    TYPE: ClassVar[MessageType]
    correlation_id: str

    def __post_init__(self) -> None:
        _check_id(self.correlation_id)

    def to_payload(self) -> bytes:
        """Encode as a payload."""
        return encode_fields(self.TYPE, {"id": self.correlation_id})


@dataclass(frozen=True)
class Cancel(_SaleRequest):
    """Register → daemon: cancel the sale if it can still be canceled."""

    TYPE: ClassVar[MessageType] = MessageType.CANCEL


@dataclass(frozen=True)
class Status(_SaleRequest):
    """Register → daemon: what happened to this sale?"""

    TYPE: ClassVar[MessageType] = MessageType.STATUS


@dataclass(frozen=True)
class HandoverCheck(_SaleRequest):
    """Register → daemon: may the goods of this sale leave the store now?"""

    TYPE: ClassVar[MessageType] = MessageType.HANDOVER_CHECK


@dataclass(frozen=True)
class HandoverDone(_SaleRequest):
    """Register → daemon: the goods of this sale have left."""

    TYPE: ClassVar[MessageType] = MessageType.HANDOVER_DONE


@dataclass(frozen=True)
class Refund:
    """Register → daemon: refund ``amount_cents`` (None: all that is left) of a paid sale."""

    correlation_id: str
    sale_id: str
    amount_cents: int | None = None

    def __post_init__(self) -> None:
        _check_id(self.correlation_id)
        _check_id(self.sale_id)
        if self.amount_cents is not None:
            _check_amount(self.amount_cents)

    def to_payload(self) -> bytes:
        """Encode as a payload."""
        fields = {
            "id": self.correlation_id,
            "sale": self.sale_id,
            "amount": None if self.amount_cents is None else str(self.amount_cents),
        }
        return encode_fields(MessageType.REFUND, fields)


# --- daemon -> register ---------------------------------------------------------------------


@dataclass(frozen=True)
class HelloReply:
    """Daemon → register: the version chosen, this register's lane and display language."""

    version: str
    lane: int
    language: str

    def __post_init__(self) -> None:
        _match(_VERSION, self.version, "version")
        _match(_LANGUAGE, self.language, "language")
        if not 1 <= self.lane <= 999:
            raise MessageError(ErrorCode.MALFORMED, "lane must be 1..999")

    def to_payload(self) -> bytes:
        """Encode as a payload."""
        fields = {"version": self.version, "lane": str(self.lane), "lang": self.language}
        return encode_fields(MessageType.HELLO_REPLY, fields)


@dataclass(frozen=True)
class Display:
    """Daemon → register: show these lines (replacing the screen) with this severity."""

    lines: tuple[str, ...]
    severity: Severity
    language: str
    correlation_id: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= len(self.lines) <= MAX_DISPLAY_LINES:
            raise MessageError(ErrorCode.MALFORMED, f"DISPLAY has 1..{MAX_DISPLAY_LINES} lines")
        for line in self.lines:
            _check_text(line, "display line")
        _match(_LANGUAGE, self.language, "language")
        if self.correlation_id is not None:
            _check_id(self.correlation_id)

    def to_payload(self) -> bytes:
        """Encode as a payload."""
        fields: dict[str, str | None] = {
            "id": self.correlation_id,
            "sev": self.severity.value,
            "lang": self.language,
        }
        for number, line in enumerate(self.lines, start=1):
            fields[f"l{number}"] = line
        return encode_fields(MessageType.DISPLAY, fields)


@dataclass(frozen=True)
class Result:
    """Daemon → register: the one final outcome of a SALE."""

    correlation_id: str
    outcome: Outcome
    amount_cents: int | None = None
    payment_id: str | None = None
    card_last4: str | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        _check_id(self.correlation_id)
        if self.amount_cents is not None:
            _check_amount(self.amount_cents)
        if self.payment_id is not None:
            _match(_PAYMENT_ID, self.payment_id, "payment id")
        if self.card_last4 is not None and self.card_last4 != CARD_REDACTION:
            _match(_LAST4, self.card_last4, "card last 4 digits")
        if self.reason is not None:
            _check_text(self.reason, "reason")

    def to_payload(self) -> bytes:
        """Encode as a payload."""
        fields = {
            "id": self.correlation_id,
            "outcome": self.outcome.value,
            "amount": None if self.amount_cents is None else str(self.amount_cents),
            "payment": self.payment_id,
            "card": self.card_last4,
            "reason": self.reason,
        }
        return encode_fields(MessageType.RESULT, fields)


@dataclass(frozen=True)
class _SaleNotice:
    """A daemon message about one sale that carries only a reason."""

    TYPE: ClassVar[MessageType]
    correlation_id: str
    reason: str

    def __post_init__(self) -> None:
        _check_id(self.correlation_id)
        _check_text(self.reason, "reason")

    def to_payload(self) -> bytes:
        """Encode as a payload."""
        return encode_fields(self.TYPE, {"id": self.correlation_id, "reason": self.reason})


@dataclass(frozen=True)
class Hold(_SaleNotice):
    """Daemon → register: do NOT hand over the goods of this sale until RELEASE."""

    TYPE: ClassVar[MessageType] = MessageType.HOLD


@dataclass(frozen=True)
class Release(_SaleNotice):
    """Daemon → register: the hold on this sale is lifted; a RESULT follows."""

    TYPE: ClassVar[MessageType] = MessageType.RELEASE


@dataclass(frozen=True)
class Withdraw(_SaleNotice):
    """Daemon → register: the approved RESULT of this sale no longer stands: do NOT hand over.

    Sent while the register has not confirmed the handover; a HOLD or a new RESULT follows.
    """

    TYPE: ClassVar[MessageType] = MessageType.WITHDRAW


UNKNOWN_STATE = "unknown"


@dataclass(frozen=True)
class StatusReply:
    """Daemon → register: where a sale stands (``state`` is a SaleState value or unknown)."""

    correlation_id: str
    state: str
    handover: bool
    amount_cents: int | None = None
    payment_id: str | None = None
    card_last4: str | None = None

    def __post_init__(self) -> None:
        _check_id(self.correlation_id)
        _match(re.compile(r"[a-z_]{1,32}"), self.state, "state")
        if self.amount_cents is not None:
            _check_amount(self.amount_cents)
        if self.payment_id is not None:
            _match(_PAYMENT_ID, self.payment_id, "payment id")
        if self.card_last4 is not None and self.card_last4 != CARD_REDACTION:
            _match(_LAST4, self.card_last4, "card last 4 digits")

    def to_payload(self) -> bytes:
        """Encode as a payload."""
        fields = {
            "id": self.correlation_id,
            "state": self.state,
            "handover": _yes_no(self.handover),
            "amount": None if self.amount_cents is None else str(self.amount_cents),
            "payment": self.payment_id,
            "card": self.card_last4,
        }
        return encode_fields(MessageType.STATUS_REPLY, fields)


@dataclass(frozen=True)
class HandoverReply:
    """Daemon → register: yes or no to HANDOVER_CHECK, with the reason."""

    correlation_id: str
    allowed: bool
    reason: str

    def __post_init__(self) -> None:
        _check_id(self.correlation_id)
        _check_text(self.reason, "reason")

    def to_payload(self) -> bytes:
        """Encode as a payload."""
        fields = {
            "id": self.correlation_id,
            "allowed": _yes_no(self.allowed),
            "reason": self.reason,
        }
        return encode_fields(MessageType.HANDOVER_REPLY, fields)


@dataclass(frozen=True)
class Error:
    """Daemon → register: the request could not be acted on."""

    code: ErrorCode
    text: str
    correlation_id: str | None = None

    def __post_init__(self) -> None:
        _check_text(self.text, "text")
        if self.correlation_id is not None:
            _check_id(self.correlation_id)

    def to_payload(self) -> bytes:
        """Encode as a payload."""
        fields = {"id": self.correlation_id, "code": self.code.value, "text": self.text}
        return encode_fields(MessageType.ERROR, fields)


@dataclass(frozen=True)
class RefundResult:
    """Daemon → register: the one final outcome of a REFUND."""

    correlation_id: str
    sale_id: str
    outcome: RefundOutcome
    amount_cents: int | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        _check_id(self.correlation_id)
        _check_id(self.sale_id)
        if self.amount_cents is not None:
            _check_amount(self.amount_cents)
        if self.reason is not None:
            _check_text(self.reason, "reason")

    def to_payload(self) -> bytes:
        """Encode as a payload."""
        fields = {
            "id": self.correlation_id,
            "sale": self.sale_id,
            "outcome": self.outcome.value,
            "amount": None if self.amount_cents is None else str(self.amount_cents),
            "reason": self.reason,
        }
        return encode_fields(MessageType.REFUND_RESULT, fields)


RegisterMessage = Hello | Sale | Cancel | Status | HandoverCheck | HandoverDone | Refund
DaemonMessage = (
    HelloReply | Display | Result | Hold | Release | Withdraw | StatusReply | HandoverReply
    | Error | RefundResult
)
Message = RegisterMessage | DaemonMessage

# A register starts its link numbering again at 01 after every open and link-down, and its
# first frame then is HELLO, which may repeat the last number the daemon accepted: the
# daemon's link delivers a HELLO even as a repeat (answering a HELLO twice is harmless).
FRESH_START_TYPES = frozenset({MessageType.HELLO})

REGISTER_TYPES = frozenset(
    {
        MessageType.HELLO,
        MessageType.SALE,
        MessageType.CANCEL,
        MessageType.STATUS,
        MessageType.HANDOVER_CHECK,
        MessageType.HANDOVER_DONE,
        MessageType.REFUND,
    }
)


def _optional_amount(fields: dict[str, str]) -> int | None:
    return _parse_amount(fields["amount"]) if "amount" in fields else None


def _decode_known(message_type: MessageType, f: dict[str, str]) -> Message:
    if message_type is MessageType.HELLO:
        return Hello(tuple(_require(f, "versions").split(",")), f.get("register"))
    if message_type is MessageType.SALE:
        return Sale(_require(f, "id"), _parse_amount(_require(f, "amount")), f.get("terminal"))
    if message_type is MessageType.CANCEL:
        return Cancel(_require(f, "id"))
    if message_type is MessageType.STATUS:
        return Status(_require(f, "id"))
    if message_type is MessageType.HANDOVER_CHECK:
        return HandoverCheck(_require(f, "id"))
    if message_type is MessageType.HANDOVER_DONE:
        return HandoverDone(_require(f, "id"))
    if message_type is MessageType.REFUND:
        return Refund(_require(f, "id"), _require(f, "sale"), _optional_amount(f))
    if message_type is MessageType.REFUND_RESULT:
        return RefundResult(
            _require(f, "id"),
            _require(f, "sale"),
            _enum(RefundOutcome, _require(f, "outcome"), "refund outcome"),
            _optional_amount(f),
            f.get("reason"),
        )
    if message_type is MessageType.HELLO_REPLY:
        lane = _match(re.compile(r"[0-9]{1,3}"), _require(f, "lane"), "lane")
        return HelloReply(_require(f, "version"), int(lane), _require(f, "lang"))
    if message_type is MessageType.DISPLAY:
        lines = []
        for number in range(1, MAX_DISPLAY_LINES + 1):
            if f"l{number}" not in f:
                break
            lines.append(f[f"l{number}"])
        severity = _enum(Severity, _require(f, "sev"), "severity")
        return Display(tuple(lines), severity, _require(f, "lang"), f.get("id"))
    if message_type is MessageType.RESULT:
        return Result(
            _require(f, "id"),
            _enum(Outcome, _require(f, "outcome"), "outcome"),
            _optional_amount(f),
            f.get("payment"),
            f.get("card"),
            f.get("reason"),
        )
    if message_type is MessageType.HOLD:
        return Hold(_require(f, "id"), _require(f, "reason"))
    if message_type is MessageType.RELEASE:
        return Release(_require(f, "id"), _require(f, "reason"))
    if message_type is MessageType.WITHDRAW:
        return Withdraw(_require(f, "id"), _require(f, "reason"))
    if message_type is MessageType.STATUS_REPLY:
        return StatusReply(
            _require(f, "id"),
            _require(f, "state"),
            _parse_bool(_require(f, "handover"), "handover"),
            _optional_amount(f),
            f.get("payment"),
            f.get("card"),
        )
    if message_type is MessageType.HANDOVER_REPLY:
        allowed = _parse_bool(_require(f, "allowed"), "allowed")
        return HandoverReply(_require(f, "id"), allowed, _require(f, "reason"))
    code = _enum(ErrorCode, _require(f, "code"), "error code")
    return Error(code, _require(f, "text"), f.get("id"))


def _enum(kind: type[_E], value: str, what: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        raise MessageError(ErrorCode.MALFORMED, f"unknown {what} {value[:20]!r}") from None


def _readable_id(data: bytes) -> str | None:
    """The correlation id of a payload that cannot be decoded, so the ERROR can name it."""
    try:
        candidate = decode_fields(data).get("id")
    except MessageError:
        return None
    return candidate if candidate is not None and _ID.fullmatch(candidate) else None


def decode_message(payload: bytes) -> Message:
    """Decode one payload; raise MessageError with the code to answer a bad one with."""
    if not payload:
        raise MessageError(ErrorCode.MALFORMED, "empty payload")
    try:
        message_type = MessageType(payload[0])
    except ValueError:
        raise MessageError(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown message type {payload[0]:#04x}",
            _readable_id(payload[1:]),
        ) from None
    fields = decode_fields(payload[1:])
    try:
        return _decode_known(message_type, fields)
    except MessageError as exc:
        if exc.correlation_id is None and "id" in fields and _ID.fullmatch(fields["id"]):
            exc.correlation_id = fields["id"]
        raise


# --- redaction for the byte tap -------------------------------------------------------------

_CARD_BEARING = frozenset({MessageType.RESULT, MessageType.STATUS_REPLY})


def _redact_frame(wire: bytes) -> bytes:
    try:
        frame = parse_frame(wire)
    except FrameError:
        return wire
    if not isinstance(frame, DataFrame) or frame.payload[0] not in _CARD_BEARING:
        return wire
    try:
        fields = decode_fields(frame.payload[1:])
    except MessageError:
        return wire
    if "card" not in fields:
        return wire
    fields["card"] = CARD_REDACTION
    payload = encode_fields(MessageType(frame.payload[0]), dict(fields))
    return DataFrame(frame.seq, payload).to_bytes()


def redact_card_data(chunk: bytes) -> bytes:
    """Replace the card digits in every complete RESULT/STATUS_REPLY frame of a chunk."""
    out = bytearray()
    position = 0
    while True:
        start = chunk.find(STX, position)
        end = chunk.find(ETX, start + 1) if start != -1 else -1
        if start == -1 or end == -1:
            out += chunk[position:]
            return bytes(out)
        out += chunk[position:start]
        out += _redact_frame(chunk[start : end + 1])
        position = end + 1
