"""Push gossip over a real RTT matrix: what a broadcast with (fanout, TTL) reaches, at what cost.

A broadcast starts at one node. Every node that hears the message for the first time forwards
it to ``fanout`` nodes drawn at random, up to ``ttl`` hops from the origin. A message is lost
with probability ``loss``, and, over a matrix, also when its link was not measured in the
current slice (unreachable). A network of ``n`` nodes is laid over the matrix's hosts: without
repetition while ``n`` fits, else several nodes per host (nodes on one host are 1 ms apart).
Each hop takes half the link's RTT; the broadcast completes when its last node is reached.

>>> rng = np.random.default_rng(0)
>>> coverage, messages, _ = broadcast(200, fanout=8, ttl=10, loss=0.0, rng=rng)
>>> coverage > 0.99, messages > 200
(True, True)
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from pakit_stream.replay.latency import RttMatrix

__all__ = ["broadcast", "GossipReplay", "SIZES", "LOSSES"]

_SAME_HOST_MS = 1.0
SIZES = (20, 50, 100, 200, 500, 1000, 2000)  # network sizes, tens to thousands of nodes
LOSSES = (0.0, 0.02, 0.1)  # message loss rates


def broadcast(n: int, fanout: int, ttl: int, loss: float, rng: np.random.Generator,
              rtt_ms: np.ndarray | None = None, hosts: np.ndarray | None = None
              ) -> tuple[float, int, float]:
    """One broadcast: ``(coverage, messages sent, completion time in ms)``; the time is 0
    without ``rtt_ms`` (a host-by-host matrix, NaN = unreachable) and ``hosts`` (node → host)."""
    informed = np.zeros(n, dtype=bool)
    informed[0] = True
    arrival = np.full(n, np.inf)
    arrival[0] = 0.0
    frontier = np.array([0])
    messages = 0
    for _ in range(ttl):
        if frontier.size == 0:
            break
        src = np.repeat(frontier, fanout)
        dst = rng.integers(0, n, size=src.size)
        messages += dst.size
        ok = rng.random(dst.size) >= loss
        if rtt_ms is not None:
            link = rtt_ms[hosts[src], hosts[dst]].astype(np.float64)
            link[hosts[src] == hosts[dst]] = _SAME_HOST_MS
            ok &= ~np.isnan(link)
            when = arrival[src] + link / 2
        else:
            when = np.zeros(dst.size)
        dst, when = dst[ok], when[ok]
        fresh_mask = ~informed[dst]
        dst, when = dst[fresh_mask], when[fresh_mask]
        np.minimum.at(arrival, dst, when)
        fresh = np.unique(dst)
        informed[fresh] = True
        frontier = fresh
    reached = arrival[informed]
    return float(informed.mean()), int(messages), float(reached.max()) if rtt_ms is not None else 0.0


class GossipReplay:
    """Broadcasts over slice ``t`` of an RTT matrix, as ``gossip_round`` events."""

    def __init__(self, matrix: RttMatrix | None, seed: int = 0) -> None:
        self.matrix = matrix
        self.rng = np.random.default_rng(seed)

    def layout(self, n: int) -> np.ndarray:
        hosts = self.matrix.hosts
        return self.rng.choice(hosts, n, replace=n > hosts)

    def round(self, t: int, n: int, loss: float, fanout: int, ttl: int, node_id: str = "node-0"
              ) -> dict:
        if self.matrix is None:
            coverage, messages, _ = broadcast(n, fanout, ttl, loss, self.rng)
            latency = 0.0
        else:
            hosts = self.layout(n)
            rtt = self.matrix.ms[t % self.matrix.slices]
            coverage, messages, _ = broadcast(n, fanout, ttl, loss, self.rng, rtt, hosts)
            sample = rtt[np.ix_(hosts[:64], hosts[:64])]
            latency = float(np.nanmean(sample)) if np.isfinite(sample).any() else 0.0
        return {"event_type": "gossip_round", "node_id": node_id, "ts": float(t),
                "network_size": n, "avg_latency_ms": round(latency, 3), "message_loss_rate": loss,
                "fanout": fanout, "ttl": ttl, "coverage": coverage, "messages_sent": messages}

    def rounds(self, sizes, losses, fanouts, ttls, per_slice: int = 1) -> Iterator[dict]:
        """Logged exploration: at every slice, ``per_slice`` broadcasts with a random network
        size, loss rate and (fanout, TTL) from the given choices."""
        slices = self.matrix.slices if self.matrix is not None else 1
        pick = self.rng.choice
        for t in range(slices):
            for _ in range(per_slice):
                yield self.round(t, int(pick(sizes)), float(pick(losses)), int(pick(fanouts)),
                                 int(pick(ttls)))
