"""load_config and friends: every problem class is reported, all at once, by file and key."""


from __future__ import annotations

import dataclasses
import math
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pointd.config import (
    ConfigError,
    config_from_mapping,
    load_config,
    option,
    parse_config,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Lane:
    """A lane."""

    number: int = option(..., "Lane number.", min=1, max=999, example=1)
    baud: int = option(9600, "Speed.", choices=(9600, 19200, 38400))
    terminal: str | None = option(None, "Pinned device.", example="DEV1")


@dataclass(frozen=True, slots=True, kw_only=True)
class Store:
    """The store."""

    id: str = option(..., "Store id.", pattern=r"[a-z0-9-]{1,20}", example="s-1")
    collector_id: int = option(..., "Collector.", min=1, example=7)


@dataclass(frozen=True, slots=True, kw_only=True)
class Timers:
    """Timers."""

    poll_fallback_after: float = option(10.0, "Poll after.", min=1, max=600)
    mode: str = option("auto", "Mode.", choices=("auto", "json"))
    enabled: bool = option(True, "On or off.")


@dataclass(frozen=True, slots=True, kw_only=True)
class Files:
    """Paths and secrets."""

    journal: Path = option(Path("/var/lib/x.sqlite3"), "Journal.")
    token_file: Path | None = option(None, "Token file.", example="/etc/x/token")
    tags: tuple[str, ...] = option((), "Tags.")


@dataclass(frozen=True, slots=True, kw_only=True)
class Top:
    """A test schema."""

    store: Store = option(..., "Store.")
    timers: Timers = option(Timers(), "Timers.")
    files: Files = option(Files(), "Files.")
    lanes: tuple[Lane, ...] = option((), "Lanes.")

    def validate(self) -> Iterator[tuple[str, str]]:
        seen: dict[int, int] = {}
        for index, lane in enumerate(self.lanes):
            if lane.number in seen:
                yield f"lanes[{index}].number", f"duplicate (also lanes[{seen[lane.number]}])"
            seen.setdefault(lane.number, index)


GOOD = """
[store]
id = "s-1"
collector_id = 42
"""


def problems_of(text: str, source: str = "pointd.toml") -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, Top, source=source)
    return caught.value.problems


def test_a_valid_file_loads_into_a_frozen_tree_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "pointd.toml"
    path.write_text(GOOD + "[[lanes]]\nnumber = 3\n[timers]\npoll_fallback_after = 5\n")
    cfg = load_config(path, Top)
    assert cfg.store == Store(id="s-1", collector_id=42)
    assert cfg.lanes == (Lane(number=3),)
    assert cfg.timers.poll_fallback_after == 5.0
    assert isinstance(cfg.timers.poll_fallback_after, float)
    assert cfg.files.token_file is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.store.id = "other"  # type: ignore[misc]


def test_every_problem_is_reported_at_once_with_file_and_dotted_key() -> None:
    text = """
[store]
id = "Bad Id!"
[timers]
poll_fallback_after = 601
mode = "xml"
enabled = 1
mdoe = 3
[[lanes]]
number = 1
[[lanes]]
number = 2
[[lanes]]
number = 0
baud = 9601
"""
    problems = problems_of(text)
    assert set(problems) == {
        "pointd.toml: store.id: must match the pattern [a-z0-9-]{1,20}",
        "pointd.toml: store.collector_id: required key is missing",
        "pointd.toml: timers.mdoe: unknown key; did you mean 'mode'?",
        "pointd.toml: timers.poll_fallback_after: must be at most 600 (got 601)",
        'pointd.toml: timers.mode: must be one of "auto", "json"',
        "pointd.toml: timers.enabled: must be true or false, not an integer",
        "pointd.toml: lanes[2].number: must be at least 1 (got 0)",
        "pointd.toml: lanes[2].baud: must be one of 9600, 19200, 38400",
    }


def test_the_error_message_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("[store]\nid = 5\n", Top, source="p.toml")
    message = str(caught.value)
    assert message.startswith("invalid configuration (2 problems):")
    assert "p.toml: store.id: must be a string, not an integer" in message
    assert "p.toml: store.collector_id: required key is missing" in message


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("collector_id = true", "store.collector_id: must be an integer, not a boolean"),
        ("collector_id = 1.5", "store.collector_id: must be an integer, not a float"),
        ('collector_id = "42"', "store.collector_id: must be an integer, not a string"),
        ("collector_id = 0", "store.collector_id: must be at least 1 (got 0)"),
        ("collector_id = [1]", "store.collector_id: must be an integer, not an array"),
        ("collector_id = 1979-05-27", "store.collector_id: must be an integer, not a date/time"),
    ],
)
def test_integers_refuse_booleans_floats_and_strings(line: str, problem: str) -> None:
    assert problems_of(f'[store]\nid = "s"\n{line}\n') == (f"pointd.toml: {problem}",)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("true", "must be a number, not a boolean"),
        ('"10"', "must be a number, not a string"),
        ("nan", "must be a finite number"),
        ("inf", "must be a finite number"),
        ("0.5", "must be at least 1 (got 0.5)"),
    ],
)
def test_floats_take_integers_but_not_booleans_strings_or_non_finite(
    value: str, problem: str
) -> None:
    assert problems_of(f"{GOOD}[timers]\npoll_fallback_after = {value}\n") == (
        f"pointd.toml: timers.poll_fallback_after: {problem}",
    )


def test_an_integer_is_accepted_where_a_float_is_wanted() -> None:
    cfg = parse_config(f"{GOOD}[timers]\npoll_fallback_after = 7\n", Top)
    assert cfg.timers.poll_fallback_after == 7.0
    assert type(cfg.timers.poll_fallback_after) is float


def test_a_missing_required_table_reports_each_required_key() -> None:
    assert problems_of("") == (
        "pointd.toml: store.id: required key is missing",
        "pointd.toml: store.collector_id: required key is missing",
    )


def test_unknown_tables_and_keys_are_errors_naming_them() -> None:
    problems = problems_of(
        f"typo_top = 1\n{GOOD}[strore]\nid = 'x'\n[[lanes]]\nnumber = 1\nbuad = 9600\n"
    )
    assert set(problems) == {
        "pointd.toml: typo_top: unknown key",
        "pointd.toml: strore: unknown table; did you mean 'store'?",
        "pointd.toml: lanes[0].buad: unknown key; did you mean 'baud'?",
    }


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (f"lanes = 5\n{GOOD}", "lanes: must be an array of tables, not an integer"),
        (f"{GOOD}[lanes]\nnumber = 1\n", "lanes: must be an array of tables, not a table"),
        (f"lanes = [1]\n{GOOD}", "lanes[0]: must be a table, not an integer"),
        ("store = 'x'\n", "store: must be a table, not a string"),
        (f"{GOOD}[files]\ntags = 'a'\n", "files.tags: must be an array, not a string"),
        (f"{GOOD}[files]\ntags = ['a', 2]\n", "files.tags[1]: must be a string, not an integer"),
        (
            f"{GOOD}[files]\njournal = ''\n",
            "files.journal: must be a non-empty path string, not a string",
        ),
    ],
)
def test_wrong_shapes_are_reported(text: str, problem: str) -> None:
    assert problems_of(text) == (f"pointd.toml: {problem}",)


def test_validate_hook_reports_cross_field_problems_by_key() -> None:
    lanes = "".join(f"[[lanes]]\nnumber = {n}\n" for n in (4, 5, 4))
    problems = problems_of(f"{GOOD}{lanes}")
    assert problems == ("pointd.toml: lanes[2].number: duplicate (also lanes[0])",)


def test_validate_hook_does_not_run_on_a_table_with_invalid_fields() -> None:
    problems = problems_of(f"{GOOD}[[lanes]]\nnumber = 4\n[[lanes]]\nnumber = 4\nbaud = 1\n")
    assert problems == ("pointd.toml: lanes[1].baud: must be one of 9600, 19200, 38400",)


def test_toml_syntax_errors_name_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "pointd.toml"
    path.write_text('[store]\nid = "s"\ncollector_id = = 3\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, Top)
    (problem,) = caught.value.problems
    assert problem.startswith(f"{path}:3:16: TOML syntax error: ")


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path, Top)
    assert caught.value.problems == (f"{path}: cannot read the file: No such file or directory",)


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[store]\nid = "caf\xe9"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, Top)
    assert caught.value.problems == (f"{path}:2: not UTF-8 text",)


def test_relative_paths_are_taken_from_the_config_file_directory(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "pointd.toml"
    path.parent.mkdir()
    path.write_text(f"{GOOD}[files]\njournal = 'data/j.sqlite3'\ntoken_file = './tok'\n")
    cfg = load_config(path, Top)
    assert cfg.files.journal == tmp_path / "etc" / "data" / "j.sqlite3"
    assert cfg.files.token_file == tmp_path / "etc" / "tok"


SECRET_VALUE = "APP_USR-1234567890123456-112233-deadbeefdeadbeefdeadbeefdeadbeef-987654321"


@pytest.mark.parametrize("key", ["access_token", "webhook_secret", "password", "postgres_dsn"])
def test_a_secret_in_the_file_is_refused_and_never_echoed(key: str) -> None:
    problems = problems_of(f'{GOOD}[files]\n{key} = "{SECRET_VALUE}"\n')
    (problem,) = problems
    assert problem.startswith(f"pointd.toml: files.{key}: secrets never go in the configuration")
    assert "LoadCredential=" in problem
    assert SECRET_VALUE not in problem


def test_a_secret_suggests_the_matching_file_key() -> None:
    (problem,) = problems_of(f'{GOOD}[files]\ntoken = "{SECRET_VALUE}"\n')
    assert "name the file holding it in files.token_file" in problem


def test_secrets_inside_unknown_tables_are_called_out() -> None:
    problems = problems_of(f'{GOOD}[mercadopago]\nclient_secret = "{SECRET_VALUE}"\n')
    assert problems == (
        "pointd.toml: mercadopago: unknown table",
        "pointd.toml: mercadopago.client_secret: secrets never go in the configuration file "
        "(see docs/configuration.md, Secrets)",
    )


def test_a_secret_pasted_into_a_file_key_is_refused_without_echo() -> None:
    (problem,) = problems_of(f'{GOOD}[files]\ntoken_file = "{SECRET_VALUE}"\n')
    assert problem.startswith("pointd.toml: files.token_file: must be the path of the file")
    assert SECRET_VALUE not in problem


def test_no_problem_message_repeats_a_string_value() -> None:
    marker = "Zq9-marker-value"
    text = f"""
[store]
id = "{marker}"
collector_id = "{marker}"
[timers]
mode = "{marker}"
unknown = "{marker}"
[[lanes]]
number = "{marker}"
"""
    error_text = "\n".join(problems_of(text))
    assert marker not in error_text
    assert error_text.count("\n") == 4


def test_option_requires_a_doc() -> None:
    with pytest.raises(TypeError, match="needs a doc"):
        option(1)


def test_a_schema_field_without_option_is_refused() -> None:
    @dataclass(frozen=True)
    class Undocumented:
        value: int = 1

    with pytest.raises(TypeError, match="must be declared with option"):
        config_from_mapping({}, Undocumented)


def test_unsupported_schema_types_are_refused() -> None:
    @dataclass(frozen=True)
    class Odd:
        value: dict[str, int] = option(None, "A dict.")

    with pytest.raises(TypeError, match="unsupported configuration type"):
        config_from_mapping({}, Odd)


# Values TOML can produce, to throw at the loader.
toml_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=12),
)
toml_keys = st.sampled_from(
    [
        "store",
        "id",
        "collector_id",
        "timers",
        "mode",
        "lanes",
        "number",
        "baud",
        "files",
        "token_file",
        "tags",
        "x",
        "secret",
    ]
) | st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=8)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(toml_keys, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(toml_keys, toml_values, max_size=6))
def test_any_document_either_loads_or_raises_config_error(document: dict[str, object]) -> None:
    outcome: Top | ConfigError
    try:
        outcome = config_from_mapping(document, Top)
    except ConfigError as error:
        outcome = error
    if isinstance(outcome, ConfigError):
        assert outcome.problems
        assert all(problem.startswith("<mapping>: ") for problem in outcome.problems)
    else:
        assert all(1 <= lane.number <= 999 for lane in outcome.lanes)
        assert math.isfinite(outcome.timers.poll_fallback_after)
