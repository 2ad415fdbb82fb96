"""A strict checker for the udev rules pointd ships, for systems whose udevadm cannot verify.

Theory of operation: ``udevadm verify`` exists only from systemd 254, and Debian 12 ships
252, whose ``udevadm test`` misses a missing comma and a misspelled ENV name and applies
side effects. This checker reads a rules file the way udev does (comments, backslash line
continuations, comma-separated ``KEY[{attr}] OP "value"`` tokens) and reports:

- syntax: unquoted or unterminated values, single quotes, missing or trailing commas;
- unknown keys, a key missing its ``{attribute}`` or carrying one it does not take;
- operators a key does not accept: ``MODE=="0660"`` is a match that never assigns;
- ENV names outside an allow-list, catching typos like ``ID_MM_DEVICE_INORE`` that udev
  accepts silently;
- policy: a MODE that is not four octal digits or lets everyone in, a GOTO without its
  LABEL, a LABEL nothing jumps to, a rule that only matches and does nothing.

It is deliberately stricter than udev: it accepts the subset of the language pointd uses.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

MATCH_OPERATORS = frozenset({"==", "!="})
ASSIGN_OPERATORS = frozenset({"=", "+=", "-=", ":="})
_OPERATORS = ("==", "!=", "+=", "-=", ":=", "=")  # longest first so "==" is not read as "="

_BOTH = MATCH_OPERATORS | ASSIGN_OPERATORS
_SET = frozenset({"=", ":="})


@dataclass(frozen=True, slots=True)
class _KeySpec:
    operators: frozenset[str]
    attribute: str  # "required", "optional" or "none"


_KEYS: dict[str, _KeySpec] = {
    "ACTION": _KeySpec(MATCH_OPERATORS, "none"),
    "DEVPATH": _KeySpec(MATCH_OPERATORS, "none"),
    "KERNEL": _KeySpec(MATCH_OPERATORS, "none"),
    "KERNELS": _KeySpec(MATCH_OPERATORS, "none"),
    "SUBSYSTEM": _KeySpec(MATCH_OPERATORS, "none"),
    "SUBSYSTEMS": _KeySpec(MATCH_OPERATORS, "none"),
    "DRIVER": _KeySpec(MATCH_OPERATORS, "none"),
    "DRIVERS": _KeySpec(MATCH_OPERATORS, "none"),
    "ATTRS": _KeySpec(MATCH_OPERATORS, "required"),
    "TAGS": _KeySpec(MATCH_OPERATORS, "none"),
    "TEST": _KeySpec(MATCH_OPERATORS, "optional"),
    "PROGRAM": _KeySpec(MATCH_OPERATORS, "none"),
    "RESULT": _KeySpec(MATCH_OPERATORS, "none"),
    "CONST": _KeySpec(MATCH_OPERATORS, "required"),
    "NAME": _KeySpec(MATCH_OPERATORS | _SET | {"+="}, "none"),
    "SYMLINK": _KeySpec(_BOTH, "none"),
    "TAG": _KeySpec(_BOTH, "none"),
    "ATTR": _KeySpec(MATCH_OPERATORS | _SET, "required"),
    "SYSCTL": _KeySpec(MATCH_OPERATORS | _SET, "required"),
    "ENV": _KeySpec(MATCH_OPERATORS | _SET | {"+="}, "required"),
    "OWNER": _KeySpec(_SET, "none"),
    "GROUP": _KeySpec(_SET, "none"),
    "MODE": _KeySpec(_SET, "none"),
    "SECLABEL": _KeySpec(_SET | {"+="}, "required"),
    "RUN": _KeySpec(_SET | {"+="}, "optional"),
    "IMPORT": _KeySpec(_SET, "required"),
    "OPTIONS": _KeySpec(_SET | {"+="}, "none"),
    "LABEL": _KeySpec(frozenset({"="}), "none"),
    "GOTO": _KeySpec(frozenset({"="}), "none"),
}

# ENV names pointd's rules may read or set. A name outside this list is far more likely a
# typo than a need: udev would create the misspelt variable and nobody would read it.
KNOWN_ENV_NAMES = frozenset(
    {
        "DEVTYPE",
        "ID_MM_DEVICE_IGNORE",
        "ID_MM_PORT_IGNORE",
        "MTP_NO_PROBE",
        "ID_USB_INTERFACE_NUM",
        "ID_SERIAL_SHORT",
        "ID_VENDOR_ID",
        "ID_MODEL_ID",
    }
)

# Keys that make a rule do something; a rule with none of them assigned is dead weight.
_EFFECT_KEYS = frozenset(key for key, spec in _KEYS.items() if spec.operators & ASSIGN_OPERATORS)

_KEY_RE = re.compile(r"([A-Za-z_]+)(?:\{([^}]*)\})?")
_MODE_RE = re.compile(r"0[0-7]{3}")


@dataclass(frozen=True, slots=True)
class RuleToken:
    """One ``KEY{attribute} OP "value"`` of a rule."""

    key: str
    attribute: str | None
    operator: str
    value: str

    @property
    def is_assignment(self) -> bool:
        """Whether this token sets something rather than matching."""
        return self.operator in ASSIGN_OPERATORS


@dataclass(frozen=True, slots=True)
class Rule:
    """One logical rule line (continuations joined) and its tokens."""

    line: int
    tokens: tuple[RuleToken, ...]


@dataclass(frozen=True, slots=True)
class RuleProblem:
    """A mistake found in a rules file, with the 1-based line where the rule starts."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(slots=True)
class RulesReport:
    """The rules read from a file and everything wrong with them."""

    rules: list[Rule] = field(default_factory=list)
    problems: list[RuleProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the file passed every check."""
        return not self.problems


def _logical_lines(text: str) -> list[tuple[int, str]]:
    lines: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
            if raw.lstrip().startswith("#") or not raw.strip():
                continue
        if raw.endswith("\\"):
            pending.append(raw[:-1])
            continue
        pending.append(raw)
        lines.append((start, " ".join(pending)))
        pending = []
    if pending:
        lines.append((start, " ".join(pending)))
    return lines


def _tokenize(line: int, text: str, problems: list[RuleProblem]) -> list[RuleToken] | None:
    tokens: list[RuleToken] = []
    position = 0
    length = len(text)

    def skip_blanks(at: int) -> int:
        while at < length and text[at] in " \t":
            at += 1
        return at

    position = skip_blanks(position)
    while position < length:
        key_match = _KEY_RE.match(text, position)
        if key_match is None:
            problems.append(RuleProblem(line, f"expected a key at {text[position:][:20]!r}"))
            return None
        key, attribute = key_match.group(1), key_match.group(2)
        position = skip_blanks(key_match.end())
        operator = next((op for op in _OPERATORS if text.startswith(op, position)), None)
        if operator is None:
            problems.append(RuleProblem(line, f"{key}: missing or invalid operator"))
            return None
        position = skip_blanks(position + len(operator))
        if position >= length or text[position] != '"':
            if position < length and text[position] == "'":
                problems.append(RuleProblem(line, f"{key}: values take double quotes, not '"))
            else:
                problems.append(RuleProblem(line, f"{key}: value must be in double quotes"))
            return None
        end = text.find('"', position + 1)
        if end < 0:
            problems.append(RuleProblem(line, f"{key}: unterminated quoted value"))
            return None
        tokens.append(RuleToken(key, attribute, operator, text[position + 1 : end]))
        position = skip_blanks(end + 1)
        if position >= length:
            break
        if text[position] != ",":
            problems.append(
                RuleProblem(
                    line,
                    f"missing comma after {key}{_attr(attribute)} before {text[position:][:20]!r}",
                )
            )
            return None
        position = skip_blanks(position + 1)
        if position >= length:
            problems.append(RuleProblem(line, "trailing comma at the end of the rule"))
            return None
    return tokens


def _attr(attribute: str | None) -> str:
    return f"{{{attribute}}}" if attribute is not None else ""


def _check_token(line: int, token: RuleToken, problems: list[RuleProblem]) -> None:
    spec = _KEYS.get(token.key)
    name = f"{token.key}{_attr(token.attribute)}"
    if spec is None:
        suggestion = difflib.get_close_matches(token.key, _KEYS, n=1)
        hint = f" (did you mean {suggestion[0]}?)" if suggestion else ""
        problems.append(RuleProblem(line, f"unknown key {token.key!r}{hint}"))
        return
    if spec.attribute == "required" and not token.attribute:
        problems.append(RuleProblem(line, f"{token.key} needs an {{attribute}}"))
    if spec.attribute == "none" and token.attribute is not None:
        problems.append(RuleProblem(line, f"{token.key} takes no {{attribute}}"))
    if token.operator not in spec.operators:
        if token.operator in MATCH_OPERATORS:
            why = "is a comparison here, not an assignment: use = to set it"
        else:
            why = "can only be compared (== or !=), not assigned"
        problems.append(RuleProblem(line, f"{name}{token.operator}: {token.key} {why}"))
    if token.key == "ENV" and token.attribute and token.attribute not in KNOWN_ENV_NAMES:
        suggestion = difflib.get_close_matches(token.attribute, KNOWN_ENV_NAMES, n=1)
        hint = f" (did you mean {suggestion[0]}?)" if suggestion else ""
        problems.append(
            RuleProblem(line, f"ENV name {token.attribute!r} is not in the allow-list{hint}")
        )
    if token.key == "MODE" and token.is_assignment:
        if not _MODE_RE.fullmatch(token.value):
            problems.append(RuleProblem(line, f"MODE {token.value!r} is not 4 octal digits"))
        elif int(token.value, 8) & 0o007:
            problems.append(
                RuleProblem(
                    line, f"MODE {token.value!r} opens the device to every user; use 0660 and GROUP"
                )
            )


def check_rules(text: str) -> RulesReport:
    """Parse a rules file and report every mistake found (see the module docstring)."""
    report = RulesReport()
    for line, logical in _logical_lines(text):
        tokens = _tokenize(line, logical, report.problems)
        if tokens is None:
            continue
        for token in tokens:
            _check_token(line, token, report.problems)
        if tokens and not any(
            token.key in _EFFECT_KEYS and token.is_assignment for token in tokens
        ):
            report.problems.append(RuleProblem(line, "rule only matches and changes nothing"))
        report.rules.append(Rule(line, tuple(tokens)))
    _check_labels(report)
    return report


def _check_labels(report: RulesReport) -> None:
    labels: dict[str, int] = {}
    gotos: list[tuple[int, str]] = []
    for rule in report.rules:
        for token in rule.tokens:
            if token.key == "LABEL":
                labels.setdefault(token.value, rule.line)
            elif token.key == "GOTO":
                gotos.append((rule.line, token.value))
    for line, target in gotos:
        if target not in labels:
            report.problems.append(RuleProblem(line, f"GOTO {target!r} has no LABEL"))
    jumped_to = {target for _line, target in gotos}
    for label, line in labels.items():
        if label not in jumped_to:
            report.problems.append(RuleProblem(line, f"LABEL {label!r} is never jumped to"))
