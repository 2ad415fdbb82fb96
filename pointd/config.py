"""Configuration: typed, frozen schemas read from TOML, and the secrets kept out of it.

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

Secrets (access token, webhook secret, store and admin tokens, a DSN with a password)
never live in the TOML. The file names where they are: :func:`read_secret` takes them from
systemd's ``$CREDENTIALS_DIRECTORY`` (``LoadCredential=``) first, else from a file that
only the service's user may read. A secret travels as a :class:`Secret`, whose repr never
shows it, and every secret read is registered with the log redaction so that it cannot
reach a log line even by accident.

:func:`render_reference` turns a schema into the commented example TOML shipped in
``examples/``; a test keeps those files in step with the schemas.
"""


from __future__ import annotations

import dataclasses
import difflib
import hmac
import json
import math
import os
import re
import stat
import sys
import textwrap
import tomllib
import types
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pointd.logging import register_secret

Schema = TypeVar("Schema")

MISSING: Any = dataclasses.MISSING
_METADATA_KEY = "pointd.option"
# Names that mark a key as holding a secret. A schema may only use such a name for a key
# that says where the secret is (``*_file``) or holds a one-way hash of it (``*_sha256``).
_SECRET_NAME = re.compile(r"token|secret|password|passwd|dsn|api[_-]?key|credential", re.I)
_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")
_CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_CREDENTIALS_DIRECTORY = "CREDENTIALS_DIRECTORY"
_INSECURE_MODE_BITS = 0o077


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


class CredentialError(ConfigError):
    """A secret could not be read; the message names the credential, never its value."""


class Secret:
    """A secret value whose repr and str never show it; ``reveal()`` returns it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret itself, for the one place that must send it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return _constant_time_equal(self._value, other._value)

    def __hash__(self) -> int:
        return hash(Secret)

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError("a Secret cannot be pickled")

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, _memo: dict[int, Any]) -> Secret:
        return self


def _constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


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


# --- secrets ------------------------------------------------------------------------------


def read_secret(name: str, *, file: Path | None = None) -> Secret:
    """Read credential ``name`` from $CREDENTIALS_DIRECTORY, else from ``file`` (mode 0600).

    Raises CredentialError when neither has it, the file is readable or writable by group
    or others, or the value is empty. The secret is registered with the log redaction.
    """
    if _CREDENTIAL_NAME.fullmatch(name) is None:
        raise ValueError(f"not a credential name: {name!r}")
    directory = os.environ.get(_CREDENTIALS_DIRECTORY)
    if directory:
        candidate = Path(directory) / name
        if candidate.exists():
            # systemd made this file for this unit only; its mode is systemd's business.
            return _secret_from(_read_bytes(name, candidate, check_mode=False), name, candidate)
    if file is None:
        where = f"${_CREDENTIALS_DIRECTORY}/{name}" if directory else f"${_CREDENTIALS_DIRECTORY}"
        raise CredentialError(
            [
                f"credential {name}: not found: {where} does not provide it and no file is "
                "configured for it (use LoadCredential= in the unit, or the *_file key)"
            ]
        )
    return _secret_from(_read_bytes(name, file, check_mode=True), name, file)


def _read_bytes(name: str, path: Path, *, check_mode: bool) -> bytes:
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise CredentialError(
            [f"credential {name}: cannot open {path}: {error.strerror or error}"]
        ) from None
    try:
        # Check the mode of the file actually opened, not of whatever the path names later.
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise CredentialError([f"credential {name}: {path} is not a regular file"])
        mode = stat.S_IMODE(status.st_mode)
        if check_mode and mode & _INSECURE_MODE_BITS:
            raise CredentialError(
                [
                    f"credential {name}: {path} has mode {mode:04o}, which lets group or "
                    f"others read or change it; run: chmod 600 {path}"
                ]
            )
        chunks = []
        while chunk := os.read(descriptor, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(descriptor)


def _secret_from(data: bytes, name: str, path: Path) -> Secret:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialError([f"credential {name}: {path} is not UTF-8 text"]) from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise CredentialError([f"credential {name}: {path} is empty"])
    register_secret(text)
    return Secret(text)


def read_optional_secret(name: str, *, file: Path | None = None) -> Secret | None:
    """Like :func:`read_secret`, but None when neither the credential nor a file is given."""
    directory = os.environ.get(_CREDENTIALS_DIRECTORY)
    provided = bool(directory) and (Path(str(directory)) / name).exists()
    if file is None and not provided:
        return None
    return read_secret(name, file=file)


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
    "# file: see docs/configuration.md. Generated from pointd/config.py by",
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
    # Show the default entries if the schema has some, else one entry built from examples.
    entries = _default_of(field) if _has_default(field) else ()
    for entry in entries or (None,):
        lines.append(f"[[{name}]]")
        scalars, _nested = _split_fields(kind.item)
        lines.extend(_render_scalars(scalars, entry))
    return lines


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


# --- the daemon's schema --------------------------------------------------------------------

DEFAULT_DAEMON_CONFIG = Path("/etc/pointd/pointd.toml")
DEFAULT_RELAY_CONFIG = Path("/etc/pointd/relay.toml")

# systemd credential names (LoadCredential=<name>:<file>), not credentials; the
# configuration guide lists them.
MP_ACCESS_TOKEN = "mp_access_token"  # noqa: S105
MP_WEBHOOK_SECRET = "mp_webhook_secret"  # noqa: S105
RELAY_STORE_TOKEN = "relay_store_token"  # noqa: S105
RELAY_POSTGRES_DSN = "relay_postgres_dsn"
RELAY_ADMIN_TOKEN = "relay_admin_token"  # noqa: S105

STORE_ID_PATTERN = r"[a-z0-9-]{1,20}"
SITES = ("MLA", "MLB", "MLM")
CURRENCY_BY_SITE = {"MLA": "ARS", "MLB": "BRL", "MLM": "MXN"}
BAUD_RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
_HTTP_URL = r"https?://[^\s/?#]+(/[^\s]*)?"
_GROUP_NAME = r"[a-z_][a-z0-9_-]{0,31}"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
MAX_LANE = 999


def _plain_http_off_loopback(url: str) -> bool:
    if not url.startswith("http://"):
        return False
    host = url[len("http://") :].split("/", 1)[0]
    host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return host not in _LOOPBACK_HOSTS


_HTTPS_ONLY = "must use https:// (plain http:// is accepted only on loopback, for simulators)"


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreConfig:
    """The store this PC belongs to and the Mercado Pago account that must get the money."""

    id: str = option(
        ...,
        "Store id: routes this store's notifications through the relay and is embedded in "
        "every external_reference.",
        pattern=STORE_ID_PATTERN,
        example="centro-01",
    )
    site: str = option(
        ...,
        "Mercado Pago site of the account; fixes the currency (MLA=ARS, MLB=BRL, MLM=MXN) "
        "and the amount limits.",
        choices=SITES,
        example="MLA",
    )
    collector_id: int = option(
        ...,
        "User id of the Mercado Pago account payments must belong to; a payment collected "
        "by any other account never releases goods.",
        min=1,
        example=123456789,
    )
    language: str = option(
        "es", "Language of the prompts on the register.", choices=("es", "pt", "en")
    )
    tips_allowed: bool = option(
        False,
        "Whether a payment for more than the sale (a tip the customer added on the terminal) "
        "hands over the goods. Off: only the exact amount does, and more waits for a "
        "supervisor.",
    )

    @property
    def currency(self) -> str:
        """ISO currency of every sale at this store, from its site."""
        return CURRENCY_BY_SITE[self.site]


@dataclass(frozen=True, slots=True, kw_only=True)
class CloudConfig:
    """How the daemon reaches the Mercado Pago API."""

    base_url: str = option(
        "https://api.mercadopago.com",
        "Mercado Pago API base URL; point it at the cloud simulator for demos and tests.",
        pattern=_HTTP_URL,
    )
    backend: str = option(
        "payment-intent",
        "API used to charge: the Point payment-intent API, or the Orders API (idempotency "
        "keys, clearer states; not every terminal supports it).",
        choices=("payment-intent", "orders"),
    )
    access_token_file: Path | None = option(
        None,
        f"File holding the access token (mode 0600), used only when the systemd credential "
        f"{MP_ACCESS_TOKEN} is absent.",
        example="/etc/pointd/credentials/mp_access_token",
    )
    webhook_secret_file: Path | None = option(
        None,
        f"File holding the webhook secret (mode 0600), used only when the systemd credential "
        f"{MP_WEBHOOK_SECRET} is absent; only needed to check x-signature locally.",
        example="/etc/pointd/credentials/mp_webhook_secret",
    )
    connect_timeout: float = option(
        3.0,
        "Seconds to open a connection. Nothing has been sent yet, so a failure here is "
        "safe to retry; keep it short so the cashier is not left waiting.",
        min=0.1,
        max=60,
    )
    read_timeout: float = option(
        10.0,
        "Seconds to wait for each response read. After a create was sent, running out makes "
        "the outcome unknown and starts reconciliation, so do not set it too low.",
        min=1,
        max=120,
    )
    write_timeout: float = option(
        10.0,
        "Seconds to send a request body; requests are small, so this only trips on a stalled link.",
        min=1,
        max=120,
    )
    pool_timeout: float = option(
        3.0,
        "Seconds to wait for a free connection from the pool before failing without sending.",
        min=0.1,
        max=60,
    )

    def read_access_token(self) -> Secret:
        """Read the Mercado Pago access token (credential or file)."""
        return read_secret(MP_ACCESS_TOKEN, file=self.access_token_file)

    def read_webhook_secret(self) -> Secret | None:
        """Read the webhook secret, or None when none is configured."""
        return read_optional_secret(MP_WEBHOOK_SECRET, file=self.webhook_secret_file)

    def validate(self) -> Iterator[tuple[str, str]]:
        """Refuse plain http to anything but loopback."""
        if _plain_http_off_loopback(self.base_url):
            yield "base_url", _HTTPS_ONLY


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayLinkConfig:
    """The store's connection to the pointd relay that forwards Mercado Pago notifications."""

    url: str | None = option(
        None,
        "Relay base URL. Leave unset to run without a relay: the daemon then learns outcomes "
        "by polling the API only (slower, more API calls).",
        pattern=_HTTP_URL,
        example="https://relay.example.com",
    )
    store_token_file: Path | None = option(
        None,
        f"File holding this store's relay token (mode 0600), used only when the systemd "
        f"credential {RELAY_STORE_TOKEN} is absent.",
        example="/etc/pointd/credentials/relay_store_token",
    )
    delivery: str = option(
        "stream",
        "How notifications come from the relay: stream (one long-lived event stream, each "
        "notification pushed as the relay commits it; falls back to long-poll by itself when "
        "the stream is refused or a proxy buffers it) or long-poll (always; for a proxy that "
        "breaks long-lived responses in other ways).",
        choices=("stream", "long-poll"),
    )
    canary_interval: float = option(
        60.0,
        "Seconds between canary notifications the daemon asks the relay to echo, proving the "
        "whole notification path works.",
        min=5,
        max=3600,
    )
    silence_alarm: float = option(
        180.0,
        "Seconds without any event or canary from the relay before the daemon raises an "
        "alarm and falls back to polling; must exceed canary_interval.",
        min=10,
        max=86400,
    )
    reconnect_max_backoff: float = option(
        30.0,
        "Longest wait, in seconds, between reconnection attempts to the relay.",
        min=1,
        max=600,
    )

    def read_store_token(self) -> Secret:
        """Read this store's relay token (credential or file)."""
        return read_secret(RELAY_STORE_TOKEN, file=self.store_token_file)

    def validate(self) -> Iterator[tuple[str, str]]:
        """Keep the alarm longer than the canary period, and the URL on https."""
        if self.silence_alarm <= self.canary_interval:
            yield "silence_alarm", "must be greater than canary_interval"
        if self.url is not None and _plain_http_off_loopback(self.url):
            yield "url", _HTTPS_ONLY


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalConfig:
    """The write-ahead journal of every sale step (SQLite)."""

    path: Path = option(
        Path("/var/lib/pointd/journal.sqlite3"),
        "SQLite journal file; its directory must be writable by the service "
        "(StateDirectory=pointd).",
    )
    retention_days: int = option(
        400,
        "Days finished sales are kept, so a dispute about a sale from up to a year ago can "
        "still be answered from the journal.",
        min=30,
        max=3650,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlConfig:
    """The technician's control socket (pointctl)."""

    socket: Path = option(Path("/run/pointd/control.sock"), "Unix socket path for pointctl.")
    read_group: str = option(
        "pointd", "Group whose members may use read-only methods.", pattern=_GROUP_NAME
    )
    admin_group: str = option(
        "pointd-admin",
        "Group whose members (and root) may use mutating methods such as a supervisor override.",
        pattern=_GROUP_NAME,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class TimersConfig:
    """Timers of the sale state machine, in seconds unless named otherwise."""

    poll_fallback_after: float = option(
        10.0,
        "Seconds without a notification about a live sale before the daemon asks the API itself.",
        min=1,
        max=600,
    )
    verify_initial_backoff: float = option(
        2.0,
        "First wait between verification requests for a payment; at least 1 because "
        "Mercado Pago allows one GET of an intent per second.",
        min=1,
        max=60,
    )
    verify_max_backoff: float = option(
        30.0, "Longest wait between verification requests as the back-off grows.", min=1, max=600
    )
    confirmation_escalate_after: float = option(
        120.0,
        "Seconds a CONFIRMATION_REQUIRED hold may stay unverified before the register and "
        "the technician view are told to escalate.",
        min=10,
        max=3600,
    )
    abandon_after: float = option(
        900.0,
        "Seconds after which an unpaid intent is treated as abandoned; Mercado Pago abandons "
        "it after 15 minutes.",
        min=60,
        max=3600,
    )
    create_reconcile_attempts: int = option(
        5,
        "How many times an unknown create outcome is reconciled against the API before the "
        "lane is escalated; a new attempt is made only on proven non-payment.",
        min=1,
        max=20,
    )

    def validate(self) -> Iterator[tuple[str, str]]:
        """The back-off must be able to grow."""
        if self.verify_max_backoff < self.verify_initial_backoff:
            yield "verify_max_backoff", "must be at least verify_initial_backoff"


@dataclass(frozen=True, slots=True, kw_only=True)
class TerminalsConfig:
    """Point terminals: the account's device list and USB presence."""

    refresh_interval: float = option(
        300.0, "Seconds between refreshes of the account's terminal list.", min=30, max=86400
    )
    switch_to_pdv: bool = option(
        False,
        "Switch terminals found in standalone mode to PDV mode; the change takes effect only "
        "after the terminal restarts.",
    )
    usb_rescan_interval: float = option(
        2.0,
        "Seconds between USB rescans when hot-plug events are unavailable.",
        min=0.5,
        max=60,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LaneConfig:
    """One checkout lane: a register link and the terminal that serves it."""

    number: int = option(
        ...,
        "Lane number shown to people and embedded in references.",
        min=1,
        max=MAX_LANE,
        example=1,
    )
    register: str = option(
        ...,
        "The register's serial device (prefer the udev name /dev/pointd/...), or "
        "socket://host:port for a register on the LAN.",
        pattern=r"/\S+|socket://[^\s:/]+:[0-9]{1,5}",
        example="/dev/pointd/register",
    )
    baud: int = option(9600, "Serial speed; ignored for socket://.", choices=BAUD_RATES)
    terminal: str | None = option(
        None,
        "Mercado Pago device id to pin this lane to; unset: the terminal found on USB.",
        example="PAX_A910__SMARTPOS1234567890",
    )
    terminal_serial: str | None = option(
        None,
        "Serial number of the terminal expected on USB for this lane.",
        example="1234567890",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingConfig:
    """Log output (stdout; journald stores it under systemd)."""

    level: str = option(
        "info", "Lowest level logged.", choices=("debug", "info", "warning", "error")
    )
    format: str = option(
        "auto",
        "json: one JSON object per line; console: human-readable; auto: console on a terminal, "
        "json otherwise.",
        choices=("auto", "json", "console"),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonConfig:
    """pointd daemon configuration (/etc/pointd/pointd.toml)."""

    store: StoreConfig = option(..., "Which store this is.")
    cloud: CloudConfig = option(CloudConfig(), "The Mercado Pago API.")
    relay: RelayLinkConfig = option(RelayLinkConfig(), "The notification relay.")
    journal: JournalConfig = option(JournalConfig(), "The sale journal.")
    control: ControlConfig = option(ControlConfig(), "The control socket.")
    timers: TimersConfig = option(TimersConfig(), "Sale timers.")
    terminals: TerminalsConfig = option(TerminalsConfig(), "Point terminals.")
    lanes: tuple[LaneConfig, ...] = option((), "Checkout lanes, one [[lanes]] table each.")
    logging: LoggingConfig = option(LoggingConfig(), "Logging.")

    def validate(self) -> Iterator[tuple[str, str]]:
        """At least one lane; lane numbers, registers and terminal pins unique."""
        if not self.lanes:
            yield "lanes", "at least one [[lanes]] table is required"
        for attribute in ("number", "register", "terminal", "terminal_serial"):
            yield from _duplicates(self.lanes, "lanes", attribute)


def _duplicates(entries: Sequence[Any], name: str, attribute: str) -> Iterator[tuple[str, str]]:
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


# --- the relay's schema ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """Where the relay listens."""

    host: str = option(
        "127.0.0.1",
        "Address to listen on; keep loopback behind a TLS-terminating reverse proxy.",
    )
    port: int = option(8080, "TCP port to listen on.", min=1, max=65535)
    public_url: str | None = option(
        None,
        "The https URL Mercado Pago and stores use to reach this relay (shown in docs and "
        "health output).",
        pattern=_HTTP_URL,
        example="https://relay.example.com",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class IntakeConfig:
    """How the relay accepts Mercado Pago notifications."""

    body_limit: int = option(
        262144, "Largest notification body accepted, in bytes.", min=1024, max=16 * 1024 * 1024
    )
    signature_required: bool = option(
        True,
        "Refuse webhooks whose x-signature does not verify. Unsigned IPN notifications are "
        "still kept: they only make a store ask the API sooner.",
    )
    ts_window: float = option(
        600.0,
        "Largest age, in seconds, of a signed webhook's ts; older ones are refused as "
        "replays. 0 disables the check.",
        min=0,
        max=86400,
    )
    webhook_secret_file: Path | None = option(
        None,
        f"File holding the webhook secret (mode 0600), used only when the systemd credential "
        f"{MP_WEBHOOK_SECRET} is absent.",
        example="/etc/pointd/credentials/mp_webhook_secret",
    )

    def read_webhook_secret(self) -> Secret | None:
        """Read the webhook secret, or None when none is configured."""
        return read_optional_secret(MP_WEBHOOK_SECRET, file=self.webhook_secret_file)


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageConfig:
    """Where the relay keeps notifications until stores acknowledge them."""

    backend: str = option(
        "sqlite",
        "sqlite for one relay process; postgres for several replicas sharing one database.",
        choices=("sqlite", "postgres"),
    )
    sqlite_path: Path = option(
        Path("/var/lib/pointd-relay/relay.sqlite3"), "SQLite database file (sqlite backend)."
    )
    postgres_dsn_file: Path | None = option(
        None,
        f"File holding the PostgreSQL DSN (mode 0600; it may contain a password), used only "
        f"when the systemd credential {RELAY_POSTGRES_DSN} is absent.",
        example="/etc/pointd/credentials/relay_postgres_dsn",
    )
    batch_max: int = option(
        256, "Most notifications written in one durable commit.", min=1, max=10000
    )
    batch_wait: float = option(
        0.0,
        "Seconds a commit waits to gather more notifications. 0 (the default) still batches: "
        "requests that arrive while a commit is running share the next one; a wait only "
        "adds latency at low rates (docs/benchmarks.md, relay).",
        min=0,
        max=1,
    )

    def read_postgres_dsn(self) -> Secret:
        """Read the PostgreSQL DSN (credential or file)."""
        return read_secret(RELAY_POSTGRES_DSN, file=self.postgres_dsn_file)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryConfig:
    """How stores receive their notifications."""

    retention_days: int = option(
        7, "Days notifications are kept for replay after delivery.", min=1, max=365
    )
    long_poll_timeout: float = option(
        25.0,
        "Seconds a store's long-poll waits for news before returning empty; below the usual "
        "30 s idle timeout of proxies.",
        min=1,
        max=300,
    )
    canary_window: float = option(
        300.0,
        "Seconds a store may stay silent before the relay's health output reports it missing.",
        min=10,
        max=86400,
    )
    unroutable_alert_after: float = option(
        300.0,
        "Seconds a fraud alert (stop_delivery_op_wh, IPN delivery_cancellation) may wait "
        "for its route before the relay raises an alert: an error log line, the metric "
        "pointd_relay_unroutable_fraud_alerts and GET /admin/events?status=alerted. Mercado "
        "Pago never resends a fraud alert.",
        min=1,
        max=86400,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    """The relay's admin API (replay, inspection)."""

    token_file: Path | None = option(
        None,
        f"File holding the admin bearer token (mode 0600), used only when the systemd "
        f"credential {RELAY_ADMIN_TOKEN} is absent; without either the admin API is off.",
        example="/etc/pointd/credentials/relay_admin_token",
    )

    def read_admin_token(self) -> Secret | None:
        """Read the admin token, or None when none is configured."""
        return read_optional_secret(RELAY_ADMIN_TOKEN, file=self.token_file)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreEntry:
    """A store allowed to fetch its notifications from the relay."""

    id: str = option(
        ..., "The store's id (its [store] id).", pattern=STORE_ID_PATTERN, example="centro-01"
    )
    token_sha256: str = option(
        ...,
        "sha256 of the store's token, lower-case hex; the token itself lives only on the "
        'store PC. Make it with: printf %s "$TOKEN" | sha256sum',
        pattern=r"[0-9a-f]{64}",
        example="0" * 64,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayConfig:
    """pointd relay configuration (/etc/pointd/relay.toml)."""

    server: ServerConfig = option(ServerConfig(), "Listening address.")
    intake: IntakeConfig = option(IntakeConfig(), "Mercado Pago webhook intake.")
    storage: StorageConfig = option(StorageConfig(), "Durable storage.")
    delivery: DeliveryConfig = option(DeliveryConfig(), "Delivery to stores.")
    admin: AdminConfig = option(AdminConfig(), "Admin API.")
    stores: tuple[StoreEntry, ...] = option((), "Stores served, one [[stores]] table each.")

    def validate(self) -> Iterator[tuple[str, str]]:
        """Store ids and token hashes unique."""
        yield from _duplicates(self.stores, "stores", "id")
        yield from _duplicates(self.stores, "stores", "token_sha256")


_SCHEMAS_BY_NAME: dict[str, type[Any]] = {"daemon": DaemonConfig, "relay": RelayConfig}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pointd.config daemon|relay``: print the reference TOML for that schema."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] not in _SCHEMAS_BY_NAME:
        print("usage: python -m pointd.config daemon|relay", file=sys.stderr)
        return 2
    sys.stdout.write(render_reference(_SCHEMAS_BY_NAME[args[0]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
