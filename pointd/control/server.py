"""The daemon's control socket: a registry of methods served as JSON lines over a unix socket.

Theory of operation: the daemon builds one ``ControlServer``, registers its methods (name,
async handler, typed params, read-only or mutating, one-line description) and topics, then
``start()``s it. Each connection is authorised once, from the kernel's ``SO_PEERCRED``
(uid, gid, pid) and the groups of that uid: root and ``admin_group`` members may call
everything; the daemon's own uid and ``read_group`` members may call read-only methods;
anyone else gets ``forbidden``. Requests on a connection are answered one at a time, in
order. Before a handler runs, its params are checked against the declared types (missing,
unknown or mistyped → ``bad_params`` naming the param), its rate limit is checked, and a
mutating call is handed to the daemon's audit hook (the journal); if the hook fails, the
handler does not run. ``publish()`` pushes ``{"event", "data"}`` lines to subscribed
connections without ever waiting: a client whose unread output passes a bound is dropped.
Each connection keeps a ring of its last requests for diagnostics (``connections`` method).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import inspect
import json
import os
import pwd
import socket
import stat
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import structlog

from pointd.control.errors import ControlError, MethodError, SocketLost
from pointd.control.protocol import (
    DEFAULT_SOCKET_PATH,
    MAX_REQUEST_BYTES,
    ErrorCode,
    LineFramer,
    LineTooLong,
    encode,
    error_body,
    iso_time,
)

log = structlog.get_logger(__name__)

__all__ = ["DEFAULT_SOCKET_PATH", "Access", "Caller", "ControlServer", "Method", "Param"]

DEFAULT_READ_GROUP = "pointd"
DEFAULT_ADMIN_GROUP = "pointd-admin"
DEFAULT_SOCKET_MODE = 0o660

REQUEST_LOG_SIZE = 20
LOGGED_TEXT_LIMIT = 100
# Unread pushed output a subscriber may accumulate before it is dropped: about a thousand
# typical events, so a paused terminal survives a burst but cannot grow the daemon's memory.
MAX_SUBSCRIBER_BUFFER = 256 * 1024
# A client that sends requests but does not read the answers is dropped after this long, so
# a stuck pointctl cannot pin a connection (and its buffers) forever.
RESPONSE_WRITE_TIMEOUT = 30.0
# Probing an existing socket file to see whether another daemon still listens on it.
STALE_PROBE_TIMEOUT = 1.0
# How often ``watch`` looks whether the socket file is still this server's. A removed socket
# is rare (a cleanup of /run) and systemd restarts the daemon once it is seen; each look
# wakes an idle daemon, so it is not looked at every second.
SOCKET_CHECK_INTERVAL = 10.0
READ_CHUNK = 65536

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

Handler = Callable[..., Awaitable[Any]]
AuditHook = Callable[[int, str, dict[str, Any]], Awaitable[None] | None]

_KIND_NAMES: dict[type, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
}


class Access(IntEnum):
    """What a caller may do; each level includes the ones below it."""

    NONE = 0
    READ = 1
    ADMIN = 2


@dataclass(frozen=True)
class Param:
    """One declared parameter: JSON type, description and bounds (for strings: length)."""

    kind: type
    description: str
    required: bool = True
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None

    def describe(self) -> dict[str, Any]:
        """The param as listed by the ``methods`` method."""
        out: dict[str, Any] = {
            "type": _KIND_NAMES[self.kind],
            "required": self.required,
            "description": self.description,
        }
        if self.choices:
            out["choices"] = list(self.choices)
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        return out


@dataclass(frozen=True)
class Method:
    """A registered method."""

    name: str
    handler: Handler | None  # None: answered by the server from the connection itself
    mutating: bool
    params: Mapping[str, Param]
    description: str
    min_interval: float = 0.0  # seconds between calls, server-wide; 0 = unlimited
    exactly_one_of: tuple[str, ...] = ()  # params of which exactly one must be given

    def describe(self) -> dict[str, Any]:
        """The method as listed by the ``methods`` method."""
        out: dict[str, Any] = {
            "name": self.name,
            "mutating": self.mutating,
            "description": self.description,
            "params": {name: param.describe() for name, param in self.params.items()},
        }
        if self.min_interval:
            out["min_interval"] = self.min_interval
        if self.exactly_one_of:
            out["exactly_one_of"] = list(self.exactly_one_of)
        return out


@dataclass(frozen=True)
class Caller:
    """Who is on the other end of a connection, as the kernel reported it."""

    pid: int
    uid: int
    gid: int
    access: Access


def access_for(
    uid: int,
    gids: frozenset[int],
    *,
    daemon_uid: int,
    read_gid: int | None,
    admin_gid: int | None,
) -> Access:
    """Decide a caller's access from its uid and every group it belongs to."""
    if uid == 0 or (admin_gid is not None and admin_gid in gids):
        return Access.ADMIN
    if uid == daemon_uid or (read_gid is not None and read_gid in gids):
        return Access.READ
    return Access.NONE


def groups_of(uid: int, gid: int) -> frozenset[int]:
    """The primary and supplementary groups of ``uid`` according to the group database."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return frozenset({gid})
    return frozenset({gid, *os.getgrouplist(name, gid)})


def group_id(name: str) -> int | None:
    """The gid of a group name, or None when the group does not exist."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def validate_params(method: Method, params: Mapping[str, Any]) -> dict[str, Any]:
    """Check params against the method's declaration; raise ``bad_params`` naming the param."""
    for name in params:
        if name not in method.params:
            known = ", ".join(sorted(method.params)) or "none"
            raise MethodError(
                ErrorCode.BAD_PARAMS,
                f"unknown param {name!r} for {method.name} (params: {known})",
                param=name,
            )
    checked: dict[str, Any] = {}
    for name, param in method.params.items():
        if name not in params or params[name] is None:
            if param.required:
                raise MethodError(
                    ErrorCode.BAD_PARAMS, f"missing required param {name!r}", param=name
                )
            continue
        checked[name] = _check_value(name, param, params[name])
    if method.exactly_one_of:
        given = [name for name in method.exactly_one_of if name in checked]
        if len(given) != 1:
            names = " or ".join(repr(name) for name in method.exactly_one_of)
            raise MethodError(
                ErrorCode.BAD_PARAMS,
                f"{method.name} needs exactly one of {names}",
                param=method.exactly_one_of[0],
            )
    return checked


def _check_value(name: str, param: Param, value: Any) -> Any:
    kind_ok = isinstance(value, param.kind)
    # bool is an int in Python but not in JSON; an int is a fine float.
    if param.kind in (int, float) and isinstance(value, bool):
        kind_ok = False
    elif param.kind is float and isinstance(value, int):
        kind_ok = True
        value = float(value)
    if not kind_ok:
        raise MethodError(
            ErrorCode.BAD_PARAMS,
            f"param {name!r} must be {_KIND_NAMES[param.kind]}, got {type(value).__name__}",
            param=name,
        )
    if param.choices and value not in param.choices:
        raise MethodError(
            ErrorCode.BAD_PARAMS,
            f"param {name!r} must be one of {', '.join(param.choices)}",
            param=name,
        )
    sized = isinstance(value, str | list)
    measure = len(value) if sized else value
    unit = (" characters" if isinstance(value, str) else " items") if sized else ""
    if isinstance(measure, int | float):
        if param.minimum is not None and measure < param.minimum:
            raise MethodError(
                ErrorCode.BAD_PARAMS,
                f"param {name!r} must be at least {param.minimum}{unit}",
                param=name,
            )
        if param.maximum is not None and measure > param.maximum:
            raise MethodError(
                ErrorCode.BAD_PARAMS,
                f"param {name!r} must be at most {param.maximum}{unit}",
                param=name,
            )
    return value


@dataclass
class _Connection:
    caller: Caller
    writer: asyncio.StreamWriter
    opened_at: float
    request_log: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=REQUEST_LOG_SIZE)
    )
    subscribed: bool = False
    topics: frozenset[str] = frozenset()  # empty while subscribed = every topic

    def wants(self, topic: str) -> bool:
        return self.subscribed and (not self.topics or topic in self.topics)


class ControlServer:
    """Serve registered methods on a unix socket, authorised by peer credentials."""

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_SOCKET_PATH,
        *,
        record_audit: AuditHook,
        read_group: str = DEFAULT_READ_GROUP,
        admin_group: str = DEFAULT_ADMIN_GROUP,
        socket_mode: int = DEFAULT_SOCKET_MODE,
        daemon_uid: int | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self._record_audit = record_audit
        self._read_group = read_group
        self._admin_group = admin_group
        self._socket_mode = socket_mode
        self._daemon_uid = os.geteuid() if daemon_uid is None else daemon_uid
        self._clock = clock
        self._monotonic = monotonic
        self._methods: dict[str, Method] = {}
        self._topics: dict[str, str] = {}
        self._last_call: dict[str, float] = {}
        self._connections: dict[int, _Connection] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.AbstractServer | None = None
        self._socket_inode: int | None = None
        self._register_builtins()

    def register(
        self,
        name: str,
        handler: Handler,
        *,
        mutating: bool,
        params: Mapping[str, Param],
        description: str,
        min_interval: float = 0.0,
        exactly_one_of: tuple[str, ...] = (),
    ) -> None:
        """Add a method; ``handler(caller, **params)`` is awaited with validated params."""
        for one in exactly_one_of:
            if one not in params or params[one].required:
                raise ValueError(f"{name}: exactly_one_of names {one!r}, not an optional param")
        self._add(
            Method(name, handler, mutating, dict(params), description, min_interval, exactly_one_of)
        )

    def _add(self, method: Method) -> None:
        if method.name in self._methods:
            raise ValueError(f"method {method.name!r} is already registered")
        self._methods[method.name] = method

    def register_topic(self, name: str, description: str) -> None:
        """Declare a topic that ``publish`` may send and ``subscribe`` may ask for."""
        self._topics[name] = description

    @property
    def methods(self) -> Mapping[str, Method]:
        """Every registered method by name, built-ins included."""
        return self._methods

    async def start(self) -> None:
        """Bind the socket (removing a stale one), set its mode and group, start serving."""
        sock = self._bind()
        self._server = await asyncio.start_unix_server(
            self._serve_connection, sock=sock, limit=MAX_REQUEST_BYTES
        )
        log.info("control_socket_listening", path=str(self.path))

    async def watch(self, interval: float = SOCKET_CHECK_INTERVAL) -> None:
        """Return never while the socket file is this server's; raise SocketLost once not.

        A socket file removed (a cleanup of /run, a mistaken rm) or replaced by another
        process leaves the daemon unreachable for pointctl with no error anywhere; the
        caller treats this as a failure of the daemon, whose restart binds a new one.
        """
        while True:
            try:
                inode: int | None = self.path.lstat().st_ino
            except FileNotFoundError:
                inode = None
            if inode != self._socket_inode:
                what = "removed" if inode is None else "replaced by another file"
                raise SocketLost(f"control socket {self.path} was {what}")
            await asyncio.sleep(interval)

    async def close(self) -> None:
        """Stop accepting, drop every connection and remove the socket file."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            # Remove only our own socket: a newer daemon may already have replaced it.
            if self.path.lstat().st_ino == self._socket_inode:
                self.path.unlink()

    def publish(self, topic: str, data: Any) -> int:
        """Push an event to every subscriber of ``topic`` without waiting; return how many."""
        if topic not in self._topics:
            raise ValueError(f"topic {topic!r} is not registered")
        line = encode({"event": topic, "data": data})
        delivered = 0
        for connection in list(self._connections.values()):
            if not connection.wants(topic):
                continue
            transport = connection.writer.transport
            if transport.is_closing():
                continue
            if transport.get_write_buffer_size() + len(line) > MAX_SUBSCRIBER_BUFFER:
                log.warning(
                    "control_subscriber_dropped",
                    reason="not reading events",
                    uid=connection.caller.uid,
                    pid=connection.caller.pid,
                )
                transport.abort()
                continue
            connection.writer.write(line)
            delivered += 1
        return delivered

    def connection_report(self) -> list[dict[str, Any]]:
        """Every open connection: who, since when, subscriptions and its last requests."""
        return [
            {
                "pid": c.caller.pid,
                "uid": c.caller.uid,
                "gid": c.caller.gid,
                "access": c.caller.access.name.lower(),
                "opened_at": iso_time(c.opened_at),
                "subscribed": c.subscribed,
                "topics": sorted(c.topics),  # empty while subscribed: every topic
                "requests": [{**entry, "at": iso_time(entry["at"])} for entry in c.request_log],
            }
            for c in self._connections.values()
        ]

    def _bind(self) -> socket.socket:
        self._remove_stale_socket()
        # Bind under a temporary name and rename into place once mode and group are set,
        # so the socket is never reachable with the umask's looser permissions.
        staging = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(staging))
            os.chmod(staging, self._socket_mode)
            self._set_group(staging)
            os.rename(staging, self.path)
            self._socket_inode = self.path.lstat().st_ino
            sock.listen(16)
        except BaseException as exc:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                staging.unlink()
            if isinstance(exc, OSError):
                # bind() errors do not name the path; the operator needs it to fix it.
                raise ControlError(
                    f"cannot create control socket {self.path}: {exc.strerror or exc}"
                ) from None
            raise
        return sock

    def _set_group(self, path: Path) -> None:
        gid = group_id(self._read_group)
        if gid is None:
            log.warning("control_read_group_missing", group=self._read_group)
            return
        # Under systemd the daemon's own group is already the read group, and the unit's
        # syscall filter forbids chown: only change what differs.
        if path.lstat().st_gid == gid:
            return
        try:
            os.chown(path, -1, gid)
        except PermissionError:
            log.warning("control_socket_group_not_set", group=self._read_group, path=str(path))

    def _remove_stale_socket(self) -> None:
        try:
            mode = self.path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise ControlError(f"{self.path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(STALE_PROBE_TIMEOUT)
        try:
            probe.connect(str(self.path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("control_stale_socket_removed", path=str(self.path))
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        except OSError as exc:
            raise ControlError(f"cannot probe existing socket {self.path}: {exc}") from exc
        finally:
            probe.close()
        raise ControlError(f"another process is serving {self.path}")

    def _caller(self, writer: asyncio.StreamWriter) -> Caller:
        sock = writer.get_extra_info("socket")
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        pid, uid, gid = _PEERCRED.unpack(raw)
        access = access_for(
            uid,
            groups_of(uid, gid),
            daemon_uid=self._daemon_uid,
            read_gid=group_id(self._read_group),
            admin_gid=group_id(self._admin_group),
        )
        return Caller(pid=pid, uid=uid, gid=gid, access=access)

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            caller = self._caller(writer)
        except OSError as exc:
            log.warning("control_peer_unknown", error=str(exc))
            writer.transport.abort()
            return
        self._tasks.add(task)
        connection = _Connection(caller=caller, writer=writer, opened_at=self._clock())
        key = id(connection)
        self._connections[key] = connection
        log.debug("control_connected", uid=caller.uid, pid=caller.pid, access=caller.access.name)
        framer = LineFramer(MAX_REQUEST_BYTES)
        try:
            while data := await reader.read(READ_CHUNK):
                for line in framer.feed(data):
                    response = await self._answer(connection, line)
                    writer.write(encode(response))
                    async with asyncio.timeout(RESPONSE_WRITE_TIMEOUT):
                        await writer.drain()
        except (ConnectionError, TimeoutError):
            log.info("control_connection_lost", uid=caller.uid, pid=caller.pid)
        finally:
            del self._connections[key]
            self._tasks.discard(task)
            writer.transport.abort()

    async def _answer(self, connection: _Connection, line: bytes | LineTooLong) -> dict[str, Any]:
        started = self._monotonic()
        request_id: Any = None
        method_name: str | None = None
        try:
            if isinstance(line, LineTooLong):
                raise MethodError(
                    ErrorCode.LINE_TOO_LONG,
                    f"request line over {MAX_REQUEST_BYTES} bytes was skipped",
                )
            request = _parse_json_object(line)
            request_id = _request_id(request)
            method_name = _method_name(request)
            result = await self._dispatch(connection, method_name, request.get("params", {}))
            outcome = "ok"
            response: dict[str, Any] = {"id": request_id, "result": result}
        except MethodError as exc:
            outcome = str(exc.code)
            response = {"id": request_id, "error": error_body(exc.code, exc.message, **exc.extra)}
        connection.request_log.append(
            {
                "at": self._clock(),
                # Ids and names come from the client: keep the ring's memory bounded.
                "id": request_id[:LOGGED_TEXT_LIMIT] if isinstance(request_id, str) else request_id,
                "method": method_name[:LOGGED_TEXT_LIMIT] if method_name else method_name,
                "outcome": outcome,
                "duration_ms": round((self._monotonic() - started) * 1000, 1),
            }
        )
        return response

    async def _dispatch(self, connection: _Connection, name: str, raw_params: Any) -> Any:
        method = self._methods.get(name)
        if method is None:
            raise MethodError(
                ErrorCode.UNKNOWN_METHOD,
                f'unknown method {name!r}; send {{"method": "methods"}} for the list',
            )
        caller = connection.caller
        needed = Access.ADMIN if method.mutating else Access.READ
        if caller.access < needed:
            log.warning("control_forbidden", method=name, uid=caller.uid, pid=caller.pid)
            group = self._admin_group if method.mutating else self._read_group
            raise MethodError(
                ErrorCode.FORBIDDEN,
                f"uid {caller.uid} may not call {name}: needs root or group {group!r}",
            )
        if not isinstance(raw_params, dict):
            raise MethodError(ErrorCode.BAD_PARAMS, "params must be a JSON object")
        params = validate_params(method, raw_params)
        if method.min_interval:
            now = self._monotonic()
            last = self._last_call.get(name)
            if last is not None and now - last < method.min_interval:
                retry_after = round(method.min_interval - (now - last), 3)
                raise MethodError(
                    ErrorCode.RATE_LIMITED,
                    f"{name} may be called once every {method.min_interval:g} s",
                    retry_after=retry_after,
                )
            self._last_call[name] = now
        if method.mutating:
            await self._audit(caller, name, params)
        if method.handler is None:
            return self._subscribe(connection, params)
        try:
            return _json_safe(await method.handler(caller, **params))
        except MethodError:
            raise
        except Exception:
            log.exception("control_method_failed", method=name, uid=caller.uid)
            outcome = "its outcome is unknown" if method.mutating else "it returned nothing"
            raise MethodError(
                ErrorCode.INTERNAL,
                f"{name} failed inside the daemon; {outcome} (see the daemon log)",
            ) from None

    async def _audit(self, caller: Caller, name: str, params: dict[str, Any]) -> None:
        try:
            pending = self._record_audit(caller.uid, name, dict(params))
            if inspect.isawaitable(pending):
                await pending
        except Exception:
            log.exception("control_audit_failed", method=name, uid=caller.uid)
            raise MethodError(
                ErrorCode.AUDIT_FAILED, f"{name} was not run: the journal could not record it"
            ) from None
        log.info("control_mutating_call", method=name, uid=caller.uid, pid=caller.pid)

    def _subscribe(self, connection: _Connection, params: dict[str, Any]) -> dict[str, Any]:
        topics = params.get("topics", [])
        for topic in topics:
            if not isinstance(topic, str) or topic not in self._topics:
                raise MethodError(
                    ErrorCode.BAD_PARAMS,
                    f"unknown topic {topic!r} (topics: {', '.join(sorted(self._topics))})",
                    param="topics",
                )
        connection.subscribed = True
        connection.topics = frozenset(topics)
        return {"topics": sorted(connection.topics or self._topics)}

    def _register_builtins(self) -> None:
        async def list_methods(caller: Caller) -> dict[str, Any]:
            return {
                "methods": [self._methods[name].describe() for name in sorted(self._methods)],
                "topics": dict(sorted(self._topics.items())),
                "access": caller.access.name.lower(),
            }

        async def connections(caller: Caller) -> dict[str, Any]:
            return {"connections": self.connection_report()}

        self.register(
            "methods",
            list_methods,
            mutating=False,
            params={},
            description="List every method with its params, plus the event topics.",
        )
        self.register(
            "connections",
            connections,
            mutating=False,
            params={},
            description="List open control connections with their last 20 requests.",
        )
        self._add(
            Method(
                "subscribe",
                None,
                mutating=False,
                params={
                    "topics": Param(
                        list, "topics to receive; omitted or empty = all", required=False
                    )
                },
                description="Receive {event, data} lines on this connection as things change.",
            )
        )


def _parse_json_object(line: bytes) -> dict[str, Any]:
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MethodError(ErrorCode.BAD_JSON, f"not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise MethodError(ErrorCode.BAD_REQUEST, "a request must be a JSON object")
    return request


def _request_id(request: dict[str, Any]) -> Any:
    request_id = request.get("id")
    if request_id is not None and (
        isinstance(request_id, bool) or not isinstance(request_id, str | int)
    ):
        raise MethodError(ErrorCode.BAD_REQUEST, "id must be a string, an integer or null")
    return request_id


def _method_name(request: dict[str, Any]) -> str:
    unknown = sorted(set(request) - {"id", "method", "params"})
    if unknown:
        raise MethodError(ErrorCode.BAD_REQUEST, f"unknown request field(s): {', '.join(unknown)}")
    name = request.get("method")
    if not isinstance(name, str):
        raise MethodError(ErrorCode.BAD_REQUEST, "a request needs a string 'method'")
    return name


def _json_safe(result: Any) -> Any:
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:
        raise MethodError(
            ErrorCode.INTERNAL, f"the daemon produced a result that is not JSON: {exc}"
        ) from None
    return result
