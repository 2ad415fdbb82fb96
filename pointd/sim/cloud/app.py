"""The simulator's HTTP surface: Mercado Pago's endpoints, and ``/_sim/`` control.

Real endpoints answer in Mercado Pago's shapes and need the bearer token. The ``/_sim/``
endpoints (clock, scenarios, faults, restarts, fraud alerts, the record) need no token,
are documented in docs/simulator.md, and never share a shape with the real ones.

The app knows the running simulator only through ``Simulation``, so that this module
never imports ``pointd.sim.cloud.server``, which imports it to serve the app.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from pointd.sim.cloud.config import SimConfig
from pointd.sim.cloud.orders import OrderDesk
from pointd.sim.cloud.scenarios import CreateFailure, ScenarioError, parse_rule
from pointd.sim.cloud.world import Delivery, ErrorShape, SimApiError, SimWorld

API = "/point/integration-api"
Handler = Callable[[Request], Awaitable[Response]]
ALLOW_CANCEL_HEADER = "x-allow-cancelable-status"
# The body length a dropped create claims; the connection closes before any of it.
DROPPED_BODY_LENGTH = 512


class DroppedResponse(Response):
    """Start an answer, then close the connection: the client sees a reset mid-answer."""

    def __init__(self) -> None:
        super().__init__(status_code=201)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 201,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(DROPPED_BODY_LENGTH).encode()),
                ],
            }
        )
        # Returning without the body makes uvicorn close the transport.


def _error(exc: SimApiError) -> JSONResponse:
    headers = {}
    if exc.retry_after is not None:
        headers["retry-after"] = f"{exc.retry_after:g}"
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def _lose_create_answer(world: SimWorld, failure: CreateFailure) -> Response:
    """The scripted answer to a create that was made: a 500, or a connection dropped mid-answer."""
    if failure is CreateFailure.SERVER_ERROR:
        world.fired["create_5xx_after_create"] += 1
        return _error(SimApiError(500, "internal_error", "Internal server error"))
    world.fired["create_dropped_after_create"] += 1
    return DroppedResponse()


def _key(request: Request) -> str | None:
    return request.headers.get("x-idempotency-key") or None


def _removed() -> JSONResponse:
    # What an endpoint that no longer exists answers: the router's own 404.
    body = {"message": "resource not found", "error": "not_found", "status": 404, "cause": []}
    return JSONResponse(body, status_code=404)


def _sim_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"sim_error": message}, status_code=status)


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise SimApiError(400, "bad_request", "the body is not valid JSON") from None


class Clock(Protocol):
    """The simulator's time."""

    def now(self) -> float:
        """Simulated seconds since start."""
        ...


class Simulation(Protocol):
    """What the HTTP surface needs from the running simulator."""

    config: SimConfig
    world: SimWorld
    orders: OrderDesk

    @property
    def clock(self) -> Clock:
        """The simulator's clock."""
        ...

    def sync(self) -> None:
        """Bring the world up to the clock."""
        ...

    async def advance(self, seconds: float) -> None:
        """Move the clock forward and await the deliveries that fell due."""
        ...

    async def send_webhook(self, delivery: Delivery) -> int | None:
        """POST one delivery now; the receiver's status."""
        ...


def build_app(sim: Simulation) -> Starlette:
    """The ASGI app serving ``sim``."""
    world = sim.world
    orders = sim.orders
    token = sim.config.access_token.encode()

    def api(handler: Handler, *, read: bool = False, orders_family: bool = False) -> Handler:
        async def endpoint(request: Request) -> Response:
            sim.sync()
            given = request.headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), token):
                if orders_family:
                    return _error(
                        SimApiError(401, "unauthorized", "user not found", shape=ErrorShape.FLAT)
                    )
                # The Integrator API's own example: no "cause" on this one.
                body = {"message": "invalid_token", "error": "not_found", "status": 401}
                return JSONResponse(body, status_code=401)
            try:
                if read:
                    world.check_global_get_faults()
                return await handler(request)
            except SimApiError as exc:
                if orders_family and exc.shape is ErrorShape.POINT:
                    exc.shape = ErrorShape.NESTED
                return _error(exc)

        return endpoint

    def orders_api(handler: Handler, *, read: bool = False) -> Handler:
        return api(handler, read=read, orders_family=True)

    def now() -> float:
        return sim.clock.now()

    async def list_devices(request: Request) -> Response:
        return JSONResponse(world.list_devices(dict(request.query_params)))

    async def set_mode(request: Request) -> Response:
        body = await _json_body(request)
        return JSONResponse(world.set_mode(request.path_params["device_id"], body))

    async def create_intent(request: Request) -> Response:
        body = await _json_body(request)
        intent, failure = world.create_intent(request.path_params["device_id"], body, now())
        sim.sync()
        if failure is not None:
            return _lose_create_answer(world, failure)
        return JSONResponse(world.created_json(intent), status_code=sim.config.create_status)

    async def cancel_intent(request: Request) -> Response:
        params = request.path_params
        answer = world.cancel_intent(params["device_id"], params["intent_id"], now())
        sim.sync()
        return JSONResponse(answer)

    async def intent_events(request: Request) -> Response:
        if world.events_unavailable:
            return _removed()
        query = request.query_params
        return JSONResponse(world.intent_events(query.get("startDate"), query.get("endDate")))

    async def get_intent(request: Request) -> Response:
        return JSONResponse(world.read_intent(request.path_params["intent_id"], now()))

    async def last_event(request: Request) -> Response:
        if world.events_unavailable:
            return _removed()
        return JSONResponse(world.last_event(request.path_params["intent_id"], now()))

    async def get_integrator(request: Request) -> Response:
        return JSONResponse(world.integrator_json())

    async def patch_integrator(request: Request) -> Response:
        world.patch_integrator(await _json_body(request))
        return Response(status_code=204)

    async def create_refund(request: Request) -> Response:
        body = await _json_body(request)
        return JSONResponse(world.create_refund(request.path_params["device_id"], body, now()))

    async def get_refund(request: Request) -> Response:
        return JSONResponse(world.read_refund(request.path_params["refund_id"]))

    async def cancel_refund(request: Request) -> Response:
        params = request.path_params
        return JSONResponse(world.cancel_refund(params["device_id"], params["refund_id"], now()))

    async def list_terminals(request: Request) -> Response:
        return JSONResponse(orders.list_terminals(dict(request.query_params)))

    async def setup_terminals(request: Request) -> Response:
        return JSONResponse(orders.setup_terminals(await _json_body(request)))

    async def create_order(request: Request) -> Response:
        body = await _json_body(request)
        status, order, failure = orders.create(body, _key(request), now())
        sim.sync()
        if failure is not None:
            return _lose_create_answer(world, failure)
        return JSONResponse(order, status_code=status)

    async def get_order(request: Request) -> Response:
        return JSONResponse(orders.read(request.path_params["order_id"], now()))

    async def cancel_order(request: Request) -> Response:
        at_terminal = request.headers.get(ALLOW_CANCEL_HEADER, "").lower() == "at_terminal"
        status, order = orders.cancel(
            request.path_params["order_id"], _key(request), at_terminal, now()
        )
        sim.sync()
        return JSONResponse(order, status_code=status)

    async def refund_order(request: Request) -> Response:
        body = await _json_body(request)
        status, order = orders.refund(request.path_params["order_id"], body, _key(request), now())
        sim.sync()
        return JSONResponse(order, status_code=status)

    async def online_only(request: Request) -> Response:
        return JSONResponse(orders.online_only(request.path_params.get("order_id")))

    async def create_payment_refund(request: Request) -> Response:
        body = await _json_body(request)
        status, refund = world.create_payment_refund(
            request.path_params["payment_id"], body, _key(request), now()
        )
        return JSONResponse(refund, status_code=status)

    async def payment_refunds(request: Request) -> Response:
        return JSONResponse(world.payment_refunds(request.path_params["payment_id"]))

    async def payment_refund(request: Request) -> Response:
        params = request.path_params
        return JSONResponse(world.payment_refund(params["payment_id"], params["refund_id"]))

    async def search_payments(request: Request) -> Response:
        return JSONResponse(world.search_payments(dict(request.query_params)))

    async def get_payment(request: Request) -> Response:
        return JSONResponse(world.read_payment(request.path_params["payment_id"]))

    # -- /_sim/ ------------------------------------------------------------------------

    async def sim_body(request: Request) -> Any:
        try:
            return await _json_body(request)
        except SimApiError:
            return _sim_error(400, "the body is not valid JSON")

    async def advance(request: Request) -> Response:
        body = await sim_body(request)
        if isinstance(body, Response):
            return body
        seconds = body.get("seconds") if isinstance(body, dict) else None
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            return _sim_error(400, 'give {"seconds": n} with n >= 0')
        await sim.advance(float(seconds))
        return JSONResponse({"now": sim.clock.now(), "wall": world.iso(sim.clock.now())})

    async def clock(request: Request) -> Response:
        sim.sync()
        return JSONResponse({"now": sim.clock.now(), "wall": world.iso(sim.clock.now())})

    async def add_scenario(request: Request) -> Response:
        body = await sim_body(request)
        if isinstance(body, Response):
            return body
        try:
            rule = parse_rule(body)
        except ScenarioError as exc:
            return _sim_error(400, str(exc))
        world.scenarios.add(rule)
        return JSONResponse({"accepted": True}, status_code=201)

    async def clear_scenarios(request: Request) -> Response:
        world.scenarios.clear()
        return Response(status_code=204)

    async def faults(request: Request) -> Response:
        body = await sim_body(request)
        if isinstance(body, Response):
            return body
        allowed = {"get_429", "get_5xx", "retry_after", "events_unavailable"}
        if not isinstance(body, dict) or set(body) - allowed:
            return _sim_error(400, f"give any of {', '.join(sorted(allowed))}")
        unavailable = body.get("events_unavailable", world.events_unavailable)
        if not isinstance(unavailable, bool):
            return _sim_error(400, "events_unavailable must be true or false")
        world.events_unavailable = unavailable
        for key in ("get_429", "get_5xx"):
            value = body.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                return _sim_error(400, f"{key} must be a non-negative integer")
            world.get_faults[key] = value
        retry_after = body.get("retry_after", 1.0)
        if (
            isinstance(retry_after, bool)
            or not isinstance(retry_after, int | float)
            or retry_after < 0
        ):
            return _sim_error(400, "retry_after must be a non-negative number")
        world.get_faults_retry_after = float(retry_after)
        return JSONResponse(dict(world.get_faults, events_unavailable=world.events_unavailable))

    async def restart(request: Request) -> Response:
        try:
            return JSONResponse(world.restart_device(request.path_params["device_id"]))
        except SimApiError as exc:
            return _sim_error(exc.status, exc.message)

    async def fraud_alert(request: Request) -> Response:
        sim.sync()
        raw = request.path_params["payment_id"]
        try:
            delivery = world.fraud_alert(int(raw) if raw.isdigit() else -1, now())
        except SimApiError as exc:
            return _sim_error(exc.status, exc.message)
        status = await sim.send_webhook(delivery)
        return JSONResponse({"status_code": status})

    async def record(request: Request) -> Response:
        sim.sync()
        return JSONResponse(world.record())

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status == 404:
            return _removed()
        return JSONResponse(
            {"message": "method not allowed", "error": "method_not_allowed", "status": status,
             "cause": []},
            status_code=status,
        )

    routes = [
        Route(f"{API}/devices", api(list_devices, read=True), methods=["GET"]),
        Route(f"{API}/devices/{{device_id}}", api(set_mode), methods=["PATCH"]),
        Route(f"{API}/devices/{{device_id}}/payment-intents", api(create_intent), methods=["POST"]),
        Route(
            f"{API}/devices/{{device_id}}/payment-intents/{{intent_id}}",
            api(cancel_intent),
            methods=["DELETE"],
        ),
        Route(f"{API}/payment-intents/events", api(intent_events, read=True), methods=["GET"]),
        Route(f"{API}/payment-intents/{{intent_id}}", api(get_intent, read=True), methods=["GET"]),
        Route(
            f"{API}/payment-intents/{{intent_id}}/events",
            api(last_event, read=True),
            methods=["GET"],
        ),
        Route(f"{API}/integrator", api(get_integrator, read=True), methods=["GET"]),
        Route(f"{API}/integrator", api(patch_integrator), methods=["PATCH"]),
        Route(f"{API}/devices/{{device_id}}/refund", api(create_refund), methods=["POST"]),
        Route(f"{API}/refund/{{refund_id}}", api(get_refund, read=True), methods=["GET"]),
        Route(
            f"{API}/devices/{{device_id}}/refund/{{refund_id}}",
            api(cancel_refund),
            methods=["DELETE"],
        ),
        Route("/terminals/v1/list", orders_api(list_terminals, read=True), methods=["GET"]),
        Route("/terminals/v1/setup", orders_api(setup_terminals), methods=["PATCH"]),
        Route("/v1/orders", orders_api(create_order), methods=["POST"]),
        Route("/v1/orders/{order_id}", orders_api(get_order, read=True), methods=["GET"]),
        Route("/v1/orders/{order_id}/cancel", orders_api(cancel_order), methods=["POST"]),
        Route("/v1/orders/{order_id}/refund", orders_api(refund_order), methods=["POST"]),
        Route("/v1/orders", orders_api(online_only, read=True), methods=["GET"]),
        *(
            Route(f"/v1/orders/{{order_id}}/{action}", orders_api(online_only), methods=["POST"])
            for action in ("process", "capture", "transactions")
        ),
        Route(
            "/v1/orders/{order_id}/transactions/{transaction_id}",
            orders_api(online_only),
            methods=["PUT", "DELETE"],
        ),
        Route(
            "/v1/payments/{payment_id}/refunds",
            api(create_payment_refund),
            methods=["POST"],
        ),
        Route(
            "/v1/payments/{payment_id}/refunds",
            api(payment_refunds, read=True),
            methods=["GET"],
        ),
        Route(
            "/v1/payments/{payment_id}/refunds/{refund_id}",
            api(payment_refund, read=True),
            methods=["GET"],
        ),
        Route("/v1/payments/search", api(search_payments, read=True), methods=["GET"]),
        Route("/v1/payments/{payment_id}", api(get_payment, read=True), methods=["GET"]),
        Route("/_sim/clock/advance", advance, methods=["POST"]),
        Route("/_sim/clock", clock, methods=["GET"]),
        Route("/_sim/scenarios", add_scenario, methods=["POST"]),
        Route("/_sim/scenarios", clear_scenarios, methods=["DELETE"]),
        Route("/_sim/faults", faults, methods=["POST"]),
        Route("/_sim/devices/{device_id}/restart", restart, methods=["POST"]),
        Route("/_sim/payments/{payment_id}/fraud_alert", fraud_alert, methods=["POST"]),
        Route("/_sim/record", record, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
