"""The schema framework: typed, frozen dataclass schemas read from TOML, and their reference.

Theory of operation
-------------------
A schema is a tree of frozen dataclasses whose fields are declared with :func:`option`
(a default, a one-line doc and optional limits). :func:`load_config` reads a TOML file with
``tomllib`` and walks the schema and the document side by side, collecting *every* problem
(unknown key, wrong type, value out of range, bad choice or pattern, missing required key,
a secret written into the file) before raising one :class:`ConfigError` that lists them
all, each naming the file and the dotted key path (``lanes[0].baud``; arrays count from 0).
A table's ``validate()`` method, if it has one, adds cross-field checks once the table's
own fields are valid.

Types a schema may use: ``str``, ``int``, ``float`` (an integer is accepted), ``bool`` (and
only ``bool``: ``1`` is not ``true``), ``Path`` (relative paths are taken relative to the
configuration file's directory), a nested schema (a TOML table), ``tuple[Schema, ...]``
(an array of tables), ``tuple[str, ...]`` or ``tuple[int, ...]`` (an array), and any of
these ``| None`` (leave the key out for ``None``: TOML has no null).

:func:`render_reference` turns a schema into the commented example TOML shipped in
``examples/``; a test keeps those files in step with the schemas.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import textwrap
import tomllib
import types
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

Schema = TypeVar("Schema")

MISSING: Any = dataclasses.MISSING
_METADATA_KEY = "pointd.option"
# Names that mark a key as holding a secret. A schema may only use such a name for a key
# that says where the secret is (``*_file``) or holds a one-way hash of it (``*_sha256``).
_SECRET_NAME = re.compile(r"token|secret|password|passwd|dsn|api[_-]?key|credential", re.I)
_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")

# Shared by the daemon's and the relay's schemas.
STORE_ID_PATTERN = r"[a-z0-9-]{1,20}"
HTTP_URL_PATTERN = r"https?://[^\s/?#]+(/[^\s]*)?"
# The exit code of every pointd command for a configuration (or credential) it cannot use:
# EX_CONFIG from sysexits.h, which systemd shows as status=78/CONFIG.
EXIT_CONFIG = 78


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists every reason found."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        count = len(self.problems)
        header = (
            "invalid configuration (1 problem):"
            if count == 1
            else f"invalid configuration ({count} problems):"
        )
        super().__init__("\n".join([header, *(f"  {p}" for p in self.problems)]))


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """The documentation and limits attached to one schema field by :func:`option`."""

    doc: str
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    pattern: str | None = None
    example: Any = None


def option(
    default: Any = MISSING,
    doc: str = "",
    *,
    min: float | None = None,
    max: float | None = None,
    choices: Iterable[Any] | None = None,
    pattern: str | None = None,
    example: Any = None,
) -> Any:
    """Declare a schema field: its default (``...`` or omitted means required) and its doc.

    ``example`` is what the reference file shows for a required or ``None``-default key.
    A table's default is a frozen instance, shared safely by every config built without it.
    """
    if not doc:
        raise TypeError("option() needs a doc: every configuration key is documented")
    if pattern is not None:
        re.compile(pattern)
    spec = OptionSpec(
        doc=doc,
        min=min,
        max=max,
        choices=None if choices is None else tuple(choices),
        pattern=pattern,
        example=example,
    )
    metadata = {_METADATA_KEY: spec}
    if default is MISSING or default is Ellipsis:
        return dataclasses.field(metadata=metadata)
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        # A table's defaults are shared, immutable: hand out the same frozen instance.
        return dataclasses.field(default_factory=lambda: default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def option_spec(field: dataclasses.Field[Any]) -> OptionSpec:
    """Return the :class:`OptionSpec` of a schema field, or fail if it lacks one."""
    spec = field.metadata.get(_METADATA_KEY)
    if not isinstance(spec, OptionSpec):
        raise TypeError(f"schema field {field.name!r} must be declared with option()")
    return spec


def _has_default(field: dataclasses.Field[Any]) -> bool:
    return field.default is not MISSING or field.default_factory is not MISSING


def _default_of(field: dataclasses.Field[Any]) -> Any:
    if field.default is not MISSING:
        return field.default
    factory: Any = field.default_factory
    return factory()


# --- type introspection -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Kind:
    """What a field's annotation asks for, reduced to what the loader needs."""

    base: Any  # str, int, float, bool, Path, a schema class, or tuple
    optional: bool = False
    item: Any = None  # for tuple: the item type (a scalar type or a schema class)


_SCALARS: tuple[type, ...] = (str, int, float, bool, Path)


def _kind_of(annotation: Any, where: str) -> _Kind:
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) != 1 or len(typing.get_args(annotation)) != 2:
            raise TypeError(f"{where}: only 'X | None' unions are supported")
        optional = True
        annotation = members[0]
        origin = typing.get_origin(annotation)
    if origin is tuple:
        args = typing.get_args(annotation)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"{where}: arrays are declared as tuple[X, ...]")
        item = args[0]
        if not (item in (str, int, float) or _is_schema(item)):
            raise TypeError(f"{where}: unsupported array item type {item!r}")
        return _Kind(tuple, optional, item)
    if annotation in _SCALARS or _is_schema(annotation):
        return _Kind(annotation, optional)
    raise TypeError(f"{where}: unsupported configuration type {annotation!r}")


def _is_schema(candidate: Any) -> bool:
    return isinstance(candidate, type) and dataclasses.is_dataclass(candidate)


def _fields(schema: type[Any]) -> list[tuple[dataclasses.Field[Any], _Kind, OptionSpec]]:
    hints = typing.get_type_hints(schema)
    rows = []
    for field in dataclasses.fields(schema):
        where = f"{schema.__name__}.{field.name}"
        rows.append((field, _kind_of(hints[field.name], where), option_spec(field)))
    return rows


# --- loading ------------------------------------------------------------------------------


class _Problems:
    """Collects problems as ``<source>: <key path>: <message>`` lines."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []

    def add(self, key: str, message: str) -> None:
        where = f"{self.source}: {key}" if key else self.source
        self.lines.append(f"{where}: {message}")


_INVALID = object()


def load_config(path: Path, schema: type[Schema]) -> Schema:
    """Read and validate a TOML file into ``schema``; raise ConfigError listing all problems."""
    source = str(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError([f"{source}: cannot read the file: {error.strerror or error}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ConfigError([f"{source}:{line}: not UTF-8 text"]) from None
    return parse_config(text, schema, source=source, base_dir=path.parent)


def parse_config(
    text: str, schema: type[Schema], *, source: str = "<string>", base_dir: Path | None = None
) -> Schema:
    """Validate TOML text into ``schema``; relative paths are taken from ``base_dir``."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([_toml_syntax_problem(source, error)]) from None
    return config_from_mapping(document, schema, source=source, base_dir=base_dir)


def config_from_mapping(
    document: Mapping[str, Any],
    schema: type[Schema],
    *,
    source: str = "<mapping>",
    base_dir: Path | None = None,
) -> Schema:
    """Validate an already-parsed document (as ``tomllib`` returns it) into ``schema``."""
    problems = _Problems(source)
    loader = _Loader(problems, base_dir if base_dir is not None else Path.cwd())
    value = loader.table(document, schema, "")
    if problems.lines or value is _INVALID:
        raise ConfigError(problems.lines)
    return typing.cast(Schema, value)


def _toml_syntax_problem(source: str, error: tomllib.TOMLDecodeError) -> str:
    message = str(error)
    position = _TOML_POSITION.search(message)
    if position is None:
        return f"{source}: TOML syntax error: {message}"
    reason = message[: position.start()].rstrip()
    return f"{source}:{position.group(1)}:{position.group(2)}: TOML syntax error: {reason}"


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _looks_secret(key: str) -> bool:
    return _SECRET_NAME.search(key) is not None


class _Loader:
    """Walks a document against a schema, reporting problems instead of stopping at one."""

    def __init__(self, problems: _Problems, base_dir: Path) -> None:
        self.problems = problems
        self.base_dir = base_dir

    def table(self, document: Any, schema: type[Any], prefix: str) -> Any:
        if not isinstance(document, Mapping):
            self.problems.add(prefix, f"must be a table, not {_toml_type(document)}")
            return _INVALID
        rows = _fields(schema)
        known = {field.name for field, _kind, _spec in rows}
        for key in document:
            if key not in known:
                self._unknown(prefix, key, document[key], known)
        values: dict[str, Any] = {}
        failed = False
        for field, kind, spec in rows:
            path = _join(prefix, field.name)
            if field.name in document:
                value = self.value(document[field.name], kind, spec, path, field.name)
            elif _has_default(field):
                value = _default_of(field)
            elif _is_schema(kind.base) and not kind.optional:
                # A missing required table: report its missing keys by their full paths.
                value = self.table({}, kind.base, path)
            else:
                self.problems.add(path, "required key is missing")
                value = _INVALID
            if value is _INVALID:
                failed = True
            else:
                values[field.name] = value
        if failed:
            return _INVALID
        instance = schema(**values)
        validate = getattr(instance, "validate", None)
        if callable(validate):
            for key, message in validate():
                self.problems.add(_join(prefix, key), message)
        return instance

    def _unknown(self, prefix: str, key: str, value: Any, known: set[str]) -> None:
        path = _join(prefix, key)
        if _looks_secret(key) and not isinstance(value, Mapping | list):
            hint = f"{key}_file" if f"{key}_file" in known else None
            where = f"; name the file holding it in {_join(prefix, hint)}" if hint else ""
            self.problems.add(
                path,
                "secrets never go in the configuration file: give them to the service as a "
                f"systemd credential (LoadCredential=) or in a file only it can read{where} "
                "(see docs/configuration.md, Secrets)",
            )
            return
        close = difflib.get_close_matches(key, sorted(known), n=1)
        suggestion = f"; did you mean {close[0]!r}?" if close else ""
        what = "table" if isinstance(value, Mapping) else "key"
        self.problems.add(path, f"unknown {what}{suggestion}")
        for inner_path in _secret_keys_inside(value, path):
            self.problems.add(
                inner_path,
                "secrets never go in the configuration file (see docs/configuration.md, Secrets)",
            )

    def value(self, raw: Any, kind: _Kind, spec: OptionSpec, path: str, name: str) -> Any:
        base = kind.base
        if _is_schema(base):
            return self.table(raw, base, path)
        if base is tuple:
            if not isinstance(raw, list):
                wanted = "an array of tables" if _is_schema(kind.item) else "an array"
                self.problems.add(path, f"must be {wanted}, not {_toml_type(raw)}")
                return _INVALID
            items = []
            for index, element in enumerate(raw):
                item_kind = _Kind(kind.item)
                items.append(self.value(element, item_kind, spec, f"{path}[{index}]", name))
            if any(item is _INVALID for item in items):
                return _INVALID
            return tuple(items)
        value = self.scalar(raw, base, path)
        if value is _INVALID:
            return _INVALID
        if base is Path and _looks_secret(name) and "/" not in str(raw):
            self.problems.add(
                path,
                "must be the path of the file holding the secret (an absolute path, or "
                "./name next to this file), never the secret itself",
            )
            return _INVALID
        return value if self.limits(value, spec, path) else _INVALID

    def scalar(self, raw: Any, base: Any, path: str) -> Any:
        if base is bool:
            if isinstance(raw, bool):
                return raw
            self.problems.add(path, f"must be true or false, not {_toml_type(raw)}")
        elif base is int:
            if isinstance(raw, int) and not isinstance(raw, bool):
                return raw
            self.problems.add(path, f"must be an integer, not {_toml_type(raw)}")
        elif base is float:
            if isinstance(raw, int | float) and not isinstance(raw, bool):
                if math.isfinite(raw):
                    return float(raw)
                self.problems.add(path, "must be a finite number")
            else:
                self.problems.add(path, f"must be a number, not {_toml_type(raw)}")
        elif base is str:
            if isinstance(raw, str):
                return raw
            self.problems.add(path, f"must be a string, not {_toml_type(raw)}")
        elif base is Path:
            if isinstance(raw, str) and raw:
                candidate = Path(raw)
                return candidate if candidate.is_absolute() else self.base_dir / candidate
            self.problems.add(path, f"must be a non-empty path string, not {_toml_type(raw)}")
        return _INVALID

    def limits(self, value: Any, spec: OptionSpec, path: str) -> bool:
        ok = True
        if spec.min is not None and isinstance(value, int | float) and value < spec.min:
            self.problems.add(path, f"must be at least {_number(spec.min)} (got {_number(value)})")
            ok = False
        if spec.max is not None and isinstance(value, int | float) and value > spec.max:
            self.problems.add(path, f"must be at most {_number(spec.max)} (got {_number(value)})")
            ok = False
        if spec.choices is not None and value not in spec.choices:
            listed = ", ".join(_toml_literal(choice) for choice in spec.choices)
            self.problems.add(path, f"must be one of {listed}")
            ok = False
        if (
            spec.pattern is not None
            and isinstance(value, str)
            and re.fullmatch(spec.pattern, value) is None
        ):
            self.problems.add(path, f"must match the pattern {spec.pattern}")
            ok = False
        return ok


def _secret_keys_inside(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            inner_path = f"{path}.{key}"
            if _looks_secret(key) and not isinstance(inner, Mapping | list):
                yield inner_path
            else:
                yield from _secret_keys_inside(inner, inner_path)
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from _secret_keys_inside(inner, f"{path}[{index}]")


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return "a date/time"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, float):
        return repr(value)
    return str(value)



# --- reference rendering ------------------------------------------------------------------


def render_reference(schema: type[Any]) -> str:
    """Render the commented example TOML documenting every key of ``schema``."""
    title = _first_line(schema.__doc__)
    lines = [f"# {title}", "#", *_REFERENCE_PREAMBLE]
    scalars, tables = _split_fields(schema)
    lines.extend(_render_scalars(scalars))
    for field, kind, spec in tables:
        lines.append("")
        lines.extend(_render_table(field.name, field, kind, spec))
    return "\n".join(lines).rstrip("\n") + "\n"


_REFERENCE_PREAMBLE = (
    "# Every key, its meaning, limits and default. Copy this file and edit the copy; lines",
    "# starting with '# key =' are optional keys left unset. Secrets never go in this",
    "# file: see docs/configuration.md. Generated from pointd/config/ by",
    "# render_reference(); a test fails when the two disagree.",
)


def _split_fields(
    schema: type[Any],
) -> tuple[list[tuple[dataclasses.Field[Any], _Kind, OptionSpec]], list[Any]]:
    scalars: list[tuple[dataclasses.Field[Any], _Kind, OptionSpec]] = []
    tables: list[Any] = []
    for row in _fields(schema):
        kind = row[1]
        is_table = _is_schema(kind.base) or (kind.base is tuple and _is_schema(kind.item))
        (tables if is_table else scalars).append(row)
    return scalars, tables


def _render_table(
    name: str, field: dataclasses.Field[Any], kind: _Kind, spec: OptionSpec
) -> list[str]:
    lines = [f"# {line}" for line in _wrap(spec.doc)]
    if _is_schema(kind.base):
        lines.append(f"[{name}]")
        scalars, nested = _split_fields(kind.base)
        if nested:
            raise TypeError(f"{name}: tables nested two levels deep are not supported")
        lines.extend(_render_scalars(scalars))
        return lines
    lines.append(f"# Repeat the [[{name}]] table once per entry.")
    # Show the default entries if the schema has some, else one entry built from examples;
    # ``example=()`` marks an array nobody needs by default: its entry is shown commented.
    entries = _default_of(field) if _has_default(field) else ()
    entry_lines: list[str] = []
    for entry in entries or (None,):
        entry_lines.append(f"[[{name}]]")
        scalars, _nested = _split_fields(kind.item)
        entry_lines.extend(_render_scalars(scalars, entry))
    if spec.example == ():
        entry_lines = [line if line.startswith("#") else f"# {line}" for line in entry_lines]
    return lines + entry_lines


def _render_scalars(rows: list[Any], instance: Any = None) -> list[str]:
    lines: list[str] = []
    for field, kind, spec in rows:
        lines.extend(f"# {line}" for line in _wrap(spec.doc))
        facts = _facts(field, kind, spec)
        if facts:
            lines.append(f"# ({facts})")
        lines.append(_assignment(field, spec, instance))
    return lines


def _facts(field: dataclasses.Field[Any], kind: _Kind, spec: OptionSpec) -> str:
    facts = []
    if not _has_default(field):
        facts.append("required")
    if spec.choices is not None:
        facts.append("one of " + ", ".join(_toml_literal(c) for c in spec.choices))
    if spec.min is not None and spec.max is not None:
        facts.append(f"{_number(spec.min)} to {_number(spec.max)}")
    elif spec.min is not None:
        facts.append(f"at least {_number(spec.min)}")
    elif spec.max is not None:
        facts.append(f"at most {_number(spec.max)}")
    if spec.pattern is not None:
        facts.append(f"pattern {spec.pattern}")
    if kind.optional:
        facts.append("optional")
    if _has_default(field) and not kind.optional:
        facts.append(f"default {_toml_value(_default_of(field))}")
    return "; ".join(facts)


def _assignment(field: dataclasses.Field[Any], spec: OptionSpec, instance: Any) -> str:
    name = field.name
    if instance is not None:
        value = getattr(instance, name)
        if value is None:
            return (
                f"# {name} = {_toml_value(spec.example)}"
                if spec.example is not None
                else f"# {name} ="
            )
        return f"{name} = {_toml_value(value)}"
    if not _has_default(field):
        if spec.example is None:
            raise TypeError(f"required key {name!r} needs an example= for the reference")
        return f"{name} = {_toml_value(spec.example)}"
    default = _default_of(field)
    if default is None:
        example = "" if spec.example is None else f" {_toml_value(spec.example)}"
        return f"# {name} ={example}"
    return f"{name} = {_toml_value(default)}"


def _toml_value(value: Any) -> str:
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return _toml_literal(value)


def _first_line(doc: str | None) -> str:
    stripped = (doc or "").strip()
    return stripped.splitlines()[0] if stripped else ""


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, width=_REFERENCE_WIDTH, break_on_hyphens=False)


_REFERENCE_WIDTH = 86  # "# " plus this stays within 88 columns


def duplicate_entries(
    entries: Sequence[Any], name: str, attribute: str
) -> Iterator[tuple[str, str]]:
    """A (key, problem) for every entry whose ``attribute`` repeats an earlier entry's."""
    first_seen: dict[Any, int] = {}
    for index, entry in enumerate(entries):
        value = getattr(entry, attribute)
        if value is None:
            continue
        if value in first_seen:
            yield (
                f"{name}[{index}].{attribute}",
                f"duplicate {attribute} (also in {name}[{first_seen[value]}])",
            )
        else:
            first_seen[value] = index

