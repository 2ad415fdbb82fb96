"""The end-of-day reconciliation export against a real journal and a fake Mercado Pago."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import stat
from pathlib import Path

import pytest

from pointd.app.jobs import DaemonJobs
from pointd.app.reconciliation_export import (
    CSV_COLUMNS,
    EXPORT_FAILURES_BEFORE_GIVING_UP,
    ExportError,
    ReconciliationExport,
)
from pointd.core.events import (
    CancelRequested,
    Event,
    HandoverConfirmed,
    IntentCreated,
    IntentObserved,
    ObservationSource,
    OverrideDecision,
    OverrideGiven,
    PaymentVerified,
    SaleRequested,
)
from pointd.core.states import Refusal
from tests.app_jobs.conftest import (
    COLLECTOR,
    DAY,
    POLICY,
    STORE,
    TZ,
    FakeEngine,
    Store,
    local,
    payment,
    ref,
)
from tests.support.clock import ManualClock
from tests.support.cloud import FakeCloud

POLL = ObservationSource.POLL


def paid_sale(store: Store, at: float, sale: str, lane: int, *, amount: int = 1500,
              confirmation: bool = False, handover: bool = True) -> None:
    """A sale paid on its terminal and verified approved (held first when asked)."""
    intent, pay = f"I-{sale}", f"P-{sale}"
    state = "CONFIRMATION_REQUIRED" if confirmation else "FINISHED"
    events: list[Event] = [
        SaleRequested(sale, lane, f"c-{sale}", amount, f"TERM{lane}", None),
        IntentCreated(sale, 1, intent),
        IntentObserved(intent, state, pay, None, POLL, ref(sale, lane)),
        PaymentVerified(pay, "approved", None, amount, "BRL", COLLECTOR, ref(sale, lane)),
    ]
    if handover:
        events.append(HandoverConfirmed(sale))
    store.feed(at, events)


def exporter(store: Store, cloud: FakeCloud, tmp_path: Path,
             now: float | None = None) -> ReconciliationExport:
    return ReconciliationExport(
        journal=store.journal, cloud=cloud, policy=POLICY, store_id=STORE,
        directory=tmp_path / "exports", timezone=TZ,
        clock=ManualClock(now if now is not None else local(DAY, 23, 55)),
    )


def rows_by_payment(csv_path: Path) -> dict[str, dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    return {row["payment_id"] or row["sale_id"]: row for row in rows}


async def test_a_paid_and_handed_over_sale_matches(store: Store, tmp_path: Path) -> None:
    paid_sale(store, local(DAY, 10), "S1", 1)
    cloud = FakeCloud(
        by_reference={ref("S1", 1): [payment("P-S1", "approved", 1500, ref("S1", 1))]}
    )

    csv_path, json_path = await exporter(store, cloud, tmp_path).export_day(DAY)

    row = rows_by_payment(csv_path)["P-S1"]
    assert (row["sale_id"], row["lane"], row["correlation_id"]) == ("S1", "1", "c-S1")
    assert (row["amount_cents"], row["state"], row["intent_id"]) == ("1500", "handed_over",
                                                                      "I-S1")
    assert (row["held"], row["matched"], row["mp_status"]) == ("no", "ok", "approved")
    document = json.loads(json_path.read_text())
    assert document["format"] == "pointd-reconciliation/1"
    assert document["complete"] is True
    assert document["counts"]["ok"] == 1
    assert document["sales"][0]["payments"][0]["journal_status"] == "approved"


async def test_a_sale_held_on_the_way_is_marked_held(store: Store, tmp_path: Path) -> None:
    paid_sale(store, local(DAY, 10), "S2", 2, confirmation=True)
    cloud = FakeCloud(
        by_reference={ref("S2", 2): [payment("P-S2", "approved", 1500, ref("S2", 2))]}
    )

    csv_path, _ = await exporter(store, cloud, tmp_path).export_day(DAY)

    row = rows_by_payment(csv_path)["P-S2"]
    assert (row["state"], row["held"], row["matched"]) == ("handed_over", "yes", "ok")


async def test_an_override_is_exported_and_a_rejected_payment_behind_it_is_a_mismatch(
        store: Store, tmp_path: Path) -> None:
    store.feed(local(DAY, 11), [
        SaleRequested("S3", 3, "=HYPERLINK(evil)", 2000, "TERM3", None),
        IntentCreated("S3", 1, "I-S3"),
        IntentObserved("I-S3", "CONFIRMATION_REQUIRED", "P-S3", None, POLL, ref("S3", 3)),
        OverrideGiven("S3", OverrideDecision.RELEASE, "+customer showed the receipt", 1001),
        # A second override after the sale ended is refused by the core: not exported.
        OverrideGiven("S3", OverrideDecision.VOID, "too late", 1002),
    ])
    cloud = FakeCloud(
        by_reference={ref("S3", 3): [payment("P-S3", "rejected", 2000, ref("S3", 3))]}
    )

    csv_path, json_path = await exporter(store, cloud, tmp_path).export_day(DAY)

    row = rows_by_payment(csv_path)["P-S3"]
    assert (row["state"], row["held"], row["matched"]) == ("overridden", "yes", "mismatch")
    assert row["differences"] == "released_without_approved_payment"
    assert (row["override_decision"], row["override_uid"]) == ("release", "1001")
    # Free text cannot become a spreadsheet formula; the JSON keeps it verbatim.
    assert row["override_reason"] == "'+customer showed the receipt"
    assert row["correlation_id"] == "'=HYPERLINK(evil)"
    sale = json.loads(json_path.read_text())["sales"][0]
    assert sale["correlation_id"] == "=HYPERLINK(evil)"
    assert [(o["decision"], o["uid"]) for o in sale["overrides"]] == [("release", 1001)]


async def test_amount_currency_status_and_refund_differences_are_mismatches(
        store: Store, tmp_path: Path) -> None:
    paid_sale(store, local(DAY, 9), "A1", 1)
    paid_sale(store, local(DAY, 9, 10), "A2", 2)
    paid_sale(store, local(DAY, 9, 20), "A3", 3)
    cloud = FakeCloud(by_reference={
        ref("A1", 1): [payment("P-A1", "approved", 1600, ref("A1", 1))],
        ref("A2", 2): [payment("P-A2", "approved", 1500, ref("A2", 2), currency="ARS")],
        ref("A3", 3): [payment("P-A3", "refunded", 1500, ref("A3", 3), refunded=1500)],
    })

    rows = rows_by_payment((await exporter(store, cloud, tmp_path).export_day(DAY))[0])

    assert (rows["P-A1"]["matched"], rows["P-A1"]["differences"]) == ("mismatch", "amount")
    assert (rows["P-A2"]["matched"], rows["P-A2"]["differences"]) == ("mismatch", "currency")
    assert rows["P-A3"]["matched"] == "mismatch"
    assert rows["P-A3"]["differences"].split() == [
        "status", "refunded", "released_without_approved_payment"]
    assert rows["P-A3"]["mp_refunded_cents"] == "1500"


async def test_a_journaled_payment_unknown_to_mercado_pago_is_missing(
        store: Store, tmp_path: Path) -> None:
    paid_sale(store, local(DAY, 12), "M1", 1)
    cloud = FakeCloud()

    rows = rows_by_payment((await exporter(store, cloud, tmp_path).export_day(DAY))[0])

    assert rows["P-M1"]["matched"] == "missing_at_mercado_pago"
    # Search first, then GET by id before calling it missing (the search index lags).
    assert cloud.calls == [("find_payments", ref("M1", 1)), ("get_payment", "P-M1")]


async def test_a_payment_the_search_misses_is_found_by_id(store: Store, tmp_path: Path) -> None:
    paid_sale(store, local(DAY, 12), "G1", 1)
    cloud = FakeCloud(payments={"P-G1": payment("P-G1", "approved", 1500, ref("G1", 1))})

    rows = rows_by_payment((await exporter(store, cloud, tmp_path).export_day(DAY))[0])

    assert rows["P-G1"]["matched"] == "ok"


async def test_a_payment_for_a_canceled_sale_is_extra_and_flagged(
        store: Store, tmp_path: Path) -> None:
    store.feed(local(DAY, 13), [
        SaleRequested("C1", 4, "c-C1", 900, "TERM4", None),
        IntentCreated("C1", 1, "I-C1"),
        CancelRequested("C1", None, "register"),
        IntentObserved("I-C1", "CANCELED", None, None, POLL, ref("C1", 4)),
    ])
    charged = payment("P-X", "approved", 900, ref("C1", 4))
    cloud = FakeCloud(by_reference={ref("C1", 4): [charged]})

    csv_path, json_path = await exporter(store, cloud, tmp_path).export_day(DAY)

    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert [(r["sale_id"], r["state"], r["payment_id"], r["matched"]) for r in rows] == [
        ("C1", "canceled", "P-X", "extra")]
    assert json.loads(json_path.read_text())["counts"]["extra"] == 1


async def test_an_approved_payment_of_a_declined_sale_is_a_mismatch(
        store: Store, tmp_path: Path) -> None:
    store.feed(local(DAY, 13), [
        SaleRequested("D1", 5, "c-D1", 900, "TERM5", None),
        IntentCreated("D1", 1, "I-D1"),
        IntentObserved("I-D1", "FINISHED", "P-D1", None, POLL, ref("D1", 5)),
        PaymentVerified("P-D1", "rejected", None, 900, "BRL", COLLECTOR, ref("D1", 5)),
    ])
    cloud = FakeCloud(by_reference={ref("D1", 5): [payment("P-D1", "approved", 900, ref("D1", 5))]})

    rows = rows_by_payment((await exporter(store, cloud, tmp_path).export_day(DAY))[0])

    assert rows["P-D1"]["state"] == "declined"
    assert rows["P-D1"]["differences"].split() == ["status", "approved_without_handover"]


async def test_a_refused_sale_has_no_payment_and_asks_nothing(
        store: Store, tmp_path: Path) -> None:
    store.feed(local(DAY, 14), [
        SaleRequested("R1", 6, "c-R1", 900, "TERM6", Refusal.TERMINAL_NOT_CONNECTED)])
    cloud = FakeCloud()

    rows = rows_by_payment((await exporter(store, cloud, tmp_path).export_day(DAY))[0])

    assert (rows["R1"]["state"], rows["R1"]["refusal"], rows["R1"]["matched"]) == (
        "failed", "terminal_not_connected", "no_payment")
    assert cloud.calls == []


async def test_mercado_pago_down_gives_unknown_and_stops_asking(
        store: Store, tmp_path: Path) -> None:
    for number in range(1, 7):
        paid_sale(store, local(DAY, 15, number), f"U{number}", number)
    cloud = FakeCloud(down=True)

    csv_path, json_path = await exporter(store, cloud, tmp_path).export_day(DAY)

    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert len(rows) == 6
    assert {r["matched"] for r in rows} == {"unknown"}
    assert len(cloud.calls) == EXPORT_FAILURES_BEFORE_GIVING_UP
    assert json.loads(json_path.read_text())["complete"] is False


async def test_a_day_is_the_local_calendar_day(store: Store, tmp_path: Path) -> None:
    previous = DAY - dt.timedelta(days=1)
    paid_sale(store, local(previous, 23, 50), "E1", 1)  # 02:50 UTC on DAY
    paid_sale(store, local(DAY, 0, 5), "E2", 2)
    paid_sale(store, local(DAY, 23, 50), "E3", 3)
    cloud = FakeCloud()
    export = exporter(store, cloud, tmp_path, now=local(DAY, 23, 59))

    today = json.loads((await export.export_day(DAY))[1].read_text())
    before = json.loads((await export.export_day(previous))[1].read_text())

    assert [s["sale_id"] for s in today["sales"]] == ["E2", "E3"]
    assert [s["sale_id"] for s in before["sales"]] == ["E1"]
    assert today["sales"][0]["requested_at"].endswith("-03:00")


async def test_files_are_replaced_atomically_with_restricted_modes(
        store: Store, tmp_path: Path) -> None:
    paid_sale(store, local(DAY, 10), "W1", 1)
    export = exporter(store, FakeCloud(), tmp_path)

    csv_path, json_path = await export.export_day(DAY)
    paid_sale(store, local(DAY, 11), "W2", 2)
    again = await export.export_day(DAY)

    assert again == (csv_path, json_path)
    assert csv_path.name == f"reconciliation-{STORE}-{DAY.isoformat()}.csv"
    assert sorted(p.name for p in export.directory.iterdir()) == sorted(
        [csv_path.name, json_path.name])  # no temp files left behind
    assert stat.S_IMODE(export.directory.stat().st_mode) == 0o750
    assert stat.S_IMODE(csv_path.stat().st_mode) == 0o640
    assert stat.S_IMODE(json_path.stat().st_mode) == 0o640
    assert len(json.loads(json_path.read_text())["sales"]) == 2
    header = next(csv.reader(io.StringIO(csv_path.read_text())))
    assert tuple(header) == CSV_COLUMNS


async def test_a_failed_write_keeps_the_previous_file(store: Store, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    paid_sale(store, local(DAY, 10), "F1", 1)
    export = exporter(store, FakeCloud(), tmp_path)
    csv_path, _ = await export.export_day(DAY)
    before = csv_path.read_bytes()
    paid_sale(store, local(DAY, 11), "F2", 2)

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(ExportError, match="Input/output error"):
        await export.export_day(DAY)

    assert csv_path.read_bytes() == before
    assert len(list(export.directory.iterdir())) == 2


async def test_an_unwritable_directory_is_a_clear_error(store: Store, tmp_path: Path) -> None:
    (tmp_path / "exports").write_text("a file where the directory should be")
    with pytest.raises(ExportError, match="cannot write the export"):
        await exporter(store, FakeCloud(), tmp_path).export_day(DAY)


@pytest.mark.parametrize("bad", [dt.datetime(2026, 3, 10, 12, tzinfo=TZ), "2026-03-10", None])
async def test_a_day_that_is_not_a_date_is_refused(store: Store, tmp_path: Path,
                                                   bad: object) -> None:
    export = exporter(store, FakeCloud(), tmp_path)
    with pytest.raises(ValueError, match="must be a date"):
        await export.export_day(bad)  # type: ignore[arg-type]
    assert not export.directory.exists()


async def test_a_future_day_is_refused(store: Store, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="in the future"):
        await exporter(store, FakeCloud(), tmp_path).export_day(DAY + dt.timedelta(days=1))


async def test_daemon_jobs_export_defaults_to_the_journal_directory(
        store: Store, tmp_path: Path) -> None:
    paid_sale(store, local(DAY, 10), "J1", 1)
    engine = FakeEngine(store.state, store.journal)
    jobs = DaemonJobs(engine=engine, cloud=FakeCloud(), wall_clock=ManualClock(local(DAY, 23, 55)),
                      timezone=TZ)

    csv_path, json_path = await jobs.export_day(DAY)

    assert csv_path.parent == tmp_path / "exports"
    assert json_path.exists()


async def test_the_nightly_run_rewrites_yesterday_and_writes_today(
        store: Store, tmp_path: Path) -> None:
    previous = DAY - dt.timedelta(days=1)
    paid_sale(store, local(previous, 23, 58), "N1", 1)  # after yesterday's 23:55 run
    paid_sale(store, local(DAY, 10), "N2", 2)
    engine = FakeEngine(store.state, store.journal)
    jobs = DaemonJobs(engine=engine, cloud=FakeCloud(), wall_clock=ManualClock(local(DAY, 23, 55)),
                      timezone=TZ)

    result = await jobs.export_closing_days()

    assert result["written"] == [f"reconciliation-{STORE}-{previous}.csv",
                                 f"reconciliation-{STORE}-{DAY}.csv"]
    yesterday = json.loads(jobs.exporter.paths(previous)[1].read_text())
    assert [s["sale_id"] for s in yesterday["sales"]] == ["N1"]
