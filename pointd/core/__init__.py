"""The pure payment core: sale state machine, handover gate, recovery decisions (no I/O)."""
