"""The HTTP API: hints, health, metrics, the admin endpoints and ``/openapi.json``, installed
from the route table of :mod:`pakit_stream.serving.api`.

A hint about a node another worker owns (its partition of the topic that carries its reads or
fetches is assigned elsewhere) is forwarded to that worker, whose learners saw the node's
events (:mod:`pakit_stream.routing`); the owner's answer comes back as it is.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import TYPE_CHECKING

import msgspec
from faust.web import Request, Response, View
from prometheus_client import generate_latest

from pakit_stream import __version__
from pakit_stream.exceptions import DaemonError, PakitStreamError
from pakit_stream.routing import FORWARDED
from pakit_stream.serving.api import ROUTES, GateParams, openapi
from pakit_stream.serving.hints import BadRequest
from pakit_stream.specs import SPECS

if TYPE_CHECKING:
    from pakit_stream.daemon.core import Daemon

__all__ = ["install"]

log = logging.getLogger(__name__)


def install(daemon: Daemon) -> None:
    app, hints, retrainer, settings = daemon.app, daemon.hints, daemon.retrainer, daemon.settings
    registry = daemon.metrics.registry
    admin_token = settings.admin_token
    forward = daemon.forward

    async def forwarded(view: View, kind: str, request: Request, body: bytes
                        ) -> Response | None:
        """The owner's answer to a hint about a node this worker does not own; ``None``:
        answer here (:class:`~pakit_stream.routing.Forwarder`)."""
        answer = await forward(kind, body, request.headers.get(FORWARDED))
        if answer is None:
            return None
        status, text, owner = answer
        return view.bytes(text, status=status, content_type="application/json",
                          headers={"X-Pakit-Answered-By": owner})

    def refused(view: View, request: Request, name: str) -> Response | None:
        """The error response for an unauthorised request or an unknown model, else None."""
        # as bytes: compare_digest refuses str with non-ASCII characters (a 500, not a 403)
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if not (admin_token and hmac.compare_digest(given, f"Bearer {admin_token}".encode())):
            return view.json({"error": "admin endpoints need the bearer token of "
                                       "PAKIT_STREAM_ADMIN_TOKEN"}, status=403)
        if name not in SPECS:
            return view.json({"error": f"unknown model {name}"}, status=404)
        return None

    def answer(view: View, call, *args) -> Response:
        try:
            return view.json(call(*args))
        except BadRequest as exc:
            return view.json({"error": exc.reason}, status=400)

    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json(hints.health())

    class Metrics(View):
        async def get(self, request: Request) -> Response:
            # aiohttp refuses a charset inside content_type; the exposition format is UTF-8 anyway
            return self.bytes(generate_latest(registry), content_type="text/plain; version=0.0.4")

    document = openapi(__version__)

    class OpenAPI(View):
        async def get(self, request: Request) -> Response:
            return self.json(document)

    def posted_hint(kind: str):
        call = getattr(hints, kind)

        class Hint(View):
            async def post(self, request: Request) -> Response:
                body = await request.read()
                owners = await forwarded(self, kind, request, body)
                return answer(self, call, body) if owners is None else owners
        return Hint

    class SimilarHint(View):
        async def get(self, request: Request, block_hash: str) -> Response:
            return answer(self, hints.similar, block_hash, request.query.get("top_k", "5"),
                          request.query.get("min_jaccard"))

    class CodecPolicy(View):
        async def get(self, request: Request) -> Response:
            return self.json(hints.codec_policy(asyncio.get_running_loop().call_soon))

    class Rollback(View):
        async def post(self, request: Request, name: str) -> Response:
            if (error := refused(self, request, name)) is not None:
                return error
            try:
                return self.json({"name": name, "serving": retrainer.rollback(name)})
            except (ValueError, PakitStreamError) as exc:
                return self.json({"error": str(exc)}, status=409)

    class Retrain(View):
        async def post(self, request: Request, name: str) -> Response:
            if (error := refused(self, request, name)) is not None:
                return error
            return self.json(await retrainer.retrain("admin", name))

    class Gate(View):
        async def post(self, request: Request, name: str, version: str) -> Response:
            if (error := refused(self, request, name)) is not None:
                return error
            try:  # the route's parameters, as the OpenAPI document describes them
                gate = msgspec.convert({**request.query, **request.match_info}, GateParams,
                                       strict=False)
            except msgspec.MsgspecError as exc:
                return self.json({"error": str(exc)}, status=400)
            try:
                return self.json(await retrainer.gate_candidate(name, gate.version,
                                                                gate.min_gain))
            except (ValueError, PakitStreamError) as exc:
                return self.json({"error": str(exc)}, status=409)

    views = {"health": Health, "metrics": Metrics, "openapi": OpenAPI,
             **{f"hint_{kind}": posted_hint(kind)
                for kind in ("peer", "network", "compression", "prefetch")},
             "hint_similar": SimilarHint, "policy_codec": CodecPolicy,
             "admin_rollback": Rollback, "admin_retrain": Retrain,
             "admin_gate": Gate}
    # installed from the table the OpenAPI document is made from: the two cannot differ
    if views.keys() != {route.name for route in ROUTES}:
        raise DaemonError(f"views {sorted(views)} differ from serving.api.ROUTES")
    for route in ROUTES:
        app.page(route.path, name=route.name)(views[route.name])
