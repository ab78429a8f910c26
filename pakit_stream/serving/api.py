"""The HTTP API as one table (:data:`ROUTES`): each route's method, path, parameters, body and
answers, as types. The daemon installs its views from this table
(:mod:`pakit_stream.daemon.views`), and :func:`openapi` generates the OpenAPI document from the
same table and types, so the document and what is served cannot differ.

>>> doc = openapi()
>>> doc["openapi"], doc["paths"]["/v1/hints/peer"]["post"]["operationId"]
('3.1.0', 'hint_peer')
>>> sorted(doc["paths"]["/v1/admin/models/{name}/rollback"]["post"]["responses"])
['200', '403', '404', '409']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from pakit_stream.serving import answers
from pakit_stream.serving.hints import (CompressionHintRequest, NetworkHintRequest,
                                        PeerHintRequest, PrefetchHintRequest, SimilarHintRequest)
from pakit_stream.specs import SPECS

__all__ = ["Route", "ROUTES", "ModelParams", "GateParams", "openapi"]

ModelName = Literal[tuple(SPECS)]  # type: ignore[valid-type]


class ModelParams(Struct):
    name: ModelName


class GateParams(Struct):
    name: ModelName
    version: Annotated[str, Meta(min_length=1)]
    min_gain: float | None = None


@dataclass(frozen=True)
class Route:
    """One operation. ``answer``: the type of the 200 answer, or the media type of one that is
    not JSON; ``params``: a struct whose fields named in ``path`` are path parameters and the
    others query parameters; ``errors``: the statuses answered with
    :class:`~pakit_stream.serving.answers.Error`, and when."""

    name: str
    method: Literal["get", "post"]
    path: str
    summary: str
    answer: Any
    body: type | None = None
    params: type | None = None
    errors: dict[int, str] = field(default_factory=dict)
    admin: bool = False


_MALFORMED = {400: "a malformed request; `error` says what is wrong"}
_ADMIN = {403: "no bearer token, a wrong one, or PAKIT_STREAM_ADMIN_TOKEN unset",
          404: "an unknown model"}
_REFUSED = {409: "the registry or the models refused it; `error` says why"}

ROUTES: tuple[Route, ...] = (
    Route("health", "get", "/health", "Status, events applied, offsets, learners, quality",
          answers.Health),
    Route("metrics", "get", "/metrics", "Prometheus exposition", "text/plain"),
    Route("openapi", "get", "/openapi.json", "This document", dict[str, Any]),
    Route("hint_peer", "post", "/v1/hints/peer", "The peer to fetch a block from",
          answers.PeerHint, body=PeerHintRequest, errors=_MALFORMED),
    Route("hint_network", "post", "/v1/hints/network", "A gossip setting for a network",
          answers.NetworkHint, body=NetworkHintRequest, errors=_MALFORMED),
    Route("hint_compression", "post", "/v1/hints/compression", "The codec for a block",
          answers.CompressionHint, body=CompressionHintRequest, errors=_MALFORMED),
    Route("hint_prefetch", "post", "/v1/hints/prefetch", "Blocks to prefetch after a read",
          answers.PrefetchHint, body=PrefetchHintRequest, errors=_MALFORMED),
    Route("hint_similar", "get", "/v1/hints/similar/{block_hash}", "Near-duplicate blocks",
          answers.SimilarHint, params=SimilarHintRequest, errors=_MALFORMED),
    Route("policy_codec", "get", "/v1/policies/codec",
          "The codec decisions compiled for nodes to apply locally", answers.CodecPolicyAnswer),
    Route("admin_rollback", "post", "/v1/admin/models/{name}/rollback",
          "End the running canary, else serve the previous version", answers.Rollback,
          params=ModelParams, errors={**_ADMIN, **_REFUSED}, admin=True),
    Route("admin_retrain", "post", "/v1/admin/models/{name}/retrain", "Retrain now",
          answers.RetrainOutcome, params=ModelParams, errors=_ADMIN, admin=True),
    Route("admin_gate", "post", "/v1/admin/models/{name}/gate/{version}",
          "Judge a registered candidate against the serving version", answers.RetrainOutcome,
          params=GateParams, errors={**_MALFORMED, **_ADMIN, **_REFUSED}, admin=True),
)

_REF = "#/components/schemas/{name}"
#: the longest request line (and header) aiohttp reads, under Faust's views and the replicas
MAX_LINE = 8190
_SECURITY = "adminToken"


def _parameters(route: Route) -> list[dict[str, Any]]:
    """The route's path and query parameters, from its ``params`` struct."""
    if route.params is None:
        return []
    schema = msgspec.json.schema(route.params)
    struct = schema["$defs"][route.params.__name__]
    out = []
    for name, prop in struct["properties"].items():
        prop = {k: v for k, v in prop.items() if not (k == "default" and v is None)}
        # a query parameter is absent rather than null
        options = [s for s in prop.pop("anyOf", [prop]) if s.get("type") != "null"]
        prop = {**options[0], **prop} if len(options) == 1 else {"anyOf": options, **prop}
        in_path = f"{{{name}}}" in route.path
        out.append({"name": name, "in": "path" if in_path else "query",
                    "required": in_path or name in struct.get("required", ()),
                    "schema": prop})
    return out


def _operation(route: Route, refs: dict[Any, dict]) -> dict[str, Any]:
    if isinstance(route.answer, str):
        ok = {route.answer: {"schema": {"type": "string"}}}
    else:
        ok = {"application/json": {"schema": refs[route.answer]}}
    responses = {"200": {"description": route.summary, "content": ok}}
    for status, why in sorted(route.errors.items()):
        responses[str(status)] = {"description": why, "content": {
            "application/json": {"schema": refs[answers.Error]}}}
    if route.params is not None and 400 in route.errors:
        # refused by the HTTP server before the route sees it, in its own words
        responses["400"]["description"] += (f"; a request line longer than {MAX_LINE} bytes "
                                             "(a long query) is refused as text")
        responses["400"]["content"]["text/plain"] = {"schema": {"type": "string"}}
    op: dict[str, Any] = {"operationId": route.name, "summary": route.summary,
                          "responses": responses}
    if parameters := _parameters(route):
        op["parameters"] = parameters
    if route.body is not None:
        op["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": refs[route.body]}}}
    if route.admin:
        op["security"] = [{_SECURITY: []}]
    return op


def openapi(version: str = "0", routes: tuple[Route, ...] = ROUTES) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``, with ``version`` as the API's version."""
    types = list(dict.fromkeys(
        [t for r in routes for t in (r.body, r.answer) if t is not None and not isinstance(t, str)]
        + [answers.Error]))
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    refs = dict(zip(types, schemas))
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method] = _operation(route, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "pakit-stream", "version": version,
                 "description": "Hints for a content-addressed block store, learned from "
                                "its nodes' telemetry; and the daemon's admin endpoints."},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {_SECURITY: {
            "type": "http", "scheme": "bearer",
            "description": "PAKIT_STREAM_ADMIN_TOKEN; the admin endpoints are off while it "
                           "is unset"}}},
    }
