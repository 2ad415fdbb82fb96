"""The relay's intake under arbitrary bodies, headers and query strings, over real HTTP.

Rules: never a 5xx; a refusal is 4xx with a JSON ``{"error": ...}`` that says why (401
also names ``x-signature`` in ``www-authenticate``); nothing is stored without a valid
signature, except legacy IPN, which is kept flagged unsigned as a hint (docs/relay.md).
"""

from __future__ import annotations

import sqlite3
import string
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pointd.cloud.signature import sign
from tests.relay.harness import RunningRelay, make_settings, relay_clock, running_relay
from tests.security.loop_thread import LoopThread

INTAKE = "/mp/webhook"
REFUSALS = {400, 401, 413, 414}
SECRET = "test-webhook-secret-1234"  # tests.relay.harness.SECRET
FUZZ = settings(
    max_examples=60, deadline=None
)


class Relay:
    """A relay served on a loop thread, reached with a blocking client and its SQLite file."""

    def __init__(self, tmp: Path) -> None:
        self.loop = LoopThread()
        self.database = tmp / "relay.sqlite3"
        self.clock = relay_clock()
        self._context = running_relay(
            make_settings(tmp, "sqlite", None, body_limit=4096), clock=self.clock
        )
        running: RunningRelay = self.loop.call(self._context.__aenter__())
        self.client = httpx.Client(base_url=running.url, timeout=20.0)

    def stored(self) -> list[tuple[str, int]]:
        """(kind, signed) of every stored notification."""
        with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True) as connection:
            return [(str(k), int(s)) for k, s in connection.execute(
                "SELECT kind, signed FROM events ORDER BY id"
            )]

    def close(self) -> None:
        self.client.close()
        self.loop.call(self._context.__aexit__(None, None, None))
        self.loop.close()


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    served = Relay(tmp_path_factory.mktemp("fuzz-relay"))
    yield served
    served.close()


json_ish = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(
        st.sampled_from(["id", "state", "type", "data", "payment", "additional_info",
                         "external_reference", "topic", "payout", "action"]) | st.text(max_size=6),
        inner,
        max_size=4,
    ),
    max_leaves=10,
)
bodies = st.one_of(
    st.binary(max_size=600),
    json_ish.map(lambda value: repr(value).replace("'", '"').encode()),
    st.just(b'{"id": "abc", "state": "FINISHED"}'),
    st.binary(min_size=4097, max_size=6000),
)
token_chars = string.ascii_letters + string.digits + "-_.!#$%&'*+^`|~"
header_names = st.sampled_from(
    ["x-signature", "x-request-id", "content-type", "content-length", "authorization",
     "transfer-encoding", "x-forwarded-for"]
) | st.text(alphabet=token_chars, min_size=1, max_size=12)
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=80,
).map(str.strip)
signatures = st.builds(
    lambda ts, v1: f"ts={ts},v1={v1}",
    st.integers(0, 10**14).map(str) | st.text(alphabet=string.printable.strip(), max_size=8),
    st.text(alphabet="0123456789abcdefABCDEF", min_size=0, max_size=70),
)
query_parts = st.lists(
    st.tuples(
        st.sampled_from(["data.id", "type", "topic", "id", "x"]) | st.text(max_size=5),
        st.text(max_size=30) | st.just(""),
    ),
    max_size=4,
)
raw_queries = st.text(
    alphabet=string.ascii_letters + string.digits + "%&=.+;/?-_~", max_size=120
)


def assert_clear_refusal(response: httpx.Response) -> None:
    assert response.status_code in REFUSALS, (response.status_code, response.text)
    answer = response.json()
    assert isinstance(answer["error"], str)
    assert answer["error"]
    if response.status_code == 401:
        assert response.headers["www-authenticate"] == "x-signature"


@FUZZ
@given(
    body=bodies,
    headers=st.lists(st.tuples(header_names, header_values), max_size=5),
    signature=st.none() | signatures,
    query=query_parts | raw_queries,
)
def test_any_request_is_refused_clearly_or_kept_only_as_an_unsigned_hint(
    relay: Relay,
    body: bytes,
    headers: list[tuple[str, str]],
    signature: str | None,
    query: list[tuple[str, str]] | str,
) -> None:
    sent = [(n, v) for n, v in headers if n.lower() not in {"content-length", "transfer-encoding"}]
    if signature is not None:
        sent.append(("x-signature", signature))
    url = INTAKE + "?" + query if isinstance(query, str) else httpx.URL(INTAKE, params=query)
    before = relay.stored()
    try:
        response = relay.client.post(
            url, content=body, headers=[(n.encode("latin-1"), v.encode("latin-1")) for n, v in sent]
        )
    except httpx.LocalProtocolError:
        return  # the client itself would not send this; nothing reached the relay
    after = relay.stored()
    assert response.status_code < 500, response.text
    if response.status_code == 200:
        assert isinstance(response.json(), dict)
        assert all(entry == ("ipn", 0) for entry in after[len(before):]), after[len(before):]
    else:
        assert_clear_refusal(response)
        assert after == before


@FUZZ
@given(
    data_id=st.text(max_size=40),
    request_id=st.none() | st.text(alphabet=string.printable.strip(), max_size=40),
    shift=st.integers(-10**6, 10**6),
)
def test_a_signature_made_with_another_secret_never_stores_anything(
    relay: Relay, data_id: str, request_id: str | None, shift: int
) -> None:
    ts = str(max(0, int(relay.clock.now) + shift))
    signature = sign("not-" + SECRET, data_id=data_id or None, request_id=request_id, ts=ts)
    headers = {"x-signature": signature}
    if request_id is not None:
        headers["x-request-id"] = request_id
    before = relay.stored()
    try:
        response = relay.client.post(
            INTAKE, params={"data.id": data_id, "type": "payment"},
            content=b'{"type": "payment", "data": {"id": "1"}}', headers=headers,
        )
    except (httpx.LocalProtocolError, UnicodeEncodeError):
        return  # not sendable as an HTTP header
    assert_clear_refusal(response)
    assert relay.stored() == before
