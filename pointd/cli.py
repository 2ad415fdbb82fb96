"""The ``pointd`` command: one entry point that hands each subcommand to its layer.

Each subcommand's module is imported only when it is asked for, so ``pointd relay`` on an
internet host never imports the serial or USB stack, and a broken optional dependency of
one part cannot stop another from starting.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

from pointd import __version__

# subcommand words -> (module, function, one-line help). The function takes the remaining
# arguments and returns the process exit code.
SUBCOMMANDS: dict[tuple[str, ...], tuple[str, str, str]] = {
    ("run",): ("pointd.app.runtime", "main", "run the checkout daemon"),
    ("relay",): ("pointd.relay.cli", "main", "run the webhook relay (internet side)"),
    ("demo",): ("pointd.rig.demo", "main", "run the whole product on simulators"),
    ("install-system-files",): (
        "pointd.system_files", "main", "install the systemd units, udev rules, sysusers.d, "
        "tmpfiles.d, docs",
    ),
    ("sim", "cloud"): ("pointd.sim.cloud.cli", "main", "run the Mercado Pago cloud simulator"),
    ("sim", "register"): ("pointd.sim.register.cli", "main", "run the cash register emulator"),
    ("sim", "usb"): ("pointd.sim.usb", "main", "list the simulated USB devices"),
}

USAGE_EXIT = 2
# EX_UNAVAILABLE: this installation lacks what the command needs (an optional extra).
MISSING_EXTRA_EXIT = 69
HELP_WORDS = frozenset({"-h", "--help", "help"})
# Modules that come with an optional extra, and the extra that brings them.
EXTRA_OF_MODULE = {"starlette": "relay", "uvicorn": "relay", "psycopg": "postgres"}


def _usage(prefix: tuple[str, ...] = ()) -> str:
    """The command list, or only the commands under ``prefix`` (``pointd sim``)."""
    name = " ".join(("pointd", *prefix))
    lines = [f"usage: {name} <command> [options]", "", "commands:"]
    for words, (_module, _function, help_text) in SUBCOMMANDS.items():
        if words[: len(prefix)] == prefix:
            lines.append(f"  {' '.join(words):<14} {help_text}")
    lines.append("")
    lines.append("Run 'pointd <command> --help' for a command's options.")
    return "\n".join(lines)


def _group(argv: Sequence[str]) -> tuple[str, ...] | None:
    """``("sim",)`` when ``argv`` names a group of commands but none of them."""
    prefix = tuple(argv[:1])
    group = any(len(words) > 1 and words[:1] == prefix for words in SUBCOMMANDS)
    if not group or (len(argv) > 1 and argv[1] not in HELP_WORDS):
        return None
    return prefix


def _resolve(argv: Sequence[str]) -> tuple[Callable[[list[str]], int], list[str]] | None:
    for words, (module_name, function_name, _help) in sorted(
        SUBCOMMANDS.items(), key=lambda item: -len(item[0])
    ):
        if tuple(argv[: len(words)]) == words:
            module = _import(module_name, " ".join(words))
            function: Callable[[list[str]], int] = getattr(module, function_name)
            return function, list(argv[len(words) :])
    return None


class MissingExtra(Exception):
    """The command needs a package of an optional extra that is not installed."""


def _import(module_name: str, command: str) -> object:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        extra = EXTRA_OF_MODULE.get(top)
        if extra is None:
            raise
        raise MissingExtra(
            f"pointd {command} needs {top}, which comes with the {extra!r} extra: "
            f"pip install 'pointd[{extra}]'"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``pointd <command> ...``; print usage for anything unknown."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in HELP_WORDS:
        print(_usage())
        return 0 if args else USAGE_EXIT
    if args[0] == "--version":
        print(f"pointd {__version__}")
        return 0
    group = _group(args)
    if group is not None:
        helping = len(args) > 1
        print(_usage(group), file=sys.stdout if helping else sys.stderr)
        return 0 if helping else USAGE_EXIT
    try:
        resolved = _resolve(args)
    except MissingExtra as exc:
        print(f"pointd: {exc}", file=sys.stderr)
        return MISSING_EXTRA_EXIT
    if resolved is None:
        print(f"pointd: unknown command {' '.join(args[:2])!r}\n", file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return USAGE_EXIT
    function, rest = resolved
    return function(rest)


if __name__ == "__main__":
    sys.exit(main())
