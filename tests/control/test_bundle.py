"""The support bundle: no secret survives in any member, whatever it looks like."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pointd.control.bundle import (
    REDACTED,
    build_support_bundle,
    bundle_answer,
    redact_text,
    redact_value,
)

NOW = 1_795_000_000.0
TOKEN_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~+/="


def members(bundle: bytes) -> dict[str, str]:
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
        return {
            m.name: tar.extractfile(m).read().decode()  # type: ignore[union-attr]
            for m in tar.getmembers()
        }


def luhn_complete(prefix: str) -> str:
    """Append the check digit that makes ``prefix`` a Luhn-valid number."""
    for check in "0123456789":
        digits = prefix + check
        total = 0
        for index, char in enumerate(reversed(digits)):
            value = int(char) * (2 if index % 2 else 1)
            total += value - 9 if value > 9 else value
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


def bundle_with(secret: str, card: str, *, register: bool = True) -> bytes:
    status: dict[str, Any] = {
        "lanes": [{"lane": "1", "note": f"token was {secret}!"}],
        "relay": {"last_error": f'401 for "Bearer {secret}"'},
    }
    grouped = " ".join(card[i : i + 4] for i in range(0, len(card), 4))
    sales = [{"sale_id": "S-1", "card": card, "memo": grouped}]
    config = {
        "cloud": {"access_token": secret, "base_url": "https://api.mercadopago.com"},
        "relay": {"store_token": "other-" + secret, "url": "https://relay.example"},
        f"weird-{secret}": 1,
    }
    logs = [
        f"sending Authorization: Bearer {secret}",
        f"json={json.dumps({'s': secret})}",
        f"card {card}",
    ]
    return build_support_bundle(
        status=status,
        sales=sales,
        config=config,
        logs=logs,
        now=NOW,
        secrets=[secret] if register else [],
        versions={"pointd": "test"},
        connections=[{"requests": [{"method": "status", "note": secret}]}],
    )


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(
    secret=st.text(alphabet=TOKEN_ALPHABET, min_size=8, max_size=80),
    card_prefix=st.text(alphabet="0123456789", min_size=12, max_size=18),
)
def test_no_registered_secret_or_card_number_survives(secret: str, card_prefix: str) -> None:
    card = luhn_complete(card_prefix)
    baseline = "".join(members(bundle_with("placeholder-x", "4111111111111111")).values())
    assume(secret not in baseline and secret not in REDACTED)
    texts = members(bundle_with(secret, card))
    assert set(texts) >= {"pointd-bundle/status.json", "pointd-bundle/logs.txt"}
    for name, text in texts.items():
        assert secret not in text, name
        assert json.dumps(secret)[1:-1] not in text, name
        assert card not in text.replace(" ", "").replace("-", ""), name


def test_unregistered_tokens_are_still_caught_by_shape() -> None:
    token = "APP_USR-7777777777777777-112203-abcdefabcdefabcdef-123456"
    text = redact_text(f"Authorization: Bearer abc.def-ghi and {token}", [])
    assert "abc.def-ghi" not in text
    assert token not in text
    assert text.count(REDACTED) == 2


def test_secrets_registered_with_the_log_redaction_are_removed_too() -> None:
    from pointd.logging import register_secret

    register_secret("registered-elsewhere-0f3a9")
    assert redact_text("x registered-elsewhere-0f3a9 y", []) == f"x {REDACTED} y"


def test_secret_named_keys_are_blanked_even_if_not_registered() -> None:
    value = redact_value(
        {
            "access_token": "tok",
            "webhook_secret": "s",
            "nested": {"password": "p"},
            "token_ttl": None,
            "lane": "1",
        },
        [],
    )
    assert value == {
        "access_token": REDACTED,
        "webhook_secret": REDACTED,
        "nested": {"password": REDACTED},
        "token_ttl": None,
        "lane": "1",
    }


def test_ordinary_numbers_are_kept() -> None:
    text = "payment 1234567890 at 1732240000 amount 1500 date 2026-11-22"
    assert redact_text(text, []) == text
    assert redact_text("4111 1111 1111 1111", []) == "411111...1111"
    assert redact_text("4111111111111112", []) == "4111111111111112"  # fails Luhn


def test_longer_secret_wins_over_its_prefix() -> None:
    assert redact_text("abcdef-123456", ["abcdef", "abcdef-123456"]) == REDACTED


def test_bundle_is_reproducible_and_answer_round_trips() -> None:
    first = bundle_with("s3cr3t-value-1", "4111111111111111")
    assert first == bundle_with("s3cr3t-value-1", "4111111111111111")
    answer = bundle_answer(first, NOW)
    assert answer["filename"] == "pointd-bundle-20261118T110640Z.tar.gz"
    assert answer["size"] == len(first)
    assert base64.b64decode(answer["content_b64"]) == first


def test_versions_default_lists_pointd_and_python() -> None:
    texts = members(build_support_bundle(status={}, sales=[], config={}, now=NOW))
    versions = json.loads(texts["pointd-bundle/versions.json"])
    assert {"pointd", "python", "structlog", "httpx"} <= set(versions)
    assert "logs.txt" not in " ".join(texts)
    assert "pointd-bundle/README.txt" in texts
