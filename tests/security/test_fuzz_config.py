"""The real daemon and relay schemas under arbitrary TOML: a config or a ConfigError, nothing else.

tests/config fuzzes the loader with a small schema and parsed mappings; here the input is
TOML text (garbage, and the shipped examples with values replaced, keys removed or added,
datetimes where numbers belong) loaded into ``DaemonConfig`` and ``RelayConfig``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pointd.config import ConfigError, DaemonConfig, RelayConfig, load_config, parse_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCHEMAS = {"pointd.toml": DaemonConfig, "relay.toml": RelayConfig}
FUZZ = settings(max_examples=80, deadline=None)


def toml_value(value: Any) -> str:
    """A TOML literal for a value tomllib could have produced."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def toml_document(document: dict[str, Any]) -> str:
    """TOML text for a document; every key written as ``key = literal`` (inline tables)."""
    return "".join(f"{json.dumps(key)} = {toml_value(value)}\n" for key, value in document.items())


scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.text(max_size=20),
    st.datetimes(max_value=dt.datetime(9999, 1, 1)).map(lambda d: d.replace(microsecond=0)),
    st.dates(),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8,
)


def paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into a parsed document, tables and array elements included."""
    found = [prefix] if prefix else []
    if isinstance(document, dict):
        for key, value in document.items():
            found += paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += paths(value, (*prefix, index))
    return found


def mutated(document: dict[str, Any], path: tuple[Any, ...], action: str, value: Any) -> None:
    """Replace, delete, or add an unknown sibling at ``path``, in place."""
    parent: Any = document
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if action == "replace":
        parent[last] = value
    elif action == "delete" and isinstance(parent, dict):
        del parent[last]
    elif isinstance(parent, dict):
        parent[f"{last}_unknown"] = value


def check(outcome: Any, schema: type[Any]) -> None:
    assert isinstance(outcome, schema | ConfigError), outcome
    if isinstance(outcome, ConfigError):
        assert outcome.problems, "a ConfigError must say what is wrong"
        assert all(isinstance(p, str) and p for p in outcome.problems)


def load(text: str, schema: type[Any]) -> Any:
    try:
        return parse_config(text, schema, source="fuzz.toml", base_dir=EXAMPLES)
    except ConfigError as error:
        return error


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@FUZZ
@given(data=st.data())
def test_mutated_examples_load_or_raise_config_error(name: str, data: st.DataObject) -> None:
    schema = SCHEMAS[name]
    document = tomllib.loads((EXAMPLES / name).read_text(encoding="utf-8"))
    for _ in range(data.draw(st.integers(1, 3))):
        candidates = paths(document)
        if not candidates:
            break
        mutated(
            document,
            data.draw(st.sampled_from(candidates)),
            data.draw(st.sampled_from(["replace", "delete", "add"])),
            data.draw(values),
        )
    check(load(toml_document(document), schema), schema)


@FUZZ
@given(text=st.text(alphabet=st.sampled_from('[]{}=".,\n #\'abcdelnorst_0123456789-+:TZ'),
                    max_size=200) | st.text(max_size=100))
def test_arbitrary_text_loads_or_raises_config_error(text: str) -> None:
    for schema in SCHEMAS.values():
        check(load(text, schema), schema)


@settings(max_examples=30, deadline=None)
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_in_a_file_raise_config_error(tmp_path_factory: Any, raw: bytes) -> None:
    path = tmp_path_factory.mktemp("cfg") / "pointd.toml"
    path.write_bytes(raw)
    try:
        outcome: Any = load_config(path, DaemonConfig)
    except ConfigError as error:
        outcome = error
    check(outcome, DaemonConfig)
