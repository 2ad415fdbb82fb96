"""``python -m pointd.config daemon|relay``: print the reference TOML for that schema."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from pointd.config.daemon import DaemonConfig
from pointd.config.relay import RelayConfig
from pointd.config.schema import render_reference

_SCHEMAS_BY_NAME: dict[str, type[Any]] = {"daemon": DaemonConfig, "relay": RelayConfig}


def main(argv: Sequence[str] | None = None) -> int:
    """Print the reference TOML for the schema named on the command line."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] not in _SCHEMAS_BY_NAME:
        print("usage: python -m pointd.config daemon|relay", file=sys.stderr)
        return 2
    sys.stdout.write(render_reference(_SCHEMAS_BY_NAME[args[0]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
