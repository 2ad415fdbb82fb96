"""The whole store in one process on virtual time: one seed, one run, replayed exactly.

``loop`` is the event loop (virtual clock, processes that can be killed, in-memory
descriptors and unix sockets), ``net`` the network between the parts, ``serial`` the
registers' cables, ``jobs`` the periodic jobs' scheduler on the virtual clock, ``daemon`` a
real ``pointd run`` (``build`` and ``run``) on simulated ports, ``store`` the world and its
checks, ``shrink`` the search for the smallest run that still fails. Run it with
``python -m pointd.rig.simulation`` (docs/simulation.md).
"""

from pointd.rig.simulation.shrink import shrink
from pointd.rig.simulation.store import SimOptions, SimReport, Simulation

__all__ = ["SimOptions", "SimReport", "Simulation", "shrink"]
