"""A second, minimal cash register, written from docs/register-protocol.md alone.

The daemon's register link (``pointd.link``) and messages (``pointd.register``) are one
reading of the register protocol page; the emulator in ``pointd.sim.register`` reuses that
same code in the register's role, so a misreading shared by both sides would pass every
test. This package is an independent reading: it imports nothing of the daemon (an
import-linter contract in pyproject.toml keeps it so), and every constant, rule and byte
layout here cites the section of the page it comes from. The chaos run and the
deterministic simulation drive their registers through it.

- ``wire``: CRC-16/CCITT-FALSE, stuffing, frames, an incremental receiver (§2).
- ``link``: sequence numbers, ACK/NAK, retransmission, keep-alive, link-down (§3), pure.
- ``fields``: ``key=value`` message encoding and the message types (§4, §6).
- ``register``: the register's application on the event loop (§5, §7, §8), over a ``Line``.
- ``lines``: a pty or a TCP listener as the register's ``Line``.
"""
