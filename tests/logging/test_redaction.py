"""Secrets and card numbers never reach a rendered log line, in either renderer."""

from __future__ import annotations

import json
import logging
import re
import secrets
import string

import pytest
import structlog
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pointd.logging import REDACTED, luhn_valid, redact_text, register_secret

from .conftest import Configure

VISA = "4111111111111111"  # a well-known test card number, Luhn-valid
MASKED_VISA = "411111...1111"


def fresh_secret() -> str:
    return f"APP_USR-{secrets.token_hex(12)}"


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_values_of_secret_keys_are_removed_at_any_depth(configure: Configure, fmt: str) -> None:
    stream = configure(fmt)
    values = [fresh_secret() for _ in range(9)]
    structlog.get_logger("t").info(
        "request",
        access_token=values[0],
        headers={"Authorization": values[1], "X-Signature": values[2], "Accept": "json"},
        attempts=[{"webhook_secret": values[3]}, {"Cookie": values[4]}],
        nested={"deeper": {"postgres_dsn": values[5], "PASSWORD": values[6]}},
        api_key=values[7],
        set_cookie=values[8],
        token_file=None,
    )
    out = stream.getvalue()
    assert all(value not in out for value in values)
    assert out.count(REDACTED) == 9
    assert "json" in out
    if fmt == "json":
        (line,) = json_lines(out)
        assert line["headers"] == {
            "Authorization": REDACTED,
            "X-Signature": REDACTED,
            "Accept": "json",
        }
        assert line["attempts"] == [{"webhook_secret": REDACTED}, {"Cookie": REDACTED}]
        assert line["token_file"] is None


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_registered_secrets_are_removed_from_every_string(configure: Configure, fmt: str) -> None:
    stream = configure(fmt)
    value = fresh_secret()
    register_secret(value)
    log = structlog.get_logger("t")
    log.info(f"sent {value}", body=f'{{"data": "{value}"}}', items=[f"x{value}x", (value,)])
    log.warning("positional %s", value)
    out = stream.getvalue()
    assert value not in out
    assert out.count(REDACTED) == 5


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_secrets_in_exceptions_and_tracebacks_are_removed(configure: Configure, fmt: str) -> None:
    stream = configure(fmt)
    value = fresh_secret()
    register_secret(value)
    log = structlog.get_logger("t")
    try:
        raise ConnectionError(f"login failed for token {value} (Bearer {value[::-1]})")
    except ConnectionError:
        log.exception("cloud call failed")
        logging.getLogger("httpx").exception("stdlib saw it too")
        try:
            raise RuntimeError("wrapped") from ConnectionError(value)
        except RuntimeError as chained:
            log.error("chained", exc_info=chained)
    out = stream.getvalue()
    assert value not in out
    assert value[::-1] not in out
    text = out.replace("\\n", "\n")
    # Three tracebacks; the chained cause was never raised, so it has no traceback of its own.
    assert text.count("Traceback (most recent call last)") == 3
    assert text.count("ConnectionError: login failed for token [redacted] (Bearer [redacted])") == 2
    assert "ConnectionError: [redacted]\n" in text


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_card_numbers_are_masked_to_first_six_and_last_four(configure: Configure, fmt: str) -> None:
    stream = configure(fmt)
    structlog.get_logger("t").info(
        f"card {VISA} swiped",
        spaced="4111 1111 1111 1111",
        dashed="4111-1111-1111-1111",
        amex="3782 822463 10005",
        as_int=int(VISA),
        in_list=[f"pan={VISA};"],
    )
    out = stream.getvalue()
    for pan in (VISA, "4111 1111 1111 1111", "4111-1111-1111-1111", "3782 822463 10005", "822463"):
        assert pan not in out
    assert out.count(MASKED_VISA) == 5
    assert "378282...0005" in out


@pytest.mark.parametrize(
    "text",
    [
        "4111111111111112",  # fails Luhn
        "411111111111",  # 12 digits: too short for a card
        "41111111111111111111",  # 20 digits: too long for a card
        "order 1234567890 amount 1500",
    ],
)
def test_numbers_that_are_not_cards_are_left_alone(text: str) -> None:
    assert redact_text(text) == text


def test_integers_that_are_not_cards_are_left_as_integers(configure: Configure) -> None:
    stream = configure("json")
    structlog.get_logger("t").info("sale", payment_id=12345678901, amount_cents=150000)
    (line,) = json_lines(stream.getvalue())
    assert (line["payment_id"], line["amount_cents"]) == (12345678901, 150000)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer APP_USR-123-abc", "Authorization: [redacted]"),
        ("sent Bearer APP_USR-123-abc to", "sent Bearer [redacted] to"),
        ("header bearer abc.def-ghi=", "header bearer [redacted]"),
        ("GET /v1/x?access_token=APP_USR-9&limit=5", "GET /v1/x?access_token=[redacted]&limit=5"),
        ('{"client_secret": "s3cr3t", "id": 1}', '{"client_secret": "[redacted]", "id": 1}'),
        ("{'password': 'hunter22'}", "{'password': '[redacted]'}"),
        (
            "postgresql://relay:pa55word@db:5432/relay",
            "postgresql://relay:[redacted]@db:5432/relay",
        ),
        ("x-signature=ts=1,v1=ab", "x-signature=[redacted],v1=ab"),
        ("nothing to hide here", "nothing to hide here"),
        # JSON text stays JSON: a null is no secret, a bare value gets a quoted mark.
        ('{"access_token_file": null}', '{"access_token_file": null}'),
        ('{"token": 12345678}', '{"token": "[redacted]"}'),
    ],
)
def test_credentials_in_free_text_are_removed(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_objects_are_logged_by_their_scrubbed_str(configure: Configure) -> None:
    value = fresh_secret()
    register_secret(value)

    class Leaky:
        def __str__(self) -> str:
            return f"Leaky({value}, card={VISA})"

    stream = configure("json")
    structlog.get_logger("t").info("object", thing=Leaky())
    (line,) = json_lines(stream.getvalue())
    assert line["thing"] == f"Leaky({REDACTED}, card={MASKED_VISA})"


def test_very_short_values_are_not_registered() -> None:
    register_secret("ab")
    assert redact_text("about a bank") == "about a bank"


def test_luhn() -> None:
    assert luhn_valid(VISA)
    assert luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")


def luhn_complete(body: str) -> str:
    for check in string.digits:
        if luhn_valid(body + check):
            return body + check
    raise AssertionError(body)


filler = st.text(alphabet=string.ascii_letters + " .,:=/\"'{}", max_size=30)


@settings(max_examples=300, deadline=None)
@given(
    before=filler,
    after=filler,
    body=st.text(alphabet=string.digits, min_size=12, max_size=18),
)
def test_any_luhn_valid_card_number_in_any_text_is_masked(
    before: str, after: str, body: str
) -> None:
    pan = luhn_complete(body)
    out = redact_text(f"{before}{pan}{after}")
    assert pan not in out
    assert re.search(rf"{pan[:6]}\.\.\.{pan[-4:]}", out)


@settings(max_examples=300, deadline=None)
@given(
    before=st.text(max_size=30),
    after=st.text(max_size=30),
    value=st.text(min_size=4, max_size=40).filter(lambda v: v.strip() == v),
)
def test_a_registered_secret_never_survives_redaction(before: str, after: str, value: str) -> None:
    assume(value not in REDACTED and value not in f"{before}{REDACTED}{after}")
    register_secret(value)
    assert value not in redact_text(f"{before}{value}{after}")


# Shapes that made earlier, backtracking patterns take minutes on a long log value.
ADVERSARIAL = ["a", "a.", "a-", "ab:", 'a="x, ', 'token="x, ', "a=a=", "ftp://a:", "4111 ", "'"]
REDACTION_BUDGET = 5.0  # CPU seconds for all shapes; linear work takes well under one


def test_redaction_stays_linear_on_long_adversarial_text() -> None:
    import time

    # CPU time of this thread, not wall time: the suite's other workers and whatever else
    # shares the cores must not make linear work look quadratic.
    started = time.thread_time()
    for shape in ADVERSARIAL:
        redact_text(shape * (100_000 // len(shape)))
    assert time.thread_time() - started < REDACTION_BUDGET


def test_a_pair_inside_a_value_is_still_found() -> None:
    assert redact_text("a=token=xyz1") == "a=token=[redacted]"
    assert redact_text('{"data": "token=xyz1"}') == '{"data": "token=[redacted]"}'


def test_long_integers_that_are_not_cards_stay_integers() -> None:
    from pointd.logging import redact_event

    event = redact_event(None, "info", {"event": "x", "ts_ms": 1763780000001, "card": int(VISA)})
    assert event["ts_ms"] == 1763780000001
    assert event["card"] == MASKED_VISA


@settings(max_examples=300, deadline=None)
@given(
    before=filler,
    after=st.text(alphabet=" ,;&})]\"'", max_size=5),
    key=st.sampled_from(["token", "access_token", "X-Signature", "password", "client_secret"]),
    separator=st.sampled_from(["=", ": ", " = ", ":"]),
    value=st.text(alphabet=string.ascii_letters + string.digits + "-_.", min_size=6, max_size=40),
)
def test_a_secret_pair_in_any_text_loses_its_value(
    before: str, after: str, key: str, separator: str, value: str
) -> None:
    assume(value not in before + key + REDACTED)
    out = redact_text(f"{before} {key}{separator}{value}{after}")
    assert value not in out
    assert f"{key}{separator}{REDACTED}" in out
