"""PersistentMap behaves exactly like a dict that is never mutated in place."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pointd.core.persistent import PersistentMap

keys = st.one_of(st.text(max_size=4), st.integers(-5, 5))
operations = st.lists(st.tuples(st.booleans(), keys, st.integers()), max_size=60)


@given(operations)
def test_matches_a_dict_model_and_never_changes_old_versions(
    ops: list[tuple[bool, str | int, int]],
) -> None:
    current: PersistentMap[str | int, int] = PersistentMap()
    model: dict[str | int, int] = {}
    history = [(current, dict(model))]
    for is_set, key, value in ops:
        if is_set or key not in model:
            current = current.set(key, value)
            model[key] = value
        else:
            current = current.delete(key)
            del model[key]
        history.append((current, dict(model)))
    for version, snapshot in history:
        assert dict(version.items()) == snapshot
        assert len(version) == len(snapshot)
        assert version == snapshot
        assert version == PersistentMap(snapshot)
        for key in snapshot:
            assert key in version
            assert version[key] == snapshot[key]


def test_missing_keys_and_foreign_types() -> None:
    empty: PersistentMap[str, int] = PersistentMap()
    with pytest.raises(KeyError):
        empty["x"]
    with pytest.raises(KeyError):
        empty.delete("x")
    assert 1.5 not in empty
    assert empty.get("x") is None
    assert empty != 3
    assert repr(empty.set("a", 1)) == "PersistentMap({'a': 1})"


def test_iteration_order_does_not_depend_on_insertion_order() -> None:
    one = PersistentMap({"a": 1, "b": 2, "c": 3})
    two = PersistentMap({"c": 3, "a": 1}).set("b", 2)
    assert list(one) == list(two)
