"""The register link: sans-I/O framing and ACK/NAK/retransmit, plus the asyncio serial driver."""
