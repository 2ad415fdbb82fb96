"""A Mercado Pago cloud over loopback HTTP: Point API, payments, webhooks, scripted outcomes."""

from pointd.sim.cloud.config import Delays, SimConfig, SimConfigError, SimDevice
from pointd.sim.cloud.scenarios import Outcome
from pointd.sim.cloud.server import CloudSimulator, LoopbackServer

__all__ = [
    "CloudSimulator",
    "Delays",
    "LoopbackServer",
    "Outcome",
    "SimConfig",
    "SimConfigError",
    "SimDevice",
]
