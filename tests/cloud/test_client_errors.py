"""The client's error mapping and retry rules, against exact answers from a MockTransport."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date

import httpx
import pytest
from structlog.testing import capture_logs

from pointd.cloud import errors
from pointd.cloud.client import PointApiClient
from pointd.cloud.sites import Site
from tests.cloud.conftest import DEVICE, TOKEN, FakeClock

INTENT = "7af4a9d1-2c3e-4f5a-8b6c-0123456789ab"
INTENT_BODY = {"id": INTENT, "device_id": DEVICE, "amount": 1500, "state": "OPEN"}

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler that answers from a script and counts requests."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def mp_error(status: int, error: str, message: str, **headers: str) -> httpx.Response:
    body = {"message": message, "error": error, "status": status, "cause": []}
    return httpx.Response(status, json=body, headers=headers)


def make_client(recorder: Recorder, clock: FakeClock, site: Site = Site.MLA) -> PointApiClient:
    return PointApiClient(
        "https://api.example.test",
        TOKEN,
        site=site,
        clock=clock,
        sleep=clock.sleep,
        random=lambda: 0.5,
        transport=httpx.MockTransport(recorder),
    )


async def create(client: PointApiClient) -> object:
    return await client.create_payment_intent(DEVICE, 1500, "pd1_s_1_A_1", ticket_number="T-1")


@pytest.mark.parametrize(
    "exception",
    [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"), httpx.PoolTimeout("busy")],
)
async def test_a_failure_before_sending_is_not_sent(
    exception: Exception, fake_clock: FakeClock
) -> None:
    recorder = Recorder(exception)
    async with make_client(recorder, fake_clock) as client:
        with pytest.raises(errors.NotSent):
            await create(client)
    assert len(recorder.requests) == 1


@pytest.mark.parametrize(
    "exception",
    [
        httpx.ReadTimeout("no answer"),
        httpx.WriteTimeout("stalled"),
        httpx.RemoteProtocolError("peer closed"),
        httpx.ReadError("reset"),
    ],
)
async def test_a_failure_after_sending_a_create_is_outcome_unknown_and_not_retried(
    exception: Exception, fake_clock: FakeClock
) -> None:
    recorder = Recorder(exception, httpx.Response(201, json=INTENT_BODY))
    async with make_client(recorder, fake_clock) as client:
        with pytest.raises(errors.OutcomeUnknown) as caught:
            await create(client)
    assert not isinstance(caught.value, errors.NotSent)
    assert len(recorder.requests) == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_a_5xx_answer_to_a_create_is_outcome_unknown_and_not_retried(
    status: int, fake_clock: FakeClock
) -> None:
    recorder = Recorder(
        mp_error(status, "internal_error", "boom"), httpx.Response(201, json=INTENT_BODY)
    )
    async with make_client(recorder, fake_clock) as client:
        with pytest.raises(errors.OutcomeUnknown) as caught:
            await create(client)
    assert caught.value.status == status
    assert len(recorder.requests) == 1


async def test_a_5xx_answer_to_a_cancel_is_outcome_unknown(fake_clock: FakeClock) -> None:
    recorder = Recorder(mp_error(500, "internal_error", "boom"))
    async with make_client(recorder, fake_clock) as client:
        with pytest.raises(errors.OutcomeUnknown):
            await client.cancel_payment_intent(DEVICE, INTENT)
    assert len(recorder.requests) == 1


async def test_a_5xx_answer_to_a_refund_create_is_outcome_unknown(fake_clock: FakeClock) -> None:
    recorder = Recorder(mp_error(502, "internal_error", "bad gateway"))
    async with make_client(recorder, fake_clock) as client:
        with pytest.raises(errors.OutcomeUnknown):
            await client.create_refund_intent(DEVICE, "50000000001")
    assert len(recorder.requests) == 1


async def test_409_on_create_is_device_busy(fake_clock: FakeClock) -> None:
    answer = mp_error(
        409, "conflict_error", "There is already a queued payment intent for the device"
    )
    recorder = Recorder(answer)
    async with make_client(recorder, fake_clock) as client:
        with pytest.raises(errors.DeviceBusy) as caught:
            await create(client)
    assert caught.value.status == 409
    assert caught.value.error == "conflict_error"
    assert "queued payment intent" in caught.value.message
    assert len(recorder.requests) == 1


async def test_409_on_cancel_is_cannot_cancel(fake_clock: FakeClock) -> None:
    recorder = Recorder(mp_error(409, "conflict_error", "Can't update Payment Intent ID"))
    async with make_client(recorder, fake_clock) as client:
        with pytest.raises(errors.CannotCancel):
            await client.cancel_payment_intent(DEVICE, INTENT)


async def test_409_on_refund_cancel_is_cannot_cancel(fake_clock: FakeClock) -> None:
    recorder = Recorder(mp_error(409, "conflict_error", "sent to the device"))
    async with make_client(recorder, fake_clock) as client:
        with pytest.raises(errors.CannotCancel):
            await client.cancel_refund_intent(DEVICE, INTENT)


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (400, "bad_request", errors.BadRequest),
        (401, "not_found", errors.Unauthorized),
        (403, "forbidden", errors.Forbidden),
        (404, "not_found", errors.NotFound),
        (424, "failed_dependency", errors.Rejected),
    ],
)
async def test_4xx_answers_map_by_status(
    status: int, error: str, expected: type[errors.Rejected], fake_clock: FakeClock
) -> None:
    recorder = Recorder(mp_error(status, error, "refused"))
    async with make_client(recorder, fake_clock) as client:
        with pytest.raises(expected) as caught:
            await client.get_payment_intent(INTENT)
    assert type(caught.value) is expected
    assert caught.value.status == status
    assert len(recorder.requests) == 1


async def test_429_on_a_create_is_rate_limited_with_the_wait_and_not_retried(
    fake_clock: FakeClock,
) -> None:
    recorder = Recorder(mp_error(429, "too_many_requests", "slow down", **{"Retry-After": "7"}))
    async with make_client(recorder, fake_clock) as client:
        with pytest.raises(errors.RateLimited) as caught:
            await create(client)
    assert caught.value.retry_after == 7.0
    assert len(recorder.requests) == 1


async def test_a_get_is_retried_after_5xx_then_succeeds(fake_clock: FakeClock) -> None:
    recorder = Recorder(
        mp_error(503, "internal_error", "x"),
        mp_error(500, "internal_error", "x"),
        httpx.Response(200, json={"event_channel_devices": ["email"]}),
    )
    async with make_client(recorder, fake_clock) as client:
        integrator = await client.get_integrator()
    assert integrator.event_channel_devices == ("email",)
    assert len(recorder.requests) == 3
    # Full jitter with random() = 0.5: half of 0.5 s, then half of 1 s.
    assert fake_clock.sleeps == [0.25, 0.5]


async def test_intent_get_retries_keep_to_one_request_per_second(fake_clock: FakeClock) -> None:
    recorder = Recorder(mp_error(503, "internal_error", "x"), httpx.Response(200, json=INTENT_BODY))
    async with make_client(recorder, fake_clock) as client:
        await client.get_payment_intent(INTENT)
        sent_at = [fake_clock.now]
        await client.get_payment_intent(INTENT)
        sent_at.append(fake_clock.now)
    assert len(recorder.requests) == 3
    # retry after 0.25 s of back-off waits for the 1 s slot; the next call waits again.
    assert fake_clock.sleeps == [0.25, 0.75, 1.0]
    assert sent_at == [1001.0, 1002.0]


async def test_a_get_is_retried_after_a_connect_error_and_a_read_timeout(
    fake_clock: FakeClock,
) -> None:
    recorder = Recorder(
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.Response(
            200, json={"id": "50000000001", "status": "approved", "transaction_amount": 15.1}
        ),
    )
    async with make_client(recorder, fake_clock) as client:
        payment = await client.get_payment("50000000001")
    assert payment.amount_cents == 1510
    assert len(recorder.requests) == 3


async def test_a_get_honours_retry_after_on_429(fake_clock: FakeClock) -> None:
    recorder = Recorder(
        mp_error(429, "too_many_requests", "x", **{"Retry-After": "3"}),
        httpx.Response(200, json={"id": "1", "status": "approved", "transaction_amount": 1}),
    )
    async with make_client(recorder, fake_clock) as client:
        await client.get_payment("1")
    assert fake_clock.sleeps == [3.0]
    assert len(recorder.requests) == 2


async def test_a_get_gives_up_with_server_error_after_max_attempts(fake_clock: FakeClock) -> None:
    recorder = Recorder(mp_error(500, "internal_error", "down"))
    async with make_client(recorder, fake_clock) as client:
        with pytest.raises(errors.ServerError):
            await client.get_payment("1")
    assert len(recorder.requests) == 4


async def test_a_get_gives_up_with_rate_limited_after_max_attempts(fake_clock: FakeClock) -> None:
    recorder = Recorder(mp_error(429, "too_many_requests", "x", **{"Retry-After": "2"}))
    async with make_client(recorder, fake_clock) as client:
        with pytest.raises(errors.RateLimited) as caught:
            await client.get_integrator()
    assert caught.value.retry_after == 2.0
    assert len(recorder.requests) == 4


async def test_a_get_that_never_connects_ends_not_sent(fake_clock: FakeClock) -> None:
    recorder = Recorder(httpx.ConnectError("refused"))
    async with make_client(recorder, fake_clock) as client:
        with pytest.raises(errors.NotSent):
            await client.get_integrator()
    assert len(recorder.requests) == 4


async def test_a_2xx_that_is_not_json_is_malformed(fake_clock: FakeClock) -> None:
    recorder = Recorder(httpx.Response(201, content=b"<html>ok</html>"))
    async with make_client(recorder, fake_clock) as client:
        with pytest.raises(errors.MalformedResponse) as caught:
            await create(client)
    assert isinstance(caught.value, errors.OutcomeUnknown)


async def test_a_create_answer_without_an_id_is_malformed(fake_clock: FakeClock) -> None:
    recorder = Recorder(httpx.Response(200, json={"amount": 1500}))
    async with make_client(recorder, fake_clock) as client:
        with pytest.raises(errors.MalformedResponse):
            await create(client)


@pytest.mark.parametrize("status", [200, 201])
async def test_create_accepts_200_and_201(status: int, fake_clock: FakeClock) -> None:
    recorder = Recorder(httpx.Response(status, json=INTENT_BODY))
    async with make_client(recorder, fake_clock) as client:
        intent = await create(client)
    assert getattr(intent, "id", None) == INTENT
    sent = json.loads(recorder.requests[0].content)
    assert sent == {
        "amount": 1500,
        "additional_info": {
            "external_reference": "pd1_s_1_A_1",
            "print_on_terminal": True,
            "ticket_number": "T-1",
        },
    }
    assert recorder.requests[0].headers["authorization"] == f"Bearer {TOKEN}"


async def test_the_token_never_appears_in_errors_or_logs(fake_clock: FakeClock) -> None:
    echo = mp_error(401, f"bad {TOKEN}", f"token {TOKEN} is invalid")
    recorder = Recorder(echo, httpx.ReadTimeout(f"timeout {TOKEN}"))
    async with make_client(recorder, fake_clock) as client:
        assert TOKEN not in repr(client)
        with capture_logs() as logs, pytest.raises(errors.Unauthorized) as first:
            await client.get_integrator()
        recorder.answers = [httpx.ReadTimeout("timeout")]
        with capture_logs() as more_logs, pytest.raises(errors.OutcomeUnknown) as second:
            await create(client)
    for exc in (first.value, second.value):
        assert TOKEN not in str(exc)
        assert TOKEN not in repr(exc)
        assert exc.__cause__ is None or TOKEN not in str(exc.__cause__)
    assert TOKEN not in repr(logs + more_logs)


async def test_each_call_is_logged_with_method_path_template_status_and_duration(
    fake_clock: FakeClock,
) -> None:
    recorder = Recorder(httpx.Response(200, json=INTENT_BODY))
    async with make_client(recorder, fake_clock) as client:
        with capture_logs() as logs:
            await client.get_payment_intent(INTENT)
    call = next(entry for entry in logs if entry["event"] == "cloud.call")
    assert call["method"] == "GET"
    assert call["path"] == "/point/integration-api/payment-intents/{id}"
    assert call["status"] == 200
    assert "duration_ms" in call
    assert INTENT not in repr(call)


async def test_events_range_over_30_days_is_refused_before_sending(fake_clock: FakeClock) -> None:
    recorder = Recorder(httpx.Response(200, json={"events": []}))
    async with make_client(recorder, fake_clock) as client:
        with pytest.raises(errors.InvalidRequest):
            await client.intent_events(date(2026, 1, 1), date(2026, 2, 1))
        with pytest.raises(errors.InvalidRequest):
            await client.intent_events(date(2026, 1, 2), date(2026, 1, 1))
        await client.intent_events(date(2026, 1, 1), date(2026, 1, 31))
    assert len(recorder.requests) == 1
    assert recorder.requests[0].url.params["startDate"] == "2026-01-01"
    assert recorder.requests[0].url.params["endDate"] == "2026-01-31"


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.get_payment_intent(""),
        lambda c: c.get_payment_intent("a/b"),
        lambda c: c.cancel_payment_intent("", INTENT),
        lambda c: c.get_payment("12x"),
        lambda c: c.set_operating_mode(DEVICE, "pdv-ish"),
        lambda c: c.patch_integrator(["sms"]),
        lambda c: c.create_refund_intent(DEVICE, "not-a-number"),
        lambda c: c.search_payments("has space"),
        lambda c: c.create_payment_intent(DEVICE, 1500, "x" * 65, ticket_number="T"),
    ],
)
async def test_bad_arguments_are_refused_before_sending(
    call: Callable[[PointApiClient], object], fake_clock: FakeClock
) -> None:
    recorder = Recorder(httpx.Response(200, json={}))
    async with make_client(recorder, fake_clock) as client:
        with pytest.raises(errors.InvalidRequest):
            await call(client)  # type: ignore[misc]
    assert recorder.requests == []


def test_the_client_refuses_an_empty_token() -> None:
    with pytest.raises(errors.InvalidRequest):
        PointApiClient("https://api.example.test", "")
