"""Scripted register runs: a list of sales with expected outcomes, from TOML or JSON.

TOML::

    [[sale]]
    amount = 1500          # cents
    expect = "approved"    # approved | declined | canceled | error | abandoned | refused
    id = "demo-1"          # optional correlation id
    terminal = "PAX_A910__SMARTPOS1234567890"   # optional
    handover = "yes"       # optional: "no" leaves the goods and sends no HANDOVER_DONE

JSON: ``{"sale": [{"amount": 1500, "expect": "approved"}, ...]}`` or just the list.

After an approved sale the emulated register hands the goods over and sends HANDOVER_DONE
(``RegisterEmulator.hand_over``), as docs/register-protocol.md §7 asks, so the next sale
finds the lane free; with ``handover = "no"`` it behaves like a register that never
confirms, and the daemon keeps the lane for ``timers.handover_confirm_after``.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pointd.register.messages import MAX_AMOUNT_CENTS, MessageError, Outcome, Sale
from pointd.sim.register.emulator import EmulatorError, RegisterEmulator, SaleOutcome

_KEYS = frozenset({"amount", "expect", "id", "terminal", "handover"})


class ScriptError(ValueError):
    """The script file cannot be used; the message names the entry and key."""


@dataclass(frozen=True)
class ScriptedSale:
    """One sale to run and the outcome it must end with."""

    amount_cents: int
    expect: Outcome
    correlation_id: str | None = None
    terminal_id: str | None = None
    handover: bool = True


@dataclass(frozen=True)
class ScriptResult:
    """What one scripted sale did."""

    sale: ScriptedSale
    outcome: SaleOutcome | None
    problem: str | None = None
    handed_over: bool = False

    @property
    def matched(self) -> bool:
        """True when the sale ended with the expected outcome."""
        return (self.problem is None and self.outcome is not None
                and self.outcome.outcome is self.sale.expect)


def _entry(number: int, raw: object) -> ScriptedSale:
    where = f"sale #{number}"
    if not isinstance(raw, dict):
        raise ScriptError(f"{where} must be a table/object")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ScriptError(f"{where}: unknown key {unknown[0]!r}")
    amount = raw.get("amount")
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise ScriptError(f"{where}: amount must be an integer number of cents")
    if not 1 <= amount <= MAX_AMOUNT_CENTS:
        raise ScriptError(f"{where}: amount must be 1..{MAX_AMOUNT_CENTS} cents")
    try:
        expect = Outcome(str(raw.get("expect")))
    except ValueError:
        choices = ", ".join(o.value for o in Outcome)
        raise ScriptError(f"{where}: expect must be one of {choices}") from None
    correlation_id, terminal_id = raw.get("id"), raw.get("terminal")
    for key, value in (("id", correlation_id), ("terminal", terminal_id)):
        if value is not None and not isinstance(value, str):
            raise ScriptError(f"{where}: {key} must be a string")
    handover = raw.get("handover", "yes")
    if handover not in ("yes", "no"):
        raise ScriptError(f"{where}: handover must be \"yes\" or \"no\"")
    try:
        Sale(correlation_id or "x", amount, terminal_id)
    except MessageError as exc:
        raise ScriptError(f"{where}: {exc.text}") from None
    return ScriptedSale(amount, expect, correlation_id, terminal_id, handover == "yes")


def load_script(path: Path) -> list[ScriptedSale]:
    """Read a TOML or JSON script; raise ScriptError on anything unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScriptError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data: object = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ScriptError(f"{path}: {exc}") from None
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"sale"})
        if unknown:
            raise ScriptError(f"{path}: unknown key {unknown[0]!r}")
        data = data.get("sale", [])
    if not isinstance(data, list) or not data:
        raise ScriptError(f"{path}: no sales")
    return [_entry(number, raw) for number, raw in enumerate(data, start=1)]


async def run_script(
    emulator: RegisterEmulator, sales: list[ScriptedSale], sale_within: float
) -> list[ScriptResult]:
    """Run each sale in turn; a sale that fails to finish is recorded, not raised."""
    results = []
    for sale in sales:
        try:
            outcome = await emulator.sale(
                sale.amount_cents, sale.correlation_id, sale.terminal_id, within=sale_within
            )
        except EmulatorError as exc:
            results.append(ScriptResult(sale, None, str(exc)))
            continue
        handed_over = False
        if sale.handover and emulator.may_hand_over(outcome):
            try:
                handed_over = await emulator.hand_over(outcome)
            except EmulatorError as exc:
                results.append(ScriptResult(sale, outcome, f"HANDOVER_DONE not sent: {exc}"))
                continue
        results.append(ScriptResult(sale, outcome, handed_over=handed_over))
    return results
