"""The rig: a whole store on simulators, for ``pointd demo``, benchmarks, chaos and tests.

Only the rig and the ``pointd sim`` / ``pointd demo`` commands import both the product and
the simulators; the product itself never does (``tests/test_layers.py`` keeps it so).
"""

from pointd.rig.daemon import (
    DAEMON_START_TIMEOUT,
    DAEMON_STOP_TIMEOUT,
    FAILURE_LEVELS,
    DaemonRun,
    DaemonStopped,
    InProcessDaemon,
    spawn_daemon,
)
from pointd.rig.process import PACKAGE_ROOT, Child, NotifySocket, child_environment
from pointd.rig.relay import InProcessRelay, RelayProcess, relay_config, relay_document
from pointd.rig.store import RigLane, RigSecrets, StoreRig, StoreSpec
from pointd.rig.toml import merged, toml_text

__all__ = [
    "DAEMON_START_TIMEOUT",
    "DAEMON_STOP_TIMEOUT",
    "FAILURE_LEVELS",
    "PACKAGE_ROOT",
    "Child",
    "DaemonRun",
    "DaemonStopped",
    "InProcessDaemon",
    "InProcessRelay",
    "NotifySocket",
    "RelayProcess",
    "RigLane",
    "RigSecrets",
    "StoreRig",
    "StoreSpec",
    "child_environment",
    "merged",
    "relay_config",
    "relay_document",
    "spawn_daemon",
    "toml_text",
]
