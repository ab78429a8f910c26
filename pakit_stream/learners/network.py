"""Gossip fanout and TTL: tabular Q-learning over a discretised network state.

State: ``(log2 network size, latency band, loss band)``. Actions: a grid of (fanout, TTL); an
observed action off the grid is credited to the nearest grid point. Each broadcast is one step
of an episode, rewarded::

    coverage - message_cost * messages_sent / network_size
             - miss_penalty * max(0, coverage_target - coverage)

reaching everyone is worth 1, every message per node costs ``message_cost``, and falling short
of ``coverage_target`` (99.5%) costs ``miss_penalty`` more per unit (the daemon sets it to 10:
0.1% short costs as much as one more message per node). The step size is
``max(alpha, 1/visits)``: a sample mean at first, then a constant step that tracks drift. The
greedy answer maximises a lower confidence bound, ``Q - confidence / sqrt(visits)``, so a
setting that looked good once does not beat one that has been good a hundred times.

A state never visited backs off to the action values averaged over every state of the same
size band, then to all states; with nothing learned at all the answer is the fallback
fanout 6 / TTL 10.

>>> opt = NetworkOptimizer(epsilon=0.0)
>>> s = opt.state(network_size=100, avg_latency_ms=40.0, message_loss_rate=0.01)
>>> for _ in range(20):
...     opt.learn_one(s, (6, 10), opt.reward(1.0, 600, 100))   # full coverage, 600 messages
...     opt.learn_one(s, (3, 5), opt.reward(1.0, 250, 100))    # full coverage, 250 messages
...     opt.learn_one(s, (2, 3), opt.reward(0.7, 120, 100))    # cheap, but misses 30%
>>> opt.predict({"network_size": 100, "avg_latency_ms": 40.0, "message_loss_rate": 0.01})
{'fanout': 3, 'ttl': 5, 'source': 'learned', 'expected_reward': 0.975}
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from pakit_stream.base_model import ModelConfig, OnlineModel

__all__ = ["NetworkOptimizer", "FALLBACK_FANOUT", "FALLBACK_TTL"]

FALLBACK_FANOUT, FALLBACK_TTL = 6, 10
_FANOUTS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16)
_TTLS = (2, 3, 4, 5, 6, 8, 10, 12, 16, 20)
_LATENCY_BANDS = (100.0, 300.0)  # latency slows gossip but barely changes what it reaches
_LOSS_BANDS = (0.01, 0.05, 0.15)


def _band(value: float, edges: Sequence[float]) -> int:
    for i, edge in enumerate(edges):
        if value < edge:
            return i
    return len(edges)


def _nearest(value: int, grid: Sequence[int]) -> int:
    return min(grid, key=lambda g: (abs(g - value), g))


class NetworkOptimizer(OnlineModel):
    default_name = "network_optimizer"

    def __init__(self, model_config: ModelConfig | None = None, *, alpha: float = 0.05,
                 gamma: float = 0.0, message_cost: float = 0.01, coverage_target: float = 0.995,
                 miss_penalty: float = 1.0, confidence: float = 0.2, epsilon: float = 0.1,
                 fanouts: Sequence[int] = _FANOUTS, ttls: Sequence[int] = _TTLS,
                 seed: int | None = None) -> None:
        super().__init__(model_config)
        self.alpha, self.gamma = alpha, gamma
        self.message_cost, self.epsilon = message_cost, epsilon
        self.coverage_target, self.miss_penalty = coverage_target, miss_penalty
        self.confidence = confidence
        self.fanouts, self.ttls = tuple(sorted(fanouts)), tuple(sorted(ttls))
        self._q: dict[Hashable, dict[tuple[int, int], float]] = defaultdict(dict)
        self._n: dict[tuple[Hashable, tuple[int, int]], int] = defaultdict(int)
        self._rng = random.Random(seed)

    def state(self, network_size: int | None = None, avg_latency_ms: float = 0.0,
              message_loss_rate: float = 0.0) -> tuple[int, int, int]:
        size_band = -1 if not network_size else min(int(math.log2(max(network_size, 1))), 24)
        return (size_band, _band(avg_latency_ms, _LATENCY_BANDS), _band(message_loss_rate, _LOSS_BANDS))

    def reward(self, coverage: float, messages_sent: int, network_size: int) -> float:
        return (coverage - self.message_cost * messages_sent / max(network_size, 1)
                - self.miss_penalty * max(0.0, self.coverage_target - coverage))

    def snap(self, action: Sequence[int]) -> tuple[int, int]:
        return _nearest(int(action[0]), self.fanouts), _nearest(int(action[1]), self.ttls)

    def learn_one(self, state: Hashable, action: Sequence[int], reward: float,
                  next_state: Hashable | None = None) -> None:
        """Q(s, a) += step * (r + gamma * max_a' Q(s', a') - Q(s, a))."""
        a = self.snap(action)
        q_s = self._q[state]
        target = reward
        if next_state is not None and self.gamma and self._q.get(next_state):
            target += self.gamma * max(self._q[next_state].values())
        n = self._n[(state, a)] = self._n[(state, a)] + 1
        old = q_s.get(a, 0.0)
        q_s[a] = old + max(self.alpha, 1.0 / n) * (target - old)
        self.n_updates += 1

    def learn_round(self, network_size: int, avg_latency_ms: float, message_loss_rate: float,
                    fanout: int, ttl: int, coverage: float, messages_sent: int) -> float:
        r = self.reward(coverage, messages_sent, network_size)
        self.learn_one(self.state(network_size, avg_latency_ms, message_loss_rate), (fanout, ttl), r)
        return r

    def learn_record(self, record: Mapping[str, Any]) -> None:
        if "state" in record:  # the guide's episodes: {'state', 'action', 'reward'[, 'next_state']}
            self.learn_one(tuple(record["state"]), tuple(record["action"]), float(record["reward"]),
                           tuple(record["next_state"]) if record.get("next_state") else None)
        else:
            self.learn_round(record["network_size"], record["avg_latency_ms"],
                             record["message_loss_rate"], record["fanout"], record["ttl"],
                             record["coverage"], record["messages_sent"])

    def _values(self, state: Hashable) -> dict[tuple[int, int], tuple[float, float]]:
        """``action -> (lower confidence bound, mean)`` in ``state``, or in its back-off."""
        exact = self._q.get(state)
        if exact:
            n, c = self._n, self.confidence
            return {a: (v - c / math.sqrt(n[(state, a)]), v) for a, v in exact.items()}
        # back off: average each action over states of the same size band, then over all states
        for same in (lambda s: isinstance(s, tuple) and s[:1] == state[:1], lambda s: True):
            sums: dict[tuple[int, int], list[float]] = {}
            for s, q_s in self._q.items():
                if q_s and same(s):
                    for a, v in q_s.items():
                        acc = sums.setdefault(a, [0.0, 0])
                        acc[0] += v
                        acc[1] += 1
            if sums:
                return {a: (total / count,) * 2 for a, (total, count) in sums.items()}
        return {}

    def predict(self, request: Mapping[str, Any], explore: bool = False) -> dict[str, Any]:
        """Best (fanout, TTL) for the network described by ``request``.

        With ``explore`` (as the hint endpoint does), an epsilon share of answers is a random
        grid action, so the learner keeps seeing the rewards of the others.
        """
        state = request.get("state")
        if state is None:
            state = self.state(request.get("network_size"), float(request.get("avg_latency_ms", 0.0)),
                               float(request.get("message_loss_rate", 0.0)))
        values = self._values(tuple(state))
        if not values:
            return {"fanout": FALLBACK_FANOUT, "ttl": FALLBACK_TTL, "source": "fallback",
                    "expected_reward": None}
        if explore and self._rng.random() < self.epsilon:
            a = (self._rng.choice(self.fanouts), self._rng.choice(self.ttls))
            mean = values[a][1] if a in values else None
            return {"fanout": a[0], "ttl": a[1], "source": "explore", "expected_reward": mean}
        # highest lower bound; among equals, fewer messages (smaller fanout * TTL)
        a, (_, mean) = max(values.items(), key=lambda kv: (kv[1][0], -kv[0][0] * kv[0][1]))
        return {"fanout": a[0], "ttl": a[1], "source": "learned", "expected_reward": round(mean, 6)}

    @property
    def n_states(self) -> int:
        return len(self._q)
