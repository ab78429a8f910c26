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

import logging
import socket
from collections.abc import Mapping, Sequence

from kafka.partitioner.default import murmur2

from pakit_stream.settings import Settings

__all__ = ["HINT_TOPICS", "FORWARDED", "owner_of", "advertised_url"]

log = logging.getLogger(__name__)

#: the hints that read node-local state, and the topic that state is learned from
HINT_TOPICS = {"peer": "pakit.peers", "prefetch": "pakit.access", "compression": "pakit.blocks"}
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
