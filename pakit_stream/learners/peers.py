"""Which peer to fetch a block from: a bandit that knows a latency measurement goes stale.

What a fetch teaches is mostly about that pair, at that moment. On real RTT matrices a pair's
latency holds for a while and then jumps (on the Seattle testbed matrices 86% of pair RTTs
equal the previous slice's; a host's whole row is re-measured at once every 5-7 slices, and the
new values are unrelated to the old ones), and spikes are heavy. So the learner estimates the
log latency from node ``n`` to peer ``p`` at time ``t`` from:

* the pair's **last observation**, weighted by ``w``: the correlation between a pair's
  deviation from its mean and its next deviation, learned per half-octave of age and per how
  large a jump its node and its peer have shown since (:class:`LagCorrelation`, shared by all
  pairs, with forgetting). When a node's paths change together, as when its link or route
  changes, everything it measured before goes stale at once, whatever its age;
* the pair's **long-run mean** (over its last ``window`` fetches), which starts from a
  **pooled prior** ``g + a_n + b_p``: a peer slow for every node is slow for a node that
  never tried it;
* a **context** correction, linear in the whitelisted features
  (:data:`~pakit_stream.events.schema.PEER_CONTEXT_KEYS`);
* **failures** as outcomes: a failed fetch is learned as what it cost (the time waited, at
  least ``failure_ms``), so a pair that fails looks slow for as long as failures persist
  (lost packets don't, outages do: the same learned ``w`` tells them apart).

The policy picks the candidate of least estimated latency. A peer the node never tried is
scored by a draw from the pooled prior's predictive distribution: what trying it teaches (its
long-run level) stays true, so it is worth exploring; a tried pair's later deviations are
transient, and exploring them costs more than it teaches. Unknown context keys are refused.

>>> sel = PeerSelector(seed=1)
>>> for t in range(60):
...     sel.learn_fetch("fast", True, 20.0, 65536, {"network_load": 0.2}, node_id="n1", ts=t)
...     sel.learn_fetch("slow", True, 400.0, 65536, {"network_load": 0.2}, node_id="n1", ts=t)
>>> sel.predict({"available_peers": ["slow", "fast"], "node_id": "n1", "ts": 61})
'fast'
"""

from __future__ import annotations

import math
import random
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from river import bandit, stats

from pakit_stream.base_model import ModelConfig, OnlineModel
from pakit_stream.events.schema import check_peer_context
from pakit_stream.exceptions import UsageError

__all__ = ["PeerSelector", "PeerChoice", "StalenessAwareSampling", "LagCorrelation"]

_LAGS = 128  # half-octave age buckets from 2 ** -20 to 2 ** 44 time units: any clock works
_LAG0 = 40
_TWO_PI = 2 * math.pi


class LagCorrelation(stats.base.Bivariate):
    """How much of a deviation survives a lag: the slope through the origin of ``y`` (a pair's
    new deviation from its mean) on ``x`` (its previous deviation), with exponential forgetting,
    and the mean squared error of predicting ``y`` by ``slope * x``.

    Starts from ``prior_weight`` pseudo-observations of slope ``prior_slope`` and error
    ``prior_mse``, so a lag seen rarely still answers sensibly.

    >>> lag = LagCorrelation(prior_slope=0.0, prior_weight=1.0)
    >>> for _ in range(200):
    ...     lag.update(1.0, 0.8)
    ...     lag.update(-1.0, -0.8)
    >>> round(lag.get(), 2), round(lag.mse, 4)
    (0.8, 0.0025)
    """

    def __init__(self, halflife: float = 20_000.0, prior_slope: float = 0.5,
                 prior_mse: float = 1.0, prior_weight: float = 2.0) -> None:
        self.halflife, self.prior_slope = halflife, prior_slope
        self.prior_mse, self.prior_weight = prior_mse, prior_weight
        self._keep = 0.5 ** (1.0 / halflife)
        self.sxx = self.sxy = self.syy = self.n = 0.0
        self.median_jump = 1.0  # running median of |y - x|, tracked in multiplicative steps

    def update(self, x: float, y: float) -> None:
        self.median_jump *= 1.02 if abs(y - x) > self.median_jump else 0.98
        k = self._keep
        self.sxx = self.sxx * k + x * x
        self.sxy = self.sxy * k + x * y
        self.syy = self.syy * k + y * y
        self.n = self.n * k + 1.0

    def get(self) -> float:
        w0 = self.prior_weight
        slope = (self.sxy + w0 * self.prior_slope) / (self.sxx + w0)
        return min(1.0, max(0.0, slope))

    @property
    def mse(self) -> float:
        w, w0 = self.get(), self.prior_weight
        sse = self.syy - 2 * w * self.sxy + w * w * self.sxx
        return max(1e-6, (max(sse, 0.0) + w0 * self.prior_mse) / (self.n + w0))


class _Pair:
    """What one node knows of one peer: log latencies (context-adjusted)."""

    __slots__ = ("last", "last_ts", "mean", "n", "failed")

    def __init__(self) -> None:
        self.last = self.mean = self.n = 0.0
        self.last_ts = -math.inf
        self.failed = False  # its latest fetch failed


class _Side:
    """A node's or a peer's pooled state: its additive effect on log latency, how many
    fetches that rests on, and since when it is known to have changed."""

    __slots__ = ("effect", "count", "jumped")

    def __init__(self) -> None:
        self.effect = self.count = 0.0
        # per jump size (over 2, 4 and 8 noise sds): the latest time after which such a jump
        # is known to have happened
        self.jumped = [-math.inf, -math.inf, -math.inf]

    def jump(self, after: float, z: float) -> None:
        """A fetch moved ``z`` noise sds from the pair's reading at ``after``."""
        j = self.jumped
        for level, bound in enumerate((2.0, 4.0, 8.0)):
            if z >= bound and after > j[level]:
                j[level] = after

    def surprise(self, since: float) -> int:
        """Size of the largest jump known to have happened after ``since``: 0 (none), 1 (over
        2 noise sds), 2 (over 4), 3 (over 8)."""
        j = self.jumped
        return 3 if j[2] >= since else 2 if j[1] >= since else 1 if j[0] >= since else 0


def _lag_bucket(age: float) -> int:
    if age <= 1e-6:
        return 0
    return max(0, min(_LAGS - 1, int(2.0 * math.log2(age)) + _LAG0))


class StalenessAwareSampling(bandit.base.ContextualPolicy):
    """River contextual bandit policy over peers, for many nodes at once.

    ``context`` must carry ``node_id`` and ``ts`` (the fetch's time, in any unit: only learned
    lags use it) and may carry the features of
    :data:`~pakit_stream.events.schema.PEER_CONTEXT_KEYS`. :meth:`update` takes
    ``(peer, context, latency_ms, success)``; pass a failed fetch's cost as its latency.

    A jump is a fetch whose log latency moved more than 2, 4 or 8 noise standard deviations
    from the pair's previous reading (the noise: the median jump between close fetches); each
    node and peer remembers the latest reading after which it showed a jump of each size, and a
    pair's ``w`` is learned separately for every (node's jump size, peer's jump size) since its
    last reading.

    Parameters
    ----------
    max_pairs
        (node, peer) pairs kept; the least recently updated are forgotten.
    max_entities
        Nodes and peers whose pooled effects are kept (each, least recently updated forgotten).
    halflife
        Updates after which the learned lag statistics weigh half (forgetting).
    window
        Fetches over which a pair's long-run mean is averaged.
    seed
        Seed of the sampling.
    """

    def __init__(self, max_pairs: int = 100_000, max_entities: int = 10_000,
                 halflife: float = 20_000.0, window: int = 50, seed: int | None = None) -> None:
        super().__init__(burn_in=0)
        self.max_pairs, self.max_entities = max_pairs, max_entities
        self.halflife, self.window, self.seed = halflife, window, seed
        self._rng = random.Random(seed)
        self._pairs: OrderedDict[tuple[str, str], _Pair] = OrderedDict()
        self._nodes: OrderedDict[str, _Side] = OrderedDict()
        self._peers: OrderedDict[str, _Side] = OrderedDict()
        # (node's jump size since, peer's jump size since, age bucket) -> its statistic,
        # created when first updated (a checkpoint holds only the lags seen)
        self._lags: dict[tuple[int, int, int], LagCorrelation] = {}
        self._unseen_lag = LagCorrelation(halflife)  # the prior, for lags never seen
        self._fresh = LagCorrelation(halflife, prior_slope=0.0)  # error of the pooled prior
        self._mean, self._count = 0.0, 0
        self._beta = [0.0, 0.0, 0.0, 0.0]  # load, size, sin(tod), cos(tod)
        self._xmean = [0.0, 0.0, 0.0, 0.0]
        self._noise: tuple[int, float] | None = None  # (at update, noise sd)
        self.updates = 0

    # -- features -------------------------------------------------------------------------------
    def _features(self, context: Mapping[str, Any]) -> list[float] | None:
        load, size, tod = (context.get("network_load"), context.get("block_size_log"),
                           context.get("time_of_day"))
        if load is None and size is None and tod is None:
            return None
        m = self._xmean
        x = [0.0, 0.0, 0.0, 0.0]
        if load is not None:
            x[0] = float(load) - m[0]
        if size is not None:
            x[1] = float(size) - m[1]
        if tod is not None:
            x[2] = math.sin(_TWO_PI * tod) - m[2]
            x[3] = math.cos(_TWO_PI * tod) - m[3]
        return x

    def _adjust(self, x: list[float] | None) -> float:
        if x is None:
            return 0.0
        b = self._beta
        return b[0] * x[0] + b[1] * x[1] + b[2] * x[2] + b[3] * x[3]

    # -- the estimate ---------------------------------------------------------------------------
    def _prior(self, node: str, peer: str) -> float:
        a, b = self._nodes.get(node), self._peers.get(peer)
        return self._mean + (a.effect if a else 0.0) + (b.effect if b else 0.0)

    @staticmethod
    def _kernel_key(node: _Side | None, peer: _Side | None, pair: _Pair, ts: float
                    ) -> tuple[int, int, int]:
        since = pair.last_ts
        return (node.surprise(since) if node else 0, peer.surprise(since) if peer else 0,
                _lag_bucket(ts - since))

    def _kernel(self, node: str, peer: str, pair: _Pair, ts: float) -> LagCorrelation:
        key = self._kernel_key(self._nodes.get(node), self._peers.get(peer), pair, ts)
        return self._lags.get(key, self._unseen_lag)

    def staleness(self, min_weight: float = 50.0) -> dict[tuple[int, int, float], float]:
        """What the learner has found about stale readings: the weight of a pair's last
        reading, by (its node's jump size since, its peer's, its age in time units, the
        bucket's lower end), for the lags seen on at least ``min_weight`` (decayed) fetches."""
        return {(a, b, 2.0 ** ((lag - _LAG0) / 2)): round(stat.get(), 3)
                for (a, b, lag), stat in sorted(self._lags.items()) if stat.n >= min_weight}

    def estimate(self, node: str, peer: str, ts: float) -> tuple[float, float, bool]:
        """``(mean, variance, tried)``: the log latency (context-adjusted) of fetching from
        ``peer`` for ``node`` at ``ts``, its predictive variance, and whether the node ever
        fetched from that peer."""
        pair = self._pairs.get((node, peer))
        if pair is None:
            return self._prior(node, peer), self._fresh.mse, False
        lag = self._kernel(node, peer, pair, ts)
        return pair.mean + lag.get() * (pair.last - pair.mean), lag.mse, True

    def noise(self) -> float:
        """Standard deviation of a pair's log latency between two fetches close in time: the
        measurement noise, below which a change cannot be told from it."""
        if self._noise is None or self.updates - self._noise[0] >= 1000:
            # the median jump between close fetches of a pair, as a normal's sd (1.4826 MAD)
            # of the difference of two noisy readings (sqrt 2)
            seen = [lag.median_jump for (a, b, _), lag in self._lags.items()
                    if a == b == 0 and lag.n >= 50]
            self._noise = (self.updates, 1.4826 * min(seen) / math.sqrt(2) if seen else math.inf)
        return self._noise[1]

    # -- River's verbs --------------------------------------------------------------------------
    def _pull(self, arm_ids: list, context: dict) -> str:
        return self.choose(arm_ids, context)[0]

    def choose(self, arm_ids: Sequence[str], context: Mapping[str, Any], sample: bool = True
               ) -> tuple[str, float]:
        """The candidate of least estimated latency, and that estimate in ms.

        With ``sample``, a peer the node never fetched from is scored by a draw from the
        pooled prior's predictive distribution instead of its mean: what it teaches, its
        long-run level, stays true. A tried pair's later deviations are transient, and sampling
        them costs more than it teaches (3-20% slower fetches on the Seattle matrices), so
        tried pairs are scored by their estimate.
        """
        node, ts = context["node_id"], context["ts"]
        shift = self._adjust(self._features(context))
        gauss = self._rng.gauss
        best, best_score, best_mu = None, math.inf, math.nan
        for peer in arm_ids:
            mu, var, tried = self.estimate(node, peer, ts)
            score = mu if tried or not sample else mu + math.sqrt(var) * gauss(0.0, 1.0)
            if score < best_score:
                best, best_score, best_mu = peer, score, mu
        return best, math.exp(best_mu + shift)

    def update(self, arm_id, context, latency_ms: float, success: bool = True):  # noqa: D102
        node, ts, peer = context["node_id"], context["ts"], arm_id
        pair = self._touch(self._pairs, (node, peer), _Pair, self.max_pairs)
        side_n = self._touch(self._nodes, node, _Side, self.max_entities)
        side_p = self._touch(self._peers, peer, _Side, self.max_entities)
        was_failed, pair.failed = pair.failed, not success
        x = self._features(context)
        y = math.log(max(latency_ms, 1e-3)) - self._adjust(x)
        prior = self._mean + side_n.effect + side_p.effect
        if pair.n == 0:
            if self._count >= 100:  # the pooled prior has something to say
                self._fresh.update(0.0, y - prior)
            pair.mean = prior
        else:
            key = self._kernel_key(side_n, side_p, pair, ts)
            lag = self._lags.get(key)
            if lag is None:
                lag = self._lags[key] = LagCorrelation(self.halflife)
            lag.update(pair.last - pair.mean, y - pair.mean)
            if success and not was_failed:  # how far this pair moved, in noise sds
                z = abs(y - pair.last) / self.noise()
                if z >= 2.0:
                    side_n.jump(pair.last_ts, z)
                    side_p.jump(pair.last_ts, z)
        pair.n = min(pair.n + 1.0, self.window)
        pair.mean += (y - pair.mean) / pair.n
        pair.last, pair.last_ts = y, ts

        # pooled effects: the global mean, then the node's and the peer's means of what is left
        self._count += 1
        self._mean += (y - self._mean) / min(self._count, 10_000)
        side_n.count = min(side_n.count + 1.0, 1000.0)
        side_n.effect += (y - self._mean - side_p.effect - side_n.effect) / side_n.count
        side_p.count = min(side_p.count + 1.0, 1000.0)
        side_p.effect += (y - self._mean - side_n.effect - side_p.effect) / side_p.count
        if x is not None:  # normalised LMS: what the context explains of the pair's deviation
            x0, x1, x2, x3 = x
            g = 0.05 * (y - pair.mean) / (1.0 + x0 * x0 + x1 * x1 + x2 * x2 + x3 * x3)
            b, m = self._beta, self._xmean
            b[0] += g * x0
            b[1] += g * x1
            b[2] += g * x2
            b[3] += g * x3
            m[0] += 0.001 * x0
            m[1] += 0.001 * x1
            m[2] += 0.001 * x2
            m[3] += 0.001 * x3
        self.updates += 1

    @staticmethod
    def _touch(table: OrderedDict, key, make, bound: int):
        item = table.get(key)
        if item is None:
            item = table[key] = make()
            if len(table) > bound:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
        return item

    @property
    def n_pairs(self) -> int:
        return len(self._pairs)

    @property
    def n_peers(self) -> int:
        return len(self._peers)

    def knows(self, peer: str) -> bool:
        return peer in self._peers


class PeerChoice(tuple):
    """``(peer_id, source, score)``: source is ``learned`` or ``fallback``; score is the
    expected latency of the chosen peer in ms (``None`` for a fallback)."""

    __slots__ = ()

    def __new__(cls, peer_id: str, source: str, score: float | None):
        return super().__new__(cls, (peer_id, source, score))

    peer_id = property(lambda self: self[0])
    source = property(lambda self: self[1])
    score = property(lambda self: self[2])


class PeerSelector(OnlineModel):
    """The daemon's peer learner: :class:`StalenessAwareSampling` with the guide's API.

    Fetches without a ``node_id`` count as one anonymous node's; without ``ts``, the time is
    the learner's clock (the latest ``ts`` seen, advanced by the wall clock since).
    """

    default_name = "peer_selector"

    def __init__(self, model_config: ModelConfig | None = None, use_context: bool = True, *,
                 latency_scale_ms: float = 200.0, failure_ms: float = 1000.0,
                 max_pairs: int = 100_000, max_peers: int = 10_000,
                 halflife: float = 20_000.0, seed: int | None = None) -> None:
        super().__init__(model_config)
        self.use_context = use_context
        self.latency_scale_ms, self.failure_ms = latency_scale_ms, failure_ms
        self.max_pairs, self.max_peers, self.halflife, self.seed = (max_pairs, max_peers,
                                                                    halflife, seed)
        self._policy = StalenessAwareSampling(max_pairs=max_pairs, max_entities=max_peers,
                                              halflife=halflife, seed=seed)
        self._rng = random.Random(seed)
        self._clock = (0.0, time.monotonic())

    def reward(self, success: bool, latency_ms: float) -> float:
        """A fetch's quality in [0, 1] for the exported figures: ``exp(-latency / scale)``."""
        return math.exp(-latency_ms / self.latency_scale_ms) if success else 0.0

    def _context(self, context: Mapping[str, float] | None, block_size: int | None,
                 node_id: str | None, ts: float | None) -> dict[str, Any]:
        check_peer_context(context)
        x: dict[str, Any] = dict(context) if (context and self.use_context) else {}
        if block_size is not None and self.use_context and "block_size_log" not in x:
            x["block_size_log"] = math.log10(block_size + 1) / 8
        x["node_id"] = node_id or "-"
        if ts is None:
            last, at = self._clock
            ts = last + (time.monotonic() - at)
        x["ts"] = float(ts)
        return x

    def learn_fetch(self, peer_id: str, success: bool, latency_ms: float, block_size: int | None,
                    context: Mapping[str, float] | None, node_id: str | None = None,
                    ts: float | None = None) -> None:
        """Learn one fetch's outcome. Raises ``InvalidEventError`` for a context key outside
        :data:`~pakit_stream.events.schema.PEER_CONTEXT_KEYS`."""
        x = self._context(context, block_size, node_id, ts)
        if ts is not None and ts >= self._clock[0]:
            self._clock = (float(ts), time.monotonic())
        if not success:  # a failure costs what the node waited, and never looks cheap
            latency_ms = max(float(latency_ms), self.failure_ms)
        self._policy.update(peer_id, x, float(latency_ms), bool(success))
        self.n_updates += 1

    def learn_record(self, record: Mapping[str, Any]) -> None:
        self.learn_fetch(record["peer_id"], bool(record.get("success", True)),
                         float(record.get("latency_ms", 0.0)), record.get("block_size"),
                         record.get("context"), record.get("node_id"), record.get("ts"))

    def select(self, available_peers: Sequence[str], context: Mapping[str, float] | None = None,
               block_size: int | None = None, node_id: str | None = None,
               ts: float | None = None, sample: bool = True) -> PeerChoice:
        """Pick a peer for ``node_id``; a random one while no candidate has been seen."""
        if not available_peers:
            raise UsageError("available_peers is empty")
        check_peer_context(context)
        peers = list(dict.fromkeys(available_peers))
        if not any(self._policy.knows(p) for p in peers):
            return PeerChoice(self._rng.choice(peers), "fallback", None)
        x = self._context(context, block_size, node_id, ts)
        peer, ms = self._policy.choose(peers, x, sample=sample)
        return PeerChoice(peer, "learned", ms)

    def predict(self, request: Mapping[str, Any]) -> str:
        return self.select(request["available_peers"], request.get("context"),
                           request.get("block_size"), request.get("node_id"),
                           request.get("ts")).peer_id

    def knows(self, peer_id: str) -> bool:
        return self._policy.knows(peer_id)

    @property
    def n_peers(self) -> int:
        return self._policy.n_peers
