"""Opening ports by URL: socket:// connects on the event loop; bad URLs are config errors."""

from __future__ import annotations

import asyncio
import socket

import pytest

from pointd.link.driver import LinkDriver, LinkUp
from pointd.link.errors import LinkConfigError
from pointd.link.ports import open_port

WAIT = 5.0


@pytest.mark.parametrize("url", ["socket://", "socket://127.0.0.1", "socket://127.0.0.1:x"])
async def test_socket_url_without_a_usable_port_is_a_config_error(url: str) -> None:
    with pytest.raises(ValueError, match="socket://host:port"):
        await open_port(url, 9600)
    with pytest.raises(LinkConfigError):
        await asyncio.wait_for(LinkDriver(url).run(), WAIT)


async def test_refused_connection_is_retried_until_the_register_listens() -> None:
    # Bound but not listening, the port refuses connects, and no other process (a sibling
    # test worker) can take it before the register listens on it.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        with pytest.raises(OSError, match="cannot connect"):
            await open_port(f"socket://127.0.0.1:{port}", 9600)
        link = LinkDriver(
            f"socket://127.0.0.1:{port}", reconnect_min_delay=0.01, reconnect_max_delay=0.02
        )
        task = asyncio.create_task(link.run())
        await asyncio.sleep(0.05)  # a few refused attempts
        assert not link.is_up
        listener.listen()
        try:
            assert await asyncio.wait_for(link.next_event(), WAIT) == LinkUp(1)
        finally:
            link.close()
            await asyncio.wait_for(task, WAIT)
