"""Which worker answers a node's hint: the one whose partitions hold the node's reads, fetches
and stored blocks.

Nodes key their telemetry by ``node_id``, so every event of a node lands on one partition of
each topic, and the consumer group gives that partition (of every topic: Faust's assignor
co-partitions topics of equal size) to one worker. Only that worker has learned the node's
peer latencies, reads and codec outcomes. A worker asked a peer, prefetch or compression hint
for a node it does not own forwards the request to the owner, found in the group's assignment
(each worker's advertised URL travels in it), as Kafka Streams' interactive queries and Faust's
``route_topic_req`` do; a forwarded request is never forwarded again. If the owner does not
answer within ``route_timeout_s``, the worker answers from its own state.

The dedup index and the gossip model are global: every worker learns every partition of their
topics (:data:`~pakit_stream.pipeline.GLOBAL_TOPICS`), so any worker answers them.

>>> owner_of("node-7", {"http://a:6066": {"pakit.peers": [0, 1]},
...                     "http://b:6066": {"pakit.peers": [2, 3]}}, "pakit.peers")
'http://b:6066'
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

import msgspec
from kafka.partitioner.default import murmur2

from pakit_stream.settings import Settings

__all__ = ["HINT_TOPICS", "FORWARDED", "owner_of", "advertised_url", "with_port", "Forwarder"]

log = logging.getLogger(__name__)

#: the hints that read node-local state, and the topic that state is learned from
HINT_TOPICS = {"peer": "pakit.peers", "prefetch": "pakit.access", "compression": "pakit.blocks"}
#: longest a forwarding connection stays idle: shorter than a hint replica's drain (5 s)
KEEPALIVE_S = 3.0
#: the header that marks a forwarded request (its value: the forwarding worker's URL)
FORWARDED = "X-Pakit-Forwarded-By"


def owner_of(node_id: str, distribution: Mapping[str, Mapping[str, Sequence[int]]],
             topic: str) -> str | None:
    """The URL of the worker whose partition of ``topic`` holds ``node_id``'s events, from the
    group's ``{url: {topic: [partitions]}}``; ``None`` if no worker holds it (yet)."""
    by_partition = {p: url for url, topics in distribution.items()
                    for p in topics.get(topic, ())}
    if not by_partition:
        return None
    partitions = sorted(by_partition)
    if partitions != list(range(len(partitions))):  # a partition without owner: no answer
        return None
    # the producers' partitioner (kafka-python's, as Java's): murmur2 of the key
    return by_partition[(murmur2(node_id.encode()) & 0x7FFFFFFF) % len(partitions)]


def advertised_url(settings: Settings) -> str:
    """This worker's URL as the others reach it."""
    if settings.advertised_url:
        return settings.advertised_url.rstrip("/")
    host = settings.web_host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"http://{host}:{settings.web_port}"


def with_port(url: str, port: int) -> str:
    """``url`` at another port.

    >>> with_port("http://10.0.0.7:6066", 6068), with_port("http://[::1]:6066/", 6068)
    ('http://10.0.0.7:6068', 'http://[::1]:6068/')
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=f"[{host}]:{port}" if ":" in host
                                     else f"{host}:{port}"))


class _NodeOnly(msgspec.Struct):
    node_id: str | None = None


class Forwarder:
    """Sends a hint about a node another worker owns to that worker, and returns its answer.

    ``distribution`` gives the group's ``{url: {topic: [partitions]}}`` now; ``count`` is told
    each outcome (``forwarded``, ``owner_failed``). Used by the worker's views and by its hint
    replicas (:mod:`pakit_stream.daemon.replica`), which forward to the owner's ``port`` (its
    hint replicas: every worker of a group runs with the same settings).
    """

    def __init__(self, own_url: str, distribution: Callable[[], Mapping], timeout_s: float,
                 count: Callable[[str], None], port: int | None = None) -> None:
        self.own_url = own_url.rstrip("/")
        self.distribution, self.timeout_s, self.count = distribution, timeout_s, count
        self.port = port
        self._session = None  # made on first use, inside the running loop

    async def __call__(self, kind: str, body: bytes, forwarded_by: str | None
                       ) -> tuple[int, bytes, str] | None:
        """``(status, body, owner URL)`` of the owner's answer; ``None``: answer here (this
        worker owns the node, the request was forwarded already, it names no node, or the
        owner did not answer in time)."""
        topic = HINT_TOPICS.get(kind)
        if topic is None or forwarded_by:
            return None
        try:
            node = msgspec.json.decode(body, type=_NodeOnly).node_id
        except msgspec.MsgspecError:
            return None  # the local answer explains what is wrong with the request
        owner = None if node is None else owner_of(node, self.distribution(), topic)
        if owner is None or owner.rstrip("/") == self.own_url:
            return None
        if self.port is not None:
            owner = with_port(owner, self.port)
        import aiohttp

        if self._session is None:  # idle connections dropped before a replica's drain ends
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                connector=aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_S))
        try:
            async with self._session.post(f"{owner.rstrip('/')}/v1/hints/{kind}", data=body,
                                          headers={FORWARDED: self.own_url,
                                                   "Content-Type": "application/json"}) as r:
                answer, status = await r.read(), r.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("the owner %s of node %s did not answer a %s hint (%r); answering "
                        "here", owner, node, kind, exc)
            self.count("owner_failed")
            return None
        self.count("forwarded")
        return status, answer, owner
