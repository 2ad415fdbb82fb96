"""The chaos checker catches each broken money-safety rule in doctored evidence; clean passes."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from pointd.core.states import SaleState
from pointd.rig.chaos.invariants import (
    RULES,
    Evidence,
    JournalSale,
    OverrideAudit,
    RegisterView,
    RelayEventView,
    check,
    count_by_rule,
)

STORE = "chaos"
TERMINAL = "PAX_A910__CHAOS0001"
ELSEWHERE = "PAX_A910__NOTOURS01"


def reference(sale_id: str, attempt: int = 1) -> str:
    return f"pd1_{STORE}_1_{sale_id}_{attempt}"


def clean_evidence() -> Evidence:
    """One approved sale handed over, one declined, one held, one released by a supervisor
    after checking the payment, one refused; every notification delivered."""
    record: dict[str, Any] = {
        "intents": [
            {"id": "i-1", "external_reference": reference("SALEA")},
            {"id": "i-2", "external_reference": reference("SALEB")},
            {"id": "i-3", "external_reference": reference("SALEC")},
            {"id": "i-4", "external_reference": reference("SALED")},
            {"id": "i-x", "external_reference": "another-pos-42"},
        ],
        "payments": [
            {"id": 501, "amount": 2000, "status": "approved", "device_id": TERMINAL,
             "external_reference": reference("SALEA")},
            {"id": 502, "amount": 2001, "status": "rejected", "device_id": TERMINAL,
             "external_reference": reference("SALEB")},
            {"id": 503, "amount": 2002, "status": "in_process", "device_id": TERMINAL,
             "external_reference": reference("SALEC")},
            {"id": 504, "amount": 2004, "status": "approved", "device_id": TERMINAL,
             "external_reference": reference("SALED")},
            {"id": 505, "amount": 990, "status": "approved", "device_id": ELSEWHERE,
             "external_reference": "a QR payment at another shop"},
        ],
        "webhooks": [
            {"data_id": "i-1", "state": "FINISHED", "status_code": None, "attempt": 1},
            {"data_id": "i-1", "state": "FINISHED", "status_code": 200, "attempt": 2},
            {"data_id": "i-2", "state": "FINISHED", "status_code": 200, "attempt": 1},
            {"data_id": "i-3", "state": "CONFIRMATION_REQUIRED", "status_code": 503,
             "attempt": 1},
        ],
    }
    sales = [
        JournalSale("SALEA", 1, "L1S0", SaleState.HANDED_OVER, 2000, "501", TERMINAL),
        JournalSale("SALEB", 1, "L1S1", SaleState.DECLINED, 2001, "502", TERMINAL),
        JournalSale("SALEC", 1, "L1S2", SaleState.ESCALATED, 2002, "503", TERMINAL),
        JournalSale("SALED", 1, "L1S4", SaleState.OVERRIDDEN, 2004, "504", TERMINAL),
    ]
    relay = [
        RelayEventView(11, "intent", "i-1", "FINISHED"),
        RelayEventView(12, "canary", None, None),
        RelayEventView(13, "intent", "i-2", "FINISHED"),
    ]
    register = [
        RegisterView("L1S0", 1, 2000, "approved", True),
        RegisterView("L1S1", 1, 2001, "declined"),
        RegisterView("L1S2", 1, 2002, None),
        RegisterView("L1S3", 1, 2003, "refused"),
        RegisterView("L1S4", 1, 2004, "approved", True),
    ]
    overrides = [OverrideAudit("SALED", "release", "requested"),
                 OverrideAudit("SALED", "release", "done")]
    return Evidence(STORE, record, sales, relay, frozenset({11, 13}), register,
                    frozenset({TERMINAL}), overrides)


def rules_broken(evidence: Evidence) -> set[str]:
    return {v.rule for v in check(evidence).violations}


def with_record(evidence: Evidence, change: Any) -> Evidence:
    record = copy.deepcopy(dict(evidence.sim_record))
    change(record)
    return replace(evidence, sim_record=record)


def with_sale(evidence: Evidence, sale_id: str, **fields: Any) -> Evidence:
    sales = [replace(s, **fields) if s.sale_id == sale_id else s
             for s in evidence.journal_sales]
    return replace(evidence, journal_sales=sales)


def test_clean_evidence_passes_and_counts_what_it_checked() -> None:
    checked = check(clean_evidence())
    assert checked.violations == []
    assert checked.passed
    assert checked.cases["handover_unverified"] == 1
    assert checked.cases["paid_not_honoured"] == 3  # every approved payment, ours or not
    assert checked.cases["charge_unattributed"] == 2  # the approved ones on our terminal
    assert checked.cases["notification_lost_at_relay"] == 2
    assert checked.cases["notification_not_journaled"] == 2  # the canary is no notification
    assert checked.cases["register_disagrees"] == 5
    assert checked.cases["override_unproven"] == 4
    assert count_by_rule(checked.violations) == dict.fromkeys(RULES, 0)


def test_a_rule_that_looked_at_nothing_fails_the_run() -> None:
    evidence = replace(clean_evidence(), register=[])
    checked = check(evidence)
    assert checked.violations == []
    assert not checked.passed
    assert set(checked.unexercised) == {"charged_other_amount", "refused_but_created",
                                        "result_withheld", "register_disagrees"}


def test_a_missing_record_section_is_caught_not_read_as_empty() -> None:
    for section in ("intents", "payments", "webhooks"):
        def drop(record: dict[str, Any], section: str = section) -> None:
            del record[section]

        assert "evidence_incomplete" in rules_broken(with_record(clean_evidence(), drop))


def test_a_record_entry_missing_a_field_is_caught_not_defaulted() -> None:
    def strip(record: dict[str, Any]) -> None:
        del record["payments"][0]["status"]

    assert "evidence_incomplete" in rules_broken(with_record(clean_evidence(), strip))


def test_a_run_that_names_no_terminal_of_its_own_is_incomplete() -> None:
    evidence = replace(clean_evidence(), terminals=frozenset())
    assert rules_broken(evidence) == {"evidence_incomplete"}


def test_journaling_and_charging_more_than_the_register_asked_is_caught() -> None:
    def overcharge(record: dict[str, Any]) -> None:
        record["payments"][0]["amount"] = 2500

    evidence = with_sale(with_record(clean_evidence(), overcharge), "SALEA", amount_cents=2500)
    assert rules_broken(evidence) == {"charged_other_amount"}


def test_a_charge_for_another_amount_than_asked_is_caught_even_when_declined() -> None:
    def overcharge(record: dict[str, Any]) -> None:
        record["payments"][1]["amount"] = 2600

    assert rules_broken(with_record(clean_evidence(), overcharge)) == {"charged_other_amount"}


def test_a_second_charge_with_a_malformed_reference_on_our_terminal_is_caught() -> None:
    def stray(record: dict[str, Any]) -> None:
        record["payments"].append({"id": 598, "amount": 2000, "status": "approved",
                                   "device_id": TERMINAL, "external_reference": "pd1_chaos_1_"})

    assert rules_broken(with_record(clean_evidence(), stray)) == {"charge_unattributed"}


def test_a_charge_on_our_terminal_naming_another_store_or_an_unknown_sale_is_caught() -> None:
    for ref in ("pd1_other_1_SALEA_1", reference("NOSUCH"), None):
        def stray(record: dict[str, Any], ref: str | None = ref) -> None:
            record["payments"].append({"id": 597, "amount": 2000, "status": "approved",
                                       "device_id": TERMINAL, "external_reference": ref})

        assert "charge_unattributed" in rules_broken(with_record(clean_evidence(), stray)), ref


def test_charges_on_terminals_that_are_not_ours_are_not_ours_to_explain() -> None:
    evidence = clean_evidence()
    assert any(p["device_id"] == ELSEWHERE for p in evidence.sim_record["payments"])
    assert rules_broken(evidence) == set()


def test_an_override_missing_from_the_audit_trail_is_caught() -> None:
    evidence = replace(clean_evidence(), overrides=[])
    assert rules_broken(evidence) == {"override_unproven"}


def test_an_override_that_only_was_requested_or_failed_is_caught() -> None:
    for outcome in ("requested", "failed", "refused: not_overridable"):
        evidence = replace(clean_evidence(), overrides=[OverrideAudit("SALED", "release",
                                                                      outcome)])
        assert rules_broken(evidence) == {"override_unproven"}, outcome


def test_an_override_released_without_a_payment_at_the_cloud_is_caught() -> None:
    def unpaid(record: dict[str, Any]) -> None:
        record["payments"][3]["status"] = "rejected"

    broken = rules_broken(with_record(clean_evidence(), unpaid))
    assert broken == {"override_unproven"}


def test_an_audited_void_cannot_stand_behind_a_release() -> None:
    evidence = replace(clean_evidence(), overrides=[OverrideAudit("SALED", "void", "done")])
    assert rules_broken(evidence) == {"override_unproven"}


def test_a_sale_told_refused_that_reached_the_cloud_is_caught() -> None:
    evidence = clean_evidence()
    refused = JournalSale("SALEE", 1, "L1S3", SaleState.FAILED, 2003, None, TERMINAL,
                          refusal="terminal_busy")

    def created(record: dict[str, Any]) -> None:
        record["intents"].append({"id": "i-5", "device_id": TERMINAL,
                                  "external_reference": reference("SALEE")})

    doctored = with_record(replace(evidence, journal_sales=[*evidence.journal_sales, refused]),
                           created)
    assert rules_broken(doctored) == {"refused_but_created"}


def test_a_result_the_register_only_learned_by_asking_status_is_caught() -> None:
    evidence = clean_evidence()
    views = [replace(v, result_withheld=True) if v.correlation_id == "L1S1" else v
             for v in evidence.register]
    assert rules_broken(replace(evidence, register=views)) == {"result_withheld"}


def test_handover_on_a_rejected_payment_is_caught() -> None:
    evidence = with_sale(clean_evidence(), "SALEB", state=SaleState.HANDED_OVER)
    assert "handover_unverified" in rules_broken(evidence)


def test_handover_on_a_refunded_payment_is_caught() -> None:
    def refund(record: dict[str, Any]) -> None:
        record["payments"][0]["status"] = "refunded"

    assert "handover_unverified" in rules_broken(with_record(clean_evidence(), refund))


def test_handover_with_a_wrong_amount_is_caught() -> None:
    evidence = with_sale(clean_evidence(), "SALEA", amount_cents=2500)
    assert rules_broken(evidence) == {"handover_unverified", "charged_other_amount"}


def test_handover_on_another_sales_payment_is_caught() -> None:
    def move(record: dict[str, Any]) -> None:
        record["payments"][0]["external_reference"] = reference("OTHER")
        record["intents"].append({"id": "i-9", "external_reference": reference("OTHER")})

    broken = rules_broken(with_record(clean_evidence(), move))
    assert "handover_unverified" in broken


def test_approved_but_not_yet_handed_over_needs_a_payment_too() -> None:
    evidence = with_sale(clean_evidence(), "SALEA", state=SaleState.APPROVED, payment_id=None)
    assert "handover_unverified" in rules_broken(evidence)


def test_handover_without_any_payment_is_caught() -> None:
    def drop(record: dict[str, Any]) -> None:
        del record["payments"][0]

    assert "handover_unverified" in rules_broken(with_record(clean_evidence(), drop))


def test_a_second_approved_payment_for_one_sale_is_caught() -> None:
    def charge_again(record: dict[str, Any]) -> None:
        record["payments"].append({"id": 599, "amount": 2000, "status": "approved",
                                   "device_id": TERMINAL,
                                   "external_reference": reference("SALEA", 2)})

    assert "charged_twice" in rules_broken(with_record(clean_evidence(), charge_again))


def test_an_approved_payment_on_a_declined_sale_is_caught() -> None:
    def approve(record: dict[str, Any]) -> None:
        record["payments"][1]["status"] = "approved"

    assert rules_broken(with_record(clean_evidence(), approve)) == {"paid_not_honoured"}


def test_an_intent_the_journal_never_knew_is_caught() -> None:
    def orphan(record: dict[str, Any]) -> None:
        record["intents"].append({"id": "i-7", "external_reference": reference("GHOST")})

    assert rules_broken(with_record(clean_evidence(), orphan)) == {"unjournaled_intent"}


def test_other_stores_and_foreign_intents_are_not_ours_to_judge() -> None:
    def foreign(record: dict[str, Any]) -> None:
        record["intents"].append({"id": "i-8", "external_reference": "pd1_other_1_X_1"})

    assert rules_broken(with_record(clean_evidence(), foreign)) == set()


def test_a_sale_left_mid_way_is_caught() -> None:
    for state in (SaleState.CREATING, SaleState.CREATE_UNKNOWN, SaleState.VERIFYING,
                  SaleState.OPEN, SaleState.CANCELING):
        evidence = with_sale(clean_evidence(), "SALEC", state=state)
        assert "unfinished" in rules_broken(evidence), state


def test_approved_but_never_handed_over_counts_as_unfinished() -> None:
    evidence = with_sale(clean_evidence(), "SALEA", state=SaleState.APPROVED)
    assert rules_broken(evidence) == {"unfinished"}


def test_visibly_held_sales_may_end_a_run() -> None:
    for state in (SaleState.HELD, SaleState.ESCALATED, SaleState.BLOCKED):
        assert rules_broken(with_sale(clean_evidence(), "SALEC", state=state)) == set()


def test_a_register_sale_that_vanished_is_caught() -> None:
    evidence = clean_evidence()
    lost = replace(evidence, register=[*evidence.register, RegisterView("L1S9", 1, 2009, None)])
    assert rules_broken(lost) == {"unfinished"}


def test_a_notification_answered_2xx_but_not_stored_is_caught() -> None:
    evidence = clean_evidence()
    lost = replace(evidence, relay_events=[e for e in evidence.relay_events if e.event_id != 13])
    assert rules_broken(lost) == {"notification_lost_at_relay"}


def test_a_notification_never_answered_2xx_need_not_be_stored() -> None:
    evidence = clean_evidence()
    assert ("i-3", "CONFIRMATION_REQUIRED") not in {
        (e.data_id, e.state) for e in evidence.relay_events
    }
    assert rules_broken(evidence) == set()


def test_a_stored_notification_the_daemon_never_journaled_is_caught() -> None:
    evidence = replace(clean_evidence(), journaled_relay_ids=frozenset({11}))
    assert rules_broken(evidence) == {"notification_not_journaled"}


def test_a_register_told_approved_for_a_declined_sale_is_caught() -> None:
    evidence = clean_evidence()
    views = [replace(v, outcome="approved") if v.correlation_id == "L1S1" else v
             for v in evidence.register]
    assert rules_broken(replace(evidence, register=views)) == {"register_disagrees"}


def test_a_handover_allowed_on_a_held_sale_is_caught() -> None:
    evidence = clean_evidence()
    views = [replace(v, handover_allowed=True) if v.correlation_id == "L1S2" else v
             for v in evidence.register]
    assert rules_broken(replace(evidence, register=views)) == {"register_disagrees"}


def test_a_register_told_a_different_final_outcome_is_caught() -> None:
    evidence = clean_evidence()
    views = [replace(v, outcome="canceled") if v.correlation_id == "L1S1" else v
             for v in evidence.register]
    assert rules_broken(replace(evidence, register=views)) == {"register_disagrees"}


def test_a_register_told_approved_for_an_unknown_sale_is_caught() -> None:
    evidence = clean_evidence()
    views = [*evidence.register, RegisterView("L1S8", 1, 2008, "approved", True)]
    assert rules_broken(replace(evidence, register=views)) == {"register_disagrees"}
