"""What one request costs the relay's event loop, whatever its body: CPU time against a budget.

The budget is derived from a calibration measured in the same run (a fixed, linear
workload on a benign body of the same size), and is generous: it tells linear, bounded
reading (well under the budget on any machine) from the quadratic reading main had (an
unsigned 52 KB body of escaped quotes took 5.4 s of CPU there, 104 KB 22 s). CPU time of
this thread is measured, not wall time, so a busy machine does not make the test flaky;
timing figures themselves are measured in bench/relay_hostile.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pointd.cloud.signature import sign
from pointd.relay import intake
from pointd.relay.errors import RequestRefused
from pointd.relay.notification import ID_SCAN_LIMIT, classify, read_body
from pointd.relay.storage import Incoming
from tests.security.hostile_bodies import crafted_bodies

SECRET = "cost-test-secret"
NOW = 1_763_000_000.0
BODY_LIMIT = 262144  # intake.body_limit's default
# A request may cost at most this many calibrations (one calibration is a strict parse and
# a sha256 of a benign body of BODY_LIMIT bytes: about 1 ms on a 2-core VM).
BUDGET_FACTOR = 40
POLICY = intake.IntakePolicy(
    secret=SECRET, signature_required=True, window_seconds=600.0, stores=frozenset({"store-a"})
)


def _cpu(work: Callable[[], object]) -> float:
    started = time.thread_time()
    work()
    return time.thread_time() - started


@pytest.fixture(scope="module")
def budget() -> float:
    """BUDGET_FACTOR calibrations, the best of several runs."""
    benign = json.dumps([f"item-{n:06d}" for n in range(BODY_LIMIT // 14)]).encode()[:BODY_LIMIT]
    benign = benign[: benign.rfind(b",")] + b"]"

    def calibration() -> None:
        json.loads(benign)
        hashlib.sha256(benign).digest()

    return BUDGET_FACTOR * min(_cpu(calibration) for _ in range(7))


def _signed_headers(data_id: str) -> dict[str, str]:
    ts = str(int(NOW))
    return {
        "x-request-id": "rq-cost",
        "x-signature": sign(SECRET, data_id=data_id, request_id="rq-cost", ts=ts),
    }


def admit(query: dict[str, str], headers: dict[str, str], body: bytes) -> Incoming:
    """Steps 3 to 6 of the intake, as the service runs them on a body it has read."""
    verified = intake.decide_signature(query, headers, body[:ID_SCAN_LIMIT], NOW, POLICY)
    return intake.admit(query, headers, body, NOW, POLICY, verified=verified)


def _admit_cost(body: bytes, query: dict[str, str], headers: dict[str, str]) -> float:
    def work() -> None:
        with contextlib.suppress(RequestRefused):
            admit(query, headers, body)

    return _cpu(work)


CASES = crafted_bodies(BODY_LIMIT)


@pytest.mark.parametrize("name", sorted(CASES))
def test_reading_a_crafted_body_stays_within_the_budget(name: str, budget: float) -> None:
    # classify is the reader main ran on every body before any check; at 52 KB the
    # escaped-quotes body alone cost 5.4 s of CPU there.
    body = CASES[name][:52_000]
    assert _cpu(lambda: classify(body, {})) <= budget, name
    full = CASES[name]
    assert _cpu(lambda: classify(full, {})) <= budget, name


@pytest.mark.parametrize("name", sorted(CASES))
def test_admission_of_a_crafted_body_stays_within_the_budget(name: str, budget: float) -> None:
    body = CASES[name]
    unsigned = _admit_cost(body, {"data.id": "1", "type": "payment"}, {})
    forged = _admit_cost(
        body,
        {"data.id": "1", "type": "payment"},
        {"x-request-id": "rq-cost", "x-signature": f"ts={int(NOW)},v1={'0' * 64}"},
    )
    ipn = _admit_cost(body[: intake.UNSIGNED_BODY_LIMIT], {"topic": "delivery_cancellation"}, {})
    signed = _admit_cost(body, {"data.id": "1", "type": "payment"}, _signed_headers("1"))
    costs = {"unsigned": unsigned, "forged": forged, "ipn": ipn, "signed": signed}
    for what, cost in costs.items():
        assert cost <= budget, (name, what, cost, budget)


def test_an_unsigned_body_is_refused_before_it_is_read() -> None:
    # Whatever the body, a webhook without a valid signature is refused by the header and
    # the MACs alone: the answer is the same for a body no reader could parse.
    for body in (CASES["escaped-quotes"], b"{}"):
        with pytest.raises(RequestRefused) as refused:
            admit({"data.id": "1", "type": "payment"}, {}, body)
        assert refused.value.status == 401


# Bodies made by repeating a short run of JSON punctuation up to the body limit, after a
# prefix that steers the reader (a leading-zero number forces the lenient path, a quote
# starts a string, a brace an object).
units = st.text(alphabet='"\\{}[]:,0123456789 idaeE.-u', min_size=1, max_size=8)
prefixes = st.sampled_from(['', '"', "{", "[", '{"caller_id": 0', '{"id": "', '"a": 01, '])


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(prefix=prefixes, unit=units, size=st.integers(1, BODY_LIMIT), ipn=st.booleans())
def test_fuzzed_bodies_stay_within_the_budget(
    budget: float, prefix: str, unit: str, size: int, ipn: bool
) -> None:
    body = (prefix + unit * (size // len(unit) + 1)).encode()[:size]
    if ipn:
        query = {"topic": "delivery_cancellation", "id": "1"}
        body = body[: intake.UNSIGNED_BODY_LIMIT]
        headers: dict[str, str] = {}
    else:
        query = {"data.id": "1", "type": "payment"}
        headers = _signed_headers("1")
    assert _admit_cost(body, query, headers) <= budget
    assert _cpu(lambda: read_body(body)) <= budget


def test_a_large_heap_does_not_make_a_body_cost_a_full_collection(budget: float) -> None:
    # A long-running relay holds many objects; a body of many small arrays makes the parser
    # allocate enough containers to set off a full collection of all of them, mid-request.
    heap = [[None] for _ in range(1_000_000)]
    body = CASES["empty-lists"][:65536]
    costs = [_cpu(lambda: classify(body, {})) for _ in range(40)]
    del heap
    assert max(costs) <= budget, (max(costs), budget)
