"""Which peer to fetch a block from: a contextual bandit over the candidate peers.

Each peer is an arm of River's :class:`~river.bandit.LinUCBDisjoint`: a Bayesian linear
regression of the reward on the fetch's context, picked by upper confidence bound. The regression's
``smoothing`` forgets old evidence geometrically, so a peer that slows down (or recovers) is
re-estimated within a few hundred fetches. A peer never seen before has the prior's wide
uncertainty, so it gets tried. Arms are bounded: the least recently updated peer is evicted.
A context feature missing from a request (say, no ``block_size`` in a hint) is imputed with its
running mean over training, so the arms' estimates stay comparable.

Reward of a fetch: ``success * exp(-latency_ms / latency_scale_ms)``, in [0, 1].

>>> sel = PeerSelector(seed=1)
>>> for i in range(300):
...     sel.learn_one("fast", {"time_of_day": 0.5}, sel.reward(True, 20.0))
...     sel.learn_one("slow", {"time_of_day": 0.5}, sel.reward(True, 400.0))
>>> sel.predict({"available_peers": ["slow", "fast"], "context": {"time_of_day": 0.5}})
'fast'
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from river import bandit

from pakit_stream.base_model import ModelConfig, OnlineModel

__all__ = ["PeerSelector", "PeerChoice"]

_STD_KEYS = ("time_of_day", "network_load")


class PeerChoice(tuple):
    """``(peer_id, source, score)``: source is ``learned`` or ``fallback``."""

    __slots__ = ()

    def __new__(cls, peer_id: str, source: str, score: float | None):
        return super().__new__(cls, (peer_id, source, score))

    peer_id = property(lambda self: self[0])
    source = property(lambda self: self[1])
    score = property(lambda self: self[2])


class PeerSelector(OnlineModel):
    default_name = "peer_selector"

    def __init__(self, model_config: ModelConfig | None = None, use_context: bool = True, *,
                 smoothing: float = 0.995, latency_scale_ms: float = 200.0,
                 max_peers: int = 10_000, seed: int | None = None) -> None:
        super().__init__(model_config)
        self.use_context = use_context
        self.smoothing = smoothing
        self.latency_scale_ms = latency_scale_ms
        self.max_peers = max_peers
        self.seed = seed
        self._policy = bandit.LinUCBDisjoint(
            alpha=1.0, beta=1.0, smoothing=None if smoothing >= 1 else smoothing, seed=seed)
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._means: dict[str, list[float]] = {}  # feature -> [sum, count], for imputation
        self._rng = random.Random(seed)

    # -- features and reward -------------------------------------------------------------------
    def reward(self, success: bool, latency_ms: float) -> float:
        return math.exp(-latency_ms / self.latency_scale_ms) if success else 0.0

    def context(self, context: Mapping[str, float] | None, block_size: int | None = None) -> dict:
        x = {"bias": 1.0}
        if not self.use_context:
            return x
        if context:
            for k, v in context.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    x[k] = float(v)
        if block_size is not None:
            x["block_size_log"] = math.log10(block_size + 1) / 8
        for k, (total, n) in self._means.items():
            if k not in x:
                x[k] = total / n
        for k in _STD_KEYS:
            x.setdefault(k, 0.0)
        return x

    # -- learning --------------------------------------------------------------------------
    def learn_one(self, peer_id: str, context: Mapping[str, float], reward: float) -> None:
        """Update the arm of ``peer_id`` with a reward observed in ``context`` (a feature dict)."""
        self._policy.update(peer_id, context, reward)
        means = self._means
        for k, v in context.items():
            acc = means.get(k)
            if acc is None:
                if len(means) < 64:  # bounded: contexts carry at most 16 keys each
                    means[k] = [v, 1]
            else:
                acc[0] += v
                acc[1] += 1
        recent = self._recent
        recent[peer_id] = None
        recent.move_to_end(peer_id)
        if len(recent) > self.max_peers:
            self._forget(recent.popitem(last=False)[0])
        self.n_updates += 1

    def learn_fetch(self, peer_id: str, success: bool, latency_ms: float, block_size: int,
                    context: Mapping[str, float] | None) -> None:
        self.learn_one(peer_id, self.context(context, block_size), self.reward(success, latency_ms))

    def learn_record(self, record: Mapping[str, Any]) -> None:
        self.learn_fetch(record["peer_id"], bool(record.get("success", True)),
                         float(record.get("latency_ms", 0.0)), int(record.get("block_size", 0)),
                         record.get("context"))

    def _forget(self, peer_id: str) -> None:
        p = self._policy
        for store in (p._bayes_lin_regs, p._rewards, p._counts):
            store.pop(peer_id, None)

    # -- choosing ---------------------------------------------------------------------------
    def knows(self, peer_id: str) -> bool:
        return peer_id in self._recent

    def select(self, available_peers: Sequence[str], context: Mapping[str, float] | None = None,
               block_size: int | None = None) -> PeerChoice:
        """Pick a peer; a random one while none of ``available_peers`` has been seen."""
        if not available_peers:
            raise ValueError("available_peers is empty")
        peers = list(dict.fromkeys(available_peers))
        if not any(p in self._recent for p in peers):
            return PeerChoice(self._rng.choice(peers), "fallback", None)
        x = self.context(context, block_size)
        best, best_ucb = None, -math.inf
        regs = self._policy._bayes_lin_regs
        for p in peers:
            reg = regs.get(p)
            if reg is None:  # unseen: the prior's mean (0) and full uncertainty
                ucb = 1.0 / math.sqrt(self._policy.alpha) + 1.0 / math.sqrt(self._policy.beta)
            else:
                dist = reg.predict_one(x, with_dist=True)
                ucb = dist.mu + dist.sigma
            if ucb > best_ucb:
                best, best_ucb = p, ucb
        return PeerChoice(best, "learned", best_ucb)

    def predict(self, request: Mapping[str, Any]) -> str:
        return self.select(request["available_peers"], request.get("context"),
                           request.get("block_size")).peer_id

    @property
    def n_peers(self) -> int:
        return len(self._recent)
