"""The chaos run's parts (``bench/chaos.py`` drives real processes with them): the seeded plan
of sales and faults (``plan``), the cashiers and supervisor that drive the registers
(``cashier``), the evidence a run leaves (``evidence``) and the money-safety rules checked on
it (``invariants``). They take their time from the event loop and know nothing of
processes, so that any harness running the store can reuse them."""
