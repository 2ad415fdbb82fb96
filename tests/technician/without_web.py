"""``python -m tests.technician.without_web ARGS``: ``pointd ARGS`` as on a store PC without
the ``relay`` extra: importing starlette or uvicorn fails as if they were not installed."""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Sequence
from types import ModuleType

ABSENT = frozenset({"starlette", "uvicorn"})


class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> None:
        if fullname.partition(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)


if __name__ == "__main__":
    assert not ABSENT & {name.split(".")[0] for name in sys.modules}
    sys.meta_path.insert(0, _NotInstalled())
    from pointd.cli import main

    sys.exit(main())
