"""Asking the daemon for hints from a node: a deadline per call, the fallback on any failure,
a circuit breaker, and a short cache for the answers that change slowly.

A hint sits on the node's data path: one that comes after the fetch it was meant to speed up is
worthless. So every method answers within ``timeout`` seconds. When the daemon is slow, down or
failing (a timeout, a refused connection, an HTTP 5xx, an answer that is not JSON), the method
returns the documented fallback, marked ``source: "fallback"`` with the ``error`` that led to it:

===========  ==========================================================================
hint         fallback
===========  ==========================================================================
peer         a candidate drawn at random
network      push, fanout 6, TTL 10
compression  zstd-3 above 100 kB, else lz4
prefetch     nothing
similar      nothing (a block is only known to be identical to itself)
codec_policy no rules: every block gets the compression fallback
===========  ==========================================================================

After ``failures`` failures in a row the breaker opens: for ``cooldown`` seconds the client
answers the fallback without asking (error ``circuit open``), then lets one call through, and
closes on its success. A request the daemon refuses as malformed (HTTP 4xx) is the caller's
bug: it raises :class:`HintRequestError` and does not count against the daemon. Peer, gossip
and codec-policy answers are cached for ``cache_ttl`` seconds per identical request (0 turns it
off). ``codec_policy()`` gives the compiled codec decisions, for a node to apply per block
without asking (:meth:`CodecPolicy.from_dict <pakit_stream.learners.codec.CodecPolicy.from_dict>`).

:class:`HintClient` is synchronous; :class:`AsyncHintClient` has the same methods as
coroutines. Both hold a connection pool: make one per node and close it (or use ``with``).

>>> with HintClient("http://127.0.0.1:9", timeout=0.2) as hints:  # nothing listens there
...     answer = hints.network(network_size=200, avg_latency_ms=30, message_loss_rate=0.01)
>>> answer["mode"], answer["fanout"], answer["ttl"], answer["source"]
('push', 6, 10, 'fallback')
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from typing import Any

import httpx
import msgspec

from pakit_stream.exceptions import PakitStreamError, UsageError
from pakit_stream.learners.codec import CodecPolicy, heuristic_codec
from pakit_stream.learners.network import fallback_answer

__all__ = ["HintClient", "AsyncHintClient", "HintRequestError", "fallback"]

_CACHED = frozenset({"peer", "network", "codec_policy"})  # answers that change slowly


class HintRequestError(PakitStreamError, ValueError):
    """The daemon refused the request as malformed; ``reason`` is its explanation."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status, self.reason = status, reason


def fallback(kind: str, request: dict[str, Any], error: str,
             rng: random.Random | None = None) -> dict[str, Any]:
    """The answer a node acts on when the daemon gives none: what it would do without it.

    >>> fallback("compression", {"block_size": 262144}, "timeout")["algorithm"]
    'zstd-3'
    """
    base = {"source": "fallback", "error": error}
    if kind == "peer":
        peers = request["available_peers"]
        return {"peer_id": (rng or random).choice(peers) if peers else None, "score": None,
                **base}
    if kind == "network":
        return {**fallback_answer(), **base}
    if kind == "compression":
        return {"algorithm": heuristic_codec(request["block_size"]), "expert": "fallback",
                "probe_used": False, "probe_recommended": False, "model_version": None, **base}
    if kind == "prefetch":
        return {"blocks": [], "positions": [], "proposals": [], "threshold": None,
                "model_version": None, **base}
    if kind == "similar":
        return {"block_hash": request["block_hash"], "similar": [], **base}
    if kind == "codec_policy":
        return {**CodecPolicy.fallback().as_dict(), **base}
    raise UsageError(f"unknown hint {kind!r}")


class _Breaker:
    """Closed until ``failures`` failures in a row; then open for ``cooldown`` seconds; then
    one trial call (half open) decides."""

    def __init__(self, failures: int, cooldown: float) -> None:
        self.failures, self.cooldown = failures, cooldown
        self.count, self.opened_at = 0, None

    def allows(self) -> bool:
        if self.opened_at is None:
            return True
        if time.monotonic() - self.opened_at >= self.cooldown:
            self.opened_at = time.monotonic()  # one trial; the others wait another cooldown
            return True
        return False

    def success(self) -> None:
        self.count, self.opened_at = 0, None

    def failure(self) -> None:
        self.count += 1
        if self.count >= self.failures:
            self.opened_at = time.monotonic()

    @property
    def open(self) -> bool:
        return self.opened_at is not None


class _Core:
    """What both clients share: requests, the breaker, the cache, the counters."""

    def __init__(self, timeout: float, failures: int, cooldown: float, cache_ttl: float,
                 cache_size: int = 1024, seed: int | None = None) -> None:
        if timeout <= 0:
            raise UsageError("timeout must be positive")
        self.timeout, self.cache_ttl, self.cache_size = timeout, cache_ttl, cache_size
        self.breaker = _Breaker(failures, cooldown)
        self._cache: OrderedDict[tuple, tuple[float, dict]] = OrderedDict()
        self._rng = random.Random(seed)
        #: calls, answers from the daemon, from the cache, fallbacks (by error)
        self.stats: dict[str, int] = {"calls": 0, "answered": 0, "cached": 0, "fallback": 0}

    @staticmethod
    def _build(kind: str, request: dict[str, Any]) -> tuple[str, str, bytes | None, dict]:
        if kind == "similar":
            query = {"top_k": request.get("top_k", 5)}
            if request.get("min_jaccard") is not None:
                query["min_jaccard"] = request["min_jaccard"]
            return "GET", f"/v1/hints/similar/{request['block_hash']}", None, query
        if kind == "codec_policy":
            return "GET", "/v1/policies/codec", None, {}
        body = {k: v for k, v in request.items() if v is not None}
        return "POST", f"/v1/hints/{kind}", msgspec.json.encode(body), {}

    def _before(self, kind: str, request: dict, body: bytes | None, path: str):
        """``(key, answer)``: an answer from the cache or the open breaker, or ``None``."""
        self.stats["calls"] += 1
        key = (path, body)
        if kind in _CACHED and self.cache_ttl > 0:
            hit = self._cache.get(key)
            if hit is not None and time.monotonic() - hit[0] < self.cache_ttl:
                self.stats["cached"] += 1
                return key, dict(hit[1])
        if not self.breaker.allows():
            return key, self._fallback(kind, request, "circuit open")
        return key, None

    def _after(self, kind: str, request: dict, key: tuple,
               response: httpx.Response | None, error: str | None) -> dict:
        if response is not None and 400 <= response.status_code < 500:
            self.breaker.success()  # the daemon is fine; the request is not
            try:
                reason = response.json().get("error", response.text)
            except ValueError:
                reason = response.text
            raise HintRequestError(response.status_code, reason)
        if error is None and response is not None:
            if response.status_code >= 500:
                error = f"HTTP {response.status_code}"
            else:
                try:
                    answer = response.json()
                except ValueError:
                    error = "an answer that is not JSON"
                else:
                    self.breaker.success()
                    self.stats["answered"] += 1
                    if kind in _CACHED and self.cache_ttl > 0:
                        self._cache[key] = (time.monotonic(), answer)
                        self._cache.move_to_end(key)
                        if len(self._cache) > self.cache_size:
                            self._cache.popitem(last=False)
                    return answer
        self.breaker.failure()
        return self._fallback(kind, request, error or "no answer")

    def _fallback(self, kind: str, request: dict, error: str) -> dict:
        self.stats["fallback"] += 1
        return fallback(kind, request, error, self._rng)


def _error(exc: Exception) -> str:
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return "timeout"
    return f"{type(exc).__name__}: {exc}"


def _peer(node_id, available_peers, context=None, block_size=None) -> dict:
    return {"node_id": node_id, "available_peers": list(available_peers),
            "context": context, "block_size": block_size}


def _network(network_size=None, avg_latency_ms=0.0, message_loss_rate=0.0, node_id=None):
    return {"network_size": network_size, "avg_latency_ms": avg_latency_ms,
            "message_loss_rate": message_loss_rate, "node_id": node_id}


def _prefetch(node_id=None, recent_accesses=(), k=5, cache_blocks=None, object_id=None,
              chunk_index=None):
    return {"node_id": node_id, "recent_accesses": list(recent_accesses) or None, "k": k,
            "cache_blocks": cache_blocks, "object_id": object_id, "chunk_index": chunk_index}


def _similar(block_hash, top_k=5, min_jaccard=None):
    return {"block_hash": block_hash, "top_k": top_k, "min_jaccard": min_jaccard}


class HintClient(_Core):
    """Hints from the daemon at ``url`` (``http://host:port``), each within ``timeout``
    seconds, the fallback otherwise. See the module's documentation."""

    def __init__(self, url: str, timeout: float = 0.05, *, failures: int = 5,
                 cooldown: float = 5.0, cache_ttl: float = 1.0, seed: int | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(timeout, failures, cooldown, cache_ttl, seed=seed)
        self._http = httpx.Client(base_url=url, timeout=timeout, transport=transport)

    def _ask(self, kind: str, request: dict[str, Any]) -> dict:
        method, path, body, query = self._build(kind, request)
        key, answer = self._before(kind, request, body, path)
        if answer is not None:
            return answer
        deadline = time.monotonic() + self.timeout
        response = error = None
        try:
            response = self._http.request(method, path, content=body, params=query,
                                          headers={"content-type": "application/json"})
            if time.monotonic() > deadline:  # each phase met its limit; the sum did not
                response, error = None, "timeout"
        except httpx.HTTPError as exc:
            error = _error(exc)
        return self._after(kind, request, key, response, error)

    def peer(self, node_id: str, available_peers, context: dict[str, float] | None = None,
             block_size: int | None = None) -> dict:
        """``{peer_id, score, source}``: the candidate to fetch from."""
        return self._ask("peer", _peer(node_id, available_peers, context, block_size))

    def network(self, network_size: int | None = None, avg_latency_ms: float = 0.0,
                message_loss_rate: float = 0.0, node_id: str | None = None) -> dict:
        """``{mode, fanout, ttl, pull_rounds, source, ...}``: the gossip setting."""
        return self._ask("network", _network(network_size, avg_latency_ms, message_loss_rate,
                                             node_id))

    def compression(self, block_size: int, **features) -> dict:
        """``{algorithm, probe_recommended, source, ...}``; ``features``: ``node_id``,
        ``probe_ratio``, ``entropy``, ``block_depth``, ``parent_count``."""
        return self._ask("compression", {"block_size": block_size, **features})

    def prefetch(self, node_id: str | None = None, recent_accesses=(), k: int = 5,
                 cache_blocks: int | None = None, object_id: str | None = None,
                 chunk_index: int | None = None) -> dict:
        """``{blocks, positions, proposals, threshold, source, ...}``: what to prefetch
        (after ``(object_id, chunk_index)``, the node's newest read, when given)."""
        return self._ask("prefetch", _prefetch(node_id, recent_accesses, k, cache_blocks,
                                               object_id, chunk_index))

    def similar(self, block_hash: str, top_k: int = 5, min_jaccard: float | None = None) -> dict:
        """``{block_hash, similar: [{block_hash, jaccard}], source}``."""
        return self._ask("similar", _similar(block_hash, top_k, min_jaccard))

    def codec_policy(self) -> dict:
        """``{version, default, rules, source}``: the compiled codec decisions; apply them
        with ``CodecPolicy.from_dict(answer).choose(size, recent, probe)``."""
        return self._ask("codec_policy", {})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HintClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncHintClient(_Core):
    """:class:`HintClient` for asyncio: the same methods, as coroutines; the whole call,
    connection included, is bounded by ``timeout``."""

    def __init__(self, url: str, timeout: float = 0.05, *, failures: int = 5,
                 cooldown: float = 5.0, cache_ttl: float = 1.0, seed: int | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(timeout, failures, cooldown, cache_ttl, seed=seed)
        self._http = httpx.AsyncClient(base_url=url, timeout=timeout, transport=transport)

    async def _ask(self, kind: str, request: dict[str, Any]) -> dict:
        import asyncio

        method, path, body, query = self._build(kind, request)
        key, answer = self._before(kind, request, body, path)
        if answer is not None:
            return answer
        response = error = None
        try:
            response = await asyncio.wait_for(
                self._http.request(method, path, content=body, params=query,
                                   headers={"content-type": "application/json"}), self.timeout)
        except (httpx.HTTPError, asyncio.TimeoutError) as exc:
            error = _error(exc)
        return self._after(kind, request, key, response, error)

    async def peer(self, node_id: str, available_peers, context=None, block_size=None) -> dict:
        return await self._ask("peer", _peer(node_id, available_peers, context, block_size))

    async def network(self, network_size=None, avg_latency_ms=0.0, message_loss_rate=0.0,
                      node_id=None) -> dict:
        return await self._ask("network", _network(network_size, avg_latency_ms,
                                                   message_loss_rate, node_id))

    async def compression(self, block_size: int, **features) -> dict:
        return await self._ask("compression", {"block_size": block_size, **features})

    async def prefetch(self, node_id=None, recent_accesses=(), k=5, cache_blocks=None,
                       object_id=None, chunk_index=None) -> dict:
        return await self._ask("prefetch", _prefetch(node_id, recent_accesses, k, cache_blocks,
                                                     object_id, chunk_index))

    async def similar(self, block_hash: str, top_k: int = 5, min_jaccard=None) -> dict:
        return await self._ask("similar", _similar(block_hash, top_k, min_jaccard))

    async def codec_policy(self) -> dict:
        return await self._ask("codec_policy", {})

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncHintClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
