"""The signature digest, computed from a keyed HMAC state copied per message, equals the
one-shot HMAC-SHA256 of the manifest for any secret and manifest, whichever secrets were
used before (the keyed states are cached per secret and must never carry a message over)."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from pointd.cloud.signature import digest, manifest, sign

_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FFF), max_size=40)


def one_shot(secret: str, *, data_id: str | None, request_id: str | None, ts: str) -> str:
    message = manifest(data_id=data_id, request_id=request_id, ts=ts).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


@given(
    st.lists(
        st.tuples(
            # More secrets than the cache keeps, so that evicted ones come back too.
            st.sampled_from([f"secret-{n}" for n in range(12)]) | _TEXT,
            st.none() | _TEXT,
            st.none() | _TEXT,
            st.integers(min_value=0, max_value=10**13).map(str),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_digest_is_the_one_shot_hmac(calls: list[tuple[str, str | None, str | None, str]]) -> None:
    for secret, data_id, request_id, ts in calls:
        expected = one_shot(secret, data_id=data_id, request_id=request_id, ts=ts)
        assert digest(secret, data_id=data_id, request_id=request_id, ts=ts) == expected


def test_a_known_manifest() -> None:
    # From `printf 'id:123;request-id:abc;ts:1700000000;' | openssl dgst -sha256 -hmac
    # s3cret`; the same value twice shows the cached keyed state is not consumed.
    expected = "ts=1700000000,v1=96d6e2b30c134c2c73b7465e1d49c2ea8db7687b994b8c30e3b85fc0e6deddd4"
    for _ in range(2):
        assert sign("s3cret", data_id="123", request_id="abc", ts="1700000000") == expected
