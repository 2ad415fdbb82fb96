"""Mercado Pago's official Python SDK (PyPI ``mercadopago``) as a client of ``pointd sim cloud``.

The simulator runs as a real process on loopback; the SDK is pointed at it by overriding
its base URL, and every Point and Orders call the SDK offers is made. Each answer must be
one the SDK parses (its HTTP client raises on a body that is not JSON) and, for errors,
one its own error builder reads. The SDK's calls that belong to online orders (search,
process, capture, transaction edits) are answered with a documented Orders error.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mercadopago
import pytest
from mercadopago.config.config import Config
from mercadopago.errors.exceptions import MPBadRequestError

REPO = Path(__file__).resolve().parents[2]
DEVICE = "PAX_A910__SMARTPOS0777"
# Bound for the simulator process to start or stop; never a timing rule.
PROCESS_WAIT = 20.0
TO_THE_END = 10.0


@dataclass
class RunningSimulator:
    url: str
    token: str


def _lines(stream: Any, into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[RunningSimulator]:
    """``pointd sim cloud`` as a child process, frozen time, one PDV terminal."""
    process = subprocess.Popen(
        [
            sys.executable, "-m", "pointd.cli", "sim", "cloud", "--port", "0",
            "--time-scale", "0", "--secrets-dir", str(tmp_path / "secrets"),
            "--devices", f"{DEVICE},store=1000001,pos=1",
        ],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    printed: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_lines, args=(process.stdout, printed))
    reader.start()
    try:
        settings: dict[str, str] = {}
        while "access token file" not in settings:
            key, _, value = printed.get(timeout=PROCESS_WAIT).partition(": ")
            settings[key.strip()] = value.strip()
        token = Path(settings["access token file"]).read_text(encoding="utf-8").strip()
        url = settings["pointd sim cloud"].removeprefix("listening on ")
        yield RunningSimulator(url, token)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=PROCESS_WAIT)
        finally:
            if process.returncode is None:
                process.kill()
                process.wait()
            reader.join(timeout=PROCESS_WAIT)


@pytest.fixture
def sdk(simulator: RunningSimulator, monkeypatch: pytest.MonkeyPatch) -> Any:
    # The SDK keeps its base URL in a name-mangled class attribute; there is no setting.
    monkeypatch.setattr(Config, "_Config__api_base_url", simulator.url)
    return mercadopago.SDK(simulator.token)


def advance(simulator: RunningSimulator, seconds: float) -> None:
    answer = httpx.post(f"{simulator.url}/_sim/clock/advance", json={"seconds": seconds})
    assert answer.status_code == 200, answer.text


def ok(result: dict[str, Any], status: int) -> dict[str, Any]:
    assert result["status"] == status, result
    body = result["response"]
    assert isinstance(body, dict), result
    return body


def test_every_point_call_of_the_sdk_parses(sdk: Any) -> None:
    point = sdk.point()
    devices = ok(point.get_devices(), 200)
    assert [d["id"] for d in devices["devices"]] == [DEVICE]
    assert ok(point.get_devices({"store_id": "1000001"}), 200)["paging"]["total"] == 1
    intent = {
        "amount": 1500,
        "additional_info": {
            "external_reference": "sdk_intent_1",
            "print_on_terminal": True,
            "ticket_number": "T-1",
        },
    }
    created = ok(point.create(DEVICE, intent), 201)
    assert created["amount"] == 1500
    fetched = ok(point.get(created["id"]), 200)
    assert (fetched["id"], fetched["state"]) == (created["id"], "OPEN")
    assert ok(point.cancel(DEVICE, created["id"]), 200) == {"id": created["id"]}
    assert ok(point.get(created["id"]), 200)["state"] == "CANCELED"
    missing = point.get("no-such-intent")
    assert missing["status"] == 404
    assert missing.error_message == "That payment intent doesn't exist!"


def order_body(reference: str, amount: str = "15.00") -> dict[str, Any]:
    return {
        "type": "point",
        "external_reference": reference,
        "transactions": {"payments": [{"amount": amount}]},
        "config": {"point": {"terminal_id": DEVICE, "print_on_terminal": "no_ticket"}},
        "description": "pointd SDK test",
    }


def test_every_orders_call_of_the_sdk_parses(sdk: Any, simulator: RunningSimulator) -> None:
    orders = sdk.order()
    first = ok(orders.create(order_body("sdk_order_1")), 201)
    assert (first["status"], first["status_detail"]) == ("created", "created")
    assert ok(orders.get(first["id"]), 200)["external_reference"] == "sdk_order_1"
    canceled = ok(orders.cancel(first["id"]), 200)
    payment = canceled["transactions"]["payments"][0]
    assert (canceled["status"], payment["status_detail"]) == ("canceled", "canceled_by_api")

    second = ok(orders.create(order_body("sdk_order_2", "20.00")), 201)
    advance(simulator, TO_THE_END)
    paid = ok(orders.get(second["id"]), 200)
    payment = paid["transactions"]["payments"][0]
    assert (paid["status"], payment["status_detail"]) == ("processed", "accredited")
    partial = {"transactions": [{"id": payment["id"], "amount": "5.00"}]}
    refunded = ok(orders.refund_transaction(second["id"], partial), 201)
    assert (refunded["status"], refunded["status_detail"]) == ("processed", "partially_refunded")
    whole = ok(orders.refund(second["id"]), 201)
    assert (whole["status"], whole["status_detail"]) == ("refunded", "refunded")
    again = orders.refund(second["id"])
    assert again["status"] == 409
    assert again["response"]["errors"][0]["code"] == "order_already_refunded"


def test_the_sdks_online_order_calls_get_a_documented_refusal(sdk: Any) -> None:
    orders = sdk.order()
    order_id = ok(orders.create(order_body("sdk_order_3")), 201)["id"]
    transaction = {"payments": [{"amount": "1.00"}]}
    answers = [
        orders.search({"external_reference": "sdk_order_3"}),
        orders.process(order_id),
        orders.capture(order_id),
        orders.create_transaction(order_id, transaction),
        orders.update_transaction(order_id, "PAY01", {"amount": "1.00"}),
        orders.delete_transaction(order_id, "PAY01"),
    ]
    for answer in answers:
        assert answer["status"] == 400, answer
        assert answer["response"]["errors"][0]["code"] == "property_value"
        with pytest.raises(MPBadRequestError):
            answer.raise_for_status()
    assert list(orders.search_auto_paging_iter({"external_reference": "sdk_order_3"})) == []
