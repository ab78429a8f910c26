"""Gossip over a real RTT matrix: what a broadcast reaches, and what it costs in payload and
control messages.

Two modes:

``push``
    A broadcast starts at one node. Every node that hears the message for the first time
    forwards it to ``fanout`` nodes drawn at random, up to ``ttl`` hops from the origin (a
    fractional fanout: each node sends the whole part, and one more with the probability of the
    fraction). Every message carries the payload.
``push-pull``
    The same push, then ``pull`` rounds of anti-entropy (Demers et al., PODC 1987): every node
    contacts one random node and the two exchange digests of the message ids they hold (two
    control messages); when exactly one of them holds the message, it sends the payload across.
    Push informs most nodes cheaply; pull finds the rest, and sends a payload only to a node that
    lacks it (push-then-pull reaches everyone with n + o(n) payload messages, Mercier et al.
    2017; push-pull needs O(n ln ln n) messages, Karp et al., FOCS 2000).

A message is lost with probability ``loss``, and, over a matrix, also when its link was not
measured in the current slice (unreachable). A network of ``n`` nodes is laid over the matrix's
hosts: without repetition while ``n`` fits, else several nodes per host (nodes on one host are
1 ms apart). Each hop takes half the link's RTT; a pull round starts when the slowest transfer
of the one before has landed; the broadcast completes when its last node is reached.

>>> rng = np.random.default_rng(0)
>>> push = broadcast(200, fanout=8, ttl=10, loss=0.0, rng=rng)
>>> push.coverage > 0.99, push.payload > 200 * 7, push.control
(True, True, 0)
>>> both = broadcast(200, fanout=1.5, ttl=6, loss=0.0, rng=rng, mode="push-pull", pull=4)
>>> both.coverage > 0.99, both.payload < 200 * 2, both.control == 2 * 200 * 4
(True, True, True)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from pakit_stream.exceptions import UsageError
from pakit_stream.replay.latency import RttMatrix

__all__ = ["broadcast", "round_event", "Spread", "GossipReplay", "MODES", "SIZES", "LOSSES"]

_SAME_HOST_MS = 1.0
SIZES = (20, 50, 100, 200, 500, 1000, 2000)  # network sizes, tens to thousands of nodes
LOSSES = (0.0, 0.02, 0.1)  # message loss rates
MODES = ("push", "push-pull")


class Spread(NamedTuple):
    """What one broadcast did: share of nodes reached, payload and control messages sent,
    and when the last node was reached (ms; 0 without a matrix)."""

    coverage: float
    payload: int
    time_ms: float
    control: int = 0


def broadcast(n: int, fanout: float, ttl: int, loss: float, rng: np.random.Generator,
              rtt_ms: np.ndarray | None = None, hosts: np.ndarray | None = None,
              mode: str = "push", pull: int = 0) -> Spread:
    """One broadcast (see the module's text). ``rtt_ms`` is a host-by-host matrix (NaN =
    unreachable) and ``hosts`` maps node → host; without them, links only lose ``loss``."""
    if mode not in MODES:
        raise UsageError(f"unknown gossip mode {mode!r}; one of {', '.join(MODES)}")
    informed = np.zeros(n, dtype=bool)
    informed[0] = True
    arrival = np.full(n, np.inf)
    arrival[0] = 0.0
    frontier = np.array([0])
    whole, part = int(fanout), fanout - int(fanout)

    def deliver(src: np.ndarray, dst: np.ndarray, start: np.ndarray) -> None:
        ok = rng.random(dst.size) >= loss
        if rtt_ms is not None:
            link = rtt_ms[hosts[src], hosts[dst]].astype(np.float64)
            link[hosts[src] == hosts[dst]] = _SAME_HOST_MS
            ok &= ~np.isnan(link)
            when = start + link / 2
        else:
            when = np.zeros(dst.size)
        dst, when = dst[ok], when[ok]
        np.minimum.at(arrival, dst, when)
        informed[dst] = True

    payload = control = 0
    for _ in range(ttl):
        if frontier.size == 0:
            break
        sends = np.full(frontier.size, whole)
        if part:
            sends += rng.random(frontier.size) < part
        src = np.repeat(frontier, sends)
        dst = rng.integers(0, n, size=src.size)
        payload += dst.size
        before = informed.copy()
        deliver(src, dst, arrival[src])
        frontier = np.flatnonzero(informed & ~before)
    if mode == "push-pull":
        nodes = np.arange(n)
        for _ in range(pull):
            partner = rng.integers(0, n, size=n)
            control += 2 * n  # a digest each way
            has, other = informed.copy(), informed[partner]
            src = np.concatenate([nodes[has & ~other], partner[~has & other]])
            dst = np.concatenate([partner[has & ~other], nodes[~has & other]])
            payload += src.size
            start = np.max(arrival[has]) if rtt_ms is not None else 0.0
            deliver(src, dst, np.full(src.size, start))
    reached = arrival[informed]
    return Spread(float(informed.mean()), int(payload),
                  float(reached.max()) if rtt_ms is not None else 0.0, int(control))


def round_event(node_id: str, ts: float, n: int, latency_ms: float, loss: float,
                fanout: float, ttl: int, spread: Spread, mode: str = "push", pull: int = 0
                ) -> dict:
    """The ``gossip_round`` event a node logs for a broadcast."""
    event = {"event_type": "gossip_round", "node_id": node_id, "ts": ts, "network_size": n,
             "avg_latency_ms": round(latency_ms, 3), "message_loss_rate": loss,
             "fanout": fanout, "ttl": ttl, "coverage": spread.coverage,
             "messages_sent": spread.payload}
    if mode != "push":
        event.update(mode=mode, pull_rounds=pull, control_messages=spread.control)
    return event


class GossipReplay:
    """Broadcasts over slice ``t`` of an RTT matrix, as ``gossip_round`` events."""

    def __init__(self, matrix: RttMatrix | None, seed: int = 0) -> None:
        self.matrix = matrix
        self.rng = np.random.default_rng(seed)

    def layout(self, n: int) -> np.ndarray:
        hosts = self.matrix.hosts
        return self.rng.choice(hosts, n, replace=n > hosts)

    def round(self, t: int, n: int, loss: float, fanout: float, ttl: int,
              node_id: str = "node-0", mode: str = "push", pull: int = 0) -> dict:
        if self.matrix is None:
            spread = broadcast(n, fanout, ttl, loss, self.rng, mode=mode, pull=pull)
            latency = 0.0
        else:
            hosts = self.layout(n)
            rtt = self.matrix.ms[t % self.matrix.slices]
            spread = broadcast(n, fanout, ttl, loss, self.rng, rtt, hosts, mode=mode, pull=pull)
            sample = rtt[np.ix_(hosts[:64], hosts[:64])]
            latency = float(np.nanmean(sample)) if np.isfinite(sample).any() else 0.0
        return round_event(node_id, float(t), n, latency, loss, fanout, ttl, spread, mode, pull)

    def rounds(self, sizes, losses, actions, per_slice: int = 1) -> Iterator[dict]:
        """Logged exploration: at every slice, ``per_slice`` broadcasts with a random network
        size, loss rate and action ``(mode, fanout, ttl, pull rounds)`` from the given ones."""
        slices = self.matrix.slices if self.matrix is not None else 1
        rng = self.rng
        for t in range(slices):
            for _ in range(per_slice):
                mode, fanout, ttl, pull = actions[int(rng.integers(len(actions)))]
                yield self.round(t, int(rng.choice(sizes)), float(rng.choice(losses)), fanout,
                                 ttl, mode=mode, pull=pull)
