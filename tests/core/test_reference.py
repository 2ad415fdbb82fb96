"""external_reference: the routable, per-attempt name journaled before every create."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pointd.core.reference import (
    MAX_LENGTH,
    ExternalReference,
    ExternalReferenceError,
    store_of,
)

MERCADO_PAGO_CHARSET = re.compile(r"[A-Za-z0-9_-]+")

references = st.builds(
    ExternalReference,
    store=st.from_regex(r"[a-z0-9-]{1,20}", fullmatch=True),
    lane=st.integers(1, 999),
    sale=st.from_regex(r"[A-Z0-9]{1,26}", fullmatch=True),
    attempt=st.integers(1, 99),
)


@given(references)
def test_every_reference_round_trips_within_mercado_pago_limits(ref: ExternalReference) -> None:
    text = str(ref)
    assert len(text) <= MAX_LENGTH
    assert MERCADO_PAGO_CHARSET.fullmatch(text)
    assert ExternalReference.parse(text) == ref
    assert store_of(text) == ref.store


def test_golden_reference() -> None:
    ref = ExternalReference(store="loja-centro", lane=3, sale="01JQ7Z4K8M2P", attempt=2)
    assert str(ref) == "pd1_loja-centro_3_01JQ7Z4K8M2P_2"


@pytest.mark.parametrize(
    "text",
    [
        "information",  # the seeds' example reference: not ours, so unroutable
        "pd1_store_0_ABC_1",  # lane 0
        "pd1_store_1_ABC_0",  # attempt 0
        "pd1_Store_1_ABC_1",  # upper-case store
        "pd1_store_01_ABC_1",  # leading zero
        "pd1_store_1_abc_1",  # lower-case sale
        "pd1_store_1_ABC_1_extra",
        "",
    ],
)
def test_foreign_or_malformed_references_are_refused(text: str) -> None:
    with pytest.raises(ExternalReferenceError):
        ExternalReference.parse(text)
    assert store_of(text) is None


def test_invalid_parts_cannot_be_built() -> None:
    with pytest.raises(ExternalReferenceError, match="store id"):
        ExternalReference(store="a_b", lane=1, sale="A", attempt=1)
    with pytest.raises(ExternalReferenceError, match="lane"):
        ExternalReference(store="a", lane=1000, sale="A", attempt=1)
