"""Gossip settings: River regressions over (network, action) features, pooled across states,
serving as the Q-function.

An action is a mode, a fanout (fractional: 5.5 sends five, and a sixth half the time), a TTL and,
for ``push-pull``, a number of anti-entropy rounds (see :mod:`pakit_stream.replay.gossip`). Each
logged ``gossip_round`` teaches two River Bayesian linear regressions per mode:

* the **shortfall** ``log10(1 - coverage)`` (floored at half a node), and
* the **payload messages per node**,

from the network's size, loss and latency and from the same quantities that a mean-field model of
the mode predicts for the action (infect-and-die push, then anti-entropy rounds). The mean field
carries the structure (how fanout, TTL, pull rounds, size and loss trade off); the regressions
learn how the real network departs from it (unmeasured links, finite sizes), and they learn it
from every state at once, so that a state never seen is answered as well as its neighbours.
Control messages (the digests of anti-entropy) are known from the action: two per node and round.
The regressions are :class:`DenseBayesianRegression`, River's Bayesian linear regression on numpy
vectors; a logged round is queued, and a mode's queue is learned in one batch when an answer
needs its models (or when it grows long).

The answer is the cheapest action, ``payload + control_cost * control`` per node, whose shortfall
is predicted below ``1 - coverage_target`` by ``confidence`` residual deviations; when none is,
the one with the smallest predicted shortfall. With fewer than ``min_rounds`` rounds learned the
answer is the fallback, push with fanout 6 / TTL 10.

The guide's abstract episodes (``{"state", "action", "reward"}``) train a tabular Q-learner kept
beside it (:meth:`learn_one`), answered when a request names its ``state``.

>>> import numpy as np
>>> from pakit_stream.replay.gossip import broadcast
>>> rng = np.random.default_rng(0)
>>> opt = NetworkOptimizer(epsilon=0.0, seed=0)
>>> for _ in range(300):
...     mode, f, t, pull = opt.random_action(rng)
...     s = broadcast(200, f, t, 0.02, rng, mode=mode, pull=pull)
...     _ = opt.learn_round(200, 50.0, 0.02, f, t, s.coverage, s.payload, mode, pull, s.control)
>>> hint = opt.predict({"network_size": 200, "avg_latency_ms": 50.0, "message_loss_rate": 0.02})
>>> hint["mode"], hint["source"], hint["expected_payload_per_node"] < 3
('push-pull', 'learned', True)
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from river import base, linear_model, proba, stats
from scipy.linalg import lapack

from pakit_stream.base_model import ModelConfig, OnlineModel
from pakit_stream.exceptions import UsageError

__all__ = ["NetworkOptimizer", "FALLBACK_FANOUT", "FALLBACK_TTL", "ACTIONS", "mean_field",
           "fallback_answer"]

FALLBACK_FANOUT, FALLBACK_TTL = 6, 10
_FANOUTS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16)
_TTLS = (2, 3, 4, 5, 6, 8, 10, 12, 16, 20)
_LATENCY_BANDS = (100.0, 300.0)  # latency slows gossip but barely changes what it reaches
_LOSS_BANDS = (0.01, 0.05, 0.15)
#: every action the learner weighs: (mode, fanout, ttl, pull rounds)
ACTIONS = tuple(
    [("push", f, t, 0) for f in (2, 3, 4, 5, 5.5, 6, 6.5, 7, 8, 10, 12)
     for t in (3, 4, 5, 6, 8, 10, 12, 16)]
    + [("push-pull", f, t, r) for f in (1, 1.5, 2, 3) for t in (1, 2, 3, 4, 6)
       for r in (1, 2, 3, 4, 5, 6, 8, 10)])
_MODES = ("push", "push-pull")
#: a broadcast that reached everyone counts as missing half a node (log10 needs a floor; a
#: continuity correction: below it, the mean of the log says little about the mean coverage)
_FLOOR = 0.5
#: messages per node a round is learned with at most (payload, and control messages): one
#: round that claims more (a node's bug, or an attack) moves the learner as much as this does
MAX_PER_NODE = 100.0
#: the reward's bounds: what one round may add to a running mean (and its private release)
REWARD_BOUNDS = (-11.0, 1.0)


def fallback_answer() -> dict[str, Any]:
    """The fixed rule's answer to a network hint: push, fanout 6, TTL 10, nothing expected."""
    return {"mode": "push", "fanout": FALLBACK_FANOUT, "ttl": FALLBACK_TTL, "pull_rounds": 0,
            "source": "fallback", "expected_coverage": None, "expected_payload_per_node": None,
            "expected_control_per_node": None}


def _band(value: float, edges: Sequence[float]) -> int:
    for i, edge in enumerate(edges):
        if value < edge:
            return i
    return len(edges)


def _nearest(value: int, grid: Sequence[int]) -> int:
    return min(grid, key=lambda g: (abs(g - value), g))


def mean_field(n: int, fanout: float, ttl: int, loss: float, mode: str = "push",
               pull: int = 0) -> tuple[float, float]:
    """``(shortfall, payload per node)`` of one broadcast in the mean-field limit: each hop, an
    uninformed node hears from a Poisson number of the nodes informed at the hop before; each
    anti-entropy round, it pulls from an informed partner or is pushed to by one.

    >>> short, payload = mean_field(1000, 6, 10, 0.0)
    >>> round(short, 4), round(payload, 2)
    (0.0025, 5.98)
    """
    informed = new = 1.0 / n
    payload = 0.0
    keep = 1.0 - loss
    for _ in range(ttl):
        if new * n < 1e-6:
            break
        payload += fanout * new
        newly = (1.0 - informed) * (1.0 - math.exp(-fanout * keep * new))
        informed, new = informed + newly, newly
    if mode == "push-pull":
        for _ in range(pull):
            missing = 1.0 - informed
            reach = (1.0 - missing) * keep
            payload += 2.0 * missing * (1.0 - missing)
            informed = 1.0 - missing * (1.0 - reach) * math.exp(-reach)
    return max(1.0 - informed, 0.0), payload


def _mean_field_many(n, loss, fanout: np.ndarray, ttl: np.ndarray,
                     pull: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`mean_field` for many actions at once (``pull`` is 0 for push), in one network
    or, with arrays of ``n`` and ``loss`` too, in many."""
    informed = np.full(fanout.shape, 1.0 / n)
    new, payload = informed.copy(), np.zeros(fanout.shape)
    keep = 1.0 - loss
    rate = -fanout * keep
    hops = np.arange(int(ttl.max(initial=0)))[:, None] < ttl
    for within_ttl in hops:
        # a finished broadcast sends nothing, so it informs nobody and stays finished
        new = np.where(within_ttl & (new * n >= 1e-6), new, 0.0)
        payload += fanout * new
        new = (1.0 - informed) * (1.0 - np.exp(rate * new))
        informed = informed + new
    for round_ in range(int(pull.max(initial=0))):
        live = round_ < pull
        missing = 1.0 - informed
        reached = 1.0 - missing
        reach = reached * keep
        payload += np.where(live, 2.0 * missing * reached, 0.0)
        informed = np.where(live, 1.0 - missing * (1.0 - reach) * np.exp(-reach), informed)
    return np.maximum(1.0 - informed, 0.0), payload


_SHORT_FEATURES = ("log_n", "loss", "slow", "mean_field", "floor", "pull")
_PAYLOAD_FEATURES = ("log_n", "loss", "slow", "mean_field", "fanout")
#: logged rounds a mode keeps queued at most before its models learn them (two blocks of
#: :meth:`DenseBayesianRegression.learn_rows`: what an answer may have to learn first)
_MAX_QUEUED = 128


def _log10(value):
    # math for one network (as its features always were), numpy for many
    return np.log10(value) if isinstance(value, np.ndarray) else math.log10(value)


def _columns(n, latency_ms, loss, fanout, pull, short, payload):
    """The values of :data:`_SHORT_FEATURES` and :data:`_PAYLOAD_FEATURES`, in that order,
    for one action (numbers), many actions (numpy arrays of fanout, pull and mean-field
    figures) or many rounds (arrays of all of them)."""
    floor = _FLOOR / n
    common = [_log10(n), loss, np.minimum(latency_ms / 1000.0, 5.0)]
    return (common + [np.log10(np.maximum(short, floor)), _log10(floor), pull],
            common + [payload, fanout])


class DenseBayesianRegression(base.Regressor):
    """River's ``linear_model.BayesianLinearRegression`` (without smoothing) over a fixed list
    of features, in numpy: prior ``N(0, I / alpha)`` on the weights, noise precision ``beta``,
    the posterior mean as its prediction (Bishop, eq. 3.50-3.59). A row is a vector in the
    order of ``features``, or a dict: a feature it lacks is 0, one not listed is ignored when
    learning and, predicting, unknown (as to River's model before it learned that feature).
    :meth:`learn_rows` learns many rows at once and gives each one's error before it was
    learned.

    >>> from river import linear_model
    >>> ours = DenseBayesianRegression(("a", "b"), beta=4.0)
    >>> river = linear_model.BayesianLinearRegression(beta=4.0)
    >>> for i in range(20):
    ...     x = {"a": i / 10, "b": 1.0}
    ...     ours.learn_one(x, 3 * x["a"] - 1)
    ...     river.learn_one(x, 3 * x["a"] - 1)
    >>> x = {"a": 2.5, "b": 1.0}
    >>> abs(ours.predict_one(x) - river.predict_one(x)) < 1e-12
    True
    >>> ours.predict_one(x, with_dist=True), river.predict_one(x, with_dist=True)
    (𝒩(μ=6.296, σ=0.590), 𝒩(μ=6.296, σ=0.590))
    """

    def __init__(self, features: Sequence[str], alpha: float = 1.0, beta: float = 1.0) -> None:
        self.features = tuple(features)
        self.alpha, self.beta = alpha, beta
        d = len(self.features)
        self._precision = np.eye(d) * alpha  # alpha * I + beta * sum(x x^T), summed exactly
        self._cov = np.eye(d) / alpha  # its inverse
        self._eta = np.zeros(d)  # beta * sum(y * x)
        self._mean = np.zeros(d)  # cov @ eta, the weights

    @property
    def weights(self) -> np.ndarray:
        """The posterior mean of the weights, in the order of ``features``."""
        return self._mean

    def _row(self, x) -> tuple[np.ndarray, float]:
        """``x`` as a vector, and the squared norm of its values for unknown features."""
        if not isinstance(x, Mapping):
            return np.asarray(x, dtype=float), 0.0
        unknown = sum(float(v) ** 2 for k, v in x.items() if k not in self.features)
        return np.array([float(x.get(f, 0.0)) for f in self.features]), unknown

    def learn_one(self, x, y: float) -> None:
        self.learn_rows(self._row(x)[0][None], [y])

    def learn_rows(self, X, y) -> np.ndarray:
        """Learn the rows of ``X`` (in order) with their targets ``y``, as ``learn_one`` on
        each would; returns each row's target less its prediction just before it was learned.
        Rows or targets that are not finite are refused (:class:`UsageError`), learning none."""
        X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
        if not (np.isfinite(X).all() and np.isfinite(y).all()):
            raise UsageError("a regression row or target that is not finite")
        errors = np.empty(len(y))
        for i in range(0, len(y), 64):
            xs, ys = X[i:i + 64], y[i:i + 64]
            # the targets' joint predictive covariance; its Cholesky factor conditions each
            # row's prediction on the rows before it (Gaussian conditioning, all at once)
            joint = xs @ self._cov @ xs.T
            joint.flat[::len(ys) + 1] += 1.0 / self.beta
            chol, info = lapack.dpotrf(joint, lower=1, clean=0)
            if info:  # not positive definite in floating point (huge, collinear rows)
                errors[i:i + 64] = [self._learn_row(x, t) for x, t in zip(xs, ys)]
                continue
            white, _ = lapack.dtrtrs(chol, ys - xs @ self._mean, lower=1)
            errors[i:i + 64] = white * chol.diagonal()
            self._add(xs, ys)
        return errors

    def _learn_row(self, x: np.ndarray, y: float) -> float:
        error = y - float(self._mean @ x)
        self._add(x[None], np.array([y]))
        return error

    def _add(self, xs: np.ndarray, ys: np.ndarray) -> None:
        self._precision += self.beta * (xs.T @ xs)
        self._eta += self.beta * (xs.T @ ys)
        self._cov = np.linalg.inv(self._precision)
        self._mean = self._cov @ self._eta

    @classmethod
    def _unit_test_params(cls):
        yield {"features": ("x", "y")}

    def predict_one(self, x, with_dist: bool = False):
        x, unknown = self._row(x)
        mean = float(self._mean @ x)
        if not with_dist:
            return mean
        var = 1.0 / self.beta + float(x @ self._cov @ x) + unknown / self.alpha
        return proba.Gaussian._from_state(n=1, m=mean, var=var, ddof=0)

    @classmethod
    def from_river(cls, model: linear_model.BayesianLinearRegression,
                   features: Sequence[str]) -> DenseBayesianRegression:
        """The same posterior as River's ``model`` (as pickled by earlier versions)."""
        new = cls(features, model.alpha, model.beta)
        if model._idx:
            at = [model._idx[f] for f in new.features]
            cov, alpha = model._ss_inv_arr[np.ix_(at, at)], model.alpha
            # River starts its precision, unlike its covariance, at I / alpha (they agree at 1)
            new._precision = model._ss_arr[np.ix_(at, at)] + (alpha - 1 / alpha) * np.eye(len(at))
            new._cov, new._eta = cov, model._eta_arr[at]
            new._mean = new._cov @ new._eta
        return new


def _kept(table: dict, key, compute):
    """``table[key]``, computed and kept when missing (a table of 4,096 keys starts over)."""
    value = table.get(key)
    if value is None:
        if len(table) >= 4096:
            table.clear()
        value = table[key] = compute()
    return value


class NetworkOptimizer(OnlineModel):
    default_name = "network_optimizer"

    def __init__(self, model_config: ModelConfig | None = None, *, alpha: float = 0.05,
                 gamma: float = 0.0, message_cost: float = 0.01, coverage_target: float = 0.995,
                 miss_penalty: float = 1.0, confidence: float = 1.0, epsilon: float = 0.1,
                 control_cost: float = 0.1, min_rounds: int = 50, min_support: int = 20,
                 fanouts: Sequence[int] = _FANOUTS, ttls: Sequence[int] = _TTLS,
                 actions: Sequence[tuple] = ACTIONS, seed: int | None = None) -> None:
        super().__init__(model_config)
        self.alpha, self.gamma = alpha, gamma
        self.message_cost, self.epsilon = message_cost, epsilon
        self.coverage_target, self.miss_penalty = coverage_target, miss_penalty
        self.confidence, self.control_cost, self.min_rounds = confidence, control_cost, min_rounds
        self.min_support = min_support
        self.fanouts, self.ttls = tuple(sorted(fanouts)), tuple(sorted(ttls))
        self.actions = tuple(actions)
        # the guide's episodes: a tabular Q-learner over abstract states
        self._q: dict[Hashable, dict[tuple[int, int], float]] = defaultdict(dict)
        self._n: dict[tuple[Hashable, tuple[int, int]], int] = defaultdict(int)
        # gossip rounds: per mode, River regressions of shortfall and payload, how far the
        # shortfall's predictions miss (its residual spread), and the rounds not learned yet
        self._shortfall = {m: DenseBayesianRegression(_SHORT_FEATURES, alpha=1.0, beta=4.0)
                           for m in _MODES}
        self._payload = {m: DenseBayesianRegression(_PAYLOAD_FEATURES, alpha=1.0, beta=4.0)
                         for m in _MODES}
        self._residual = {m: stats.Var() for m in _MODES}
        self._queue: dict[str, list[tuple]] = {m: [] for m in _MODES}
        self.rounds = {m: 0 for m in _MODES}
        #: rounds learned per (mode, size band, loss band): a mode is chosen for a network
        #: only where it was seen ``min_support`` times nearby (its models extrapolate
        #: badly far from their data; :meth:`_supported`)
        self._support: dict[tuple[str, int, int], int] = {}
        self._answers: dict[tuple, tuple[tuple, dict[str, float]]] = {}
        self._answered_at = 0
        #: the settings an exploring answer draws from, kept as the answers are
        self._explorations: dict[tuple, list[tuple]] = {}
        self._rng = random.Random(seed)

    # -- features ---------------------------------------------------------------------------
    def state(self, network_size: int | None = None, avg_latency_ms: float = 0.0,
              message_loss_rate: float = 0.0) -> tuple[int, int, int]:
        size_band = -1 if not network_size else min(int(math.log2(max(network_size, 1))), 24)
        return (size_band, _band(avg_latency_ms, _LATENCY_BANDS), _band(message_loss_rate, _LOSS_BANDS))

    def reward(self, coverage: float, messages_sent: int, network_size: int,
               control_messages: int = 0) -> float:
        sent = messages_sent + self.control_cost * control_messages
        return (coverage - self.message_cost * sent / max(network_size, 1)
                - self.miss_penalty * max(0.0, self.coverage_target - coverage))

    def snap(self, action: Sequence[int]) -> tuple[int, int]:
        return (_nearest(int(round(action[0])), self.fanouts),
                _nearest(int(round(action[1])), self.ttls))

    def random_action(self, rng=None) -> tuple[str, float, int, int]:
        """One action drawn from :data:`ACTIONS` (for exploration and logged rounds)."""
        if rng is None:
            return self._rng.choice(self.actions)
        return self.actions[int(rng.integers(len(self.actions)))]

    # -- learning ---------------------------------------------------------------------------
    def learn_one(self, state: Hashable, action: Sequence[int], reward: float,
                  next_state: Hashable | None = None) -> None:
        """A guide episode: Q(s, a) += step * (r + gamma * max_a' Q(s', a') - Q(s, a))."""
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
                    fanout: float, ttl: int, coverage: float, messages_sent: int,
                    mode: str = "push", pull_rounds: int = 0, control_messages: int = 0
                    ) -> float:
        """Learn one broadcast; returns its reward (for the quality figure)."""
        if mode not in _MODES:
            raise UsageError(f"unknown gossip mode {mode!r}")
        n = max(int(network_size), 1)
        sent = min(messages_sent / n, MAX_PER_NODE)
        y = math.log10(max(1.0 - coverage, _FLOOR / n))
        # the contract's bounds (docs/events.md), within which every feature is finite
        if not (math.isfinite(y + sent + avg_latency_ms) and 0.0 <= message_loss_rate <= 1.0
                and 0.0 <= fanout <= 1024 and 0 <= ttl <= 1024 and 0 <= pull_rounds <= 1024
                and n <= 10_000_000 and avg_latency_ms >= 0.0):
            raise UsageError("a gossip round outside the contract's bounds (a number that is "
                             "not finite, a loss outside [0, 1], or a fanout, TTL or pull "
                             "rounds outside [0, 1024])")
        queue = self._queue[mode]
        queue.append((n, avg_latency_ms, message_loss_rate, fanout, ttl,
                      pull_rounds if mode == "push-pull" else 0, y, sent))
        self.rounds[mode] += 1
        if len(queue) >= _MAX_QUEUED:
            self._learn_queued(mode)
        cell = self._cell(mode, n, message_loss_rate)
        self._support[cell] = self._support.get(cell, 0) + 1
        self.n_updates += 1
        low, high = REWARD_BOUNDS
        control = min(control_messages / n, MAX_PER_NODE)
        return min(max(self.reward(coverage, sent * n, n, control * n), low), high)

    def learn_queued(self) -> None:
        """Teach the models every round queued (a hint would first; a forked replica that
        answers hints then need not, each time)."""
        for mode in _MODES:
            self._learn_queued(mode)

    def _learn_queued(self, mode: str) -> None:
        """Teach ``mode``'s models the rounds queued since they last learned, all at once."""
        queue = self._queue[mode]
        if not queue:
            return
        self._queue[mode] = []  # taken whole: a failure below cannot learn a round twice
        n, latency, loss, fanout, ttl, pull, y, sent = np.array(queue, dtype=float).T
        cols = _columns(n, latency, loss, fanout, pull,
                        *_mean_field_many(n, loss, fanout, ttl, pull))
        x_short, x_pay = (np.column_stack(c) for c in cols)
        errors = self._shortfall[mode].learn_rows(x_short, y)
        self._payload[mode].learn_rows(x_pay, sent)
        seen = self.rounds[mode] - len(queue)  # rounds learned before these
        residuals = errors[max(10 - seen, 0):]  # those of a model that has seen something
        if len(residuals):
            self._residual[mode].update_many(residuals)

    @staticmethod
    def _cell(mode: str, n: int, loss: float) -> tuple[str, int, int]:
        return mode, min(int(math.log2(max(n, 1))), 24), _band(loss, _LOSS_BANDS)

    def __setstate__(self, state: dict) -> None:
        # checkpoints from before support was counted: count from now, ask for none
        state.setdefault("_support", {})
        state.setdefault("min_support", 0)
        state.setdefault("_explorations", {})  # before exploring settings were kept
        # checkpoints from before the queue: River's own Bayesian regressions, all learned
        state.setdefault("_queue", {m: [] for m in _MODES})
        for models, names in (("_shortfall", _SHORT_FEATURES), ("_payload", _PAYLOAD_FEATURES)):
            if models in state:  # older versions kept a table of cells, and no models
                state[models] = {m: DenseBayesianRegression.from_river(r, names) if
                                 isinstance(r, linear_model.BayesianLinearRegression) else r
                                 for m, r in state[models].items()}
        self.__dict__.update(state)

    def learn_record(self, record: Mapping[str, Any]) -> None:
        if "state" in record:  # the guide's episodes: {'state', 'action', 'reward'[, 'next_state']}
            self.learn_one(tuple(record["state"]), tuple(record["action"]), float(record["reward"]),
                           tuple(record["next_state"]) if record.get("next_state") else None)
        else:
            self.learn_round(record["network_size"], record["avg_latency_ms"],
                             record["message_loss_rate"], record["fanout"], record["ttl"],
                             record["coverage"], record["messages_sent"],
                             record.get("mode", "push"), record.get("pull_rounds", 0),
                             record.get("control_messages", 0))

    # -- answering --------------------------------------------------------------------------
    def expect(self, network_size: int, avg_latency_ms: float, loss: float,
               action: Sequence) -> dict[str, float]:
        """What the learner expects of ``action`` in this network: shortfall (as log10, and its
        upper bound at ``confidence`` deviations), payload and control messages per node."""
        mode, fanout, ttl, pull = action
        n = max(int(network_size), 1)
        self._learn_queued(mode)
        x_short, x_pay = _columns(n, avg_latency_ms, loss, fanout, pull,
                                  *mean_field(n, fanout, ttl, loss, mode, pull))
        log_short = self._shortfall[mode].predict_one(x_short)
        spread = math.sqrt(self._residual[mode].get()) if self.rounds[mode] > 20 else 1.0
        payload = max(self._payload[mode].predict_one(x_pay), 0.0)
        control = 2.0 * pull if mode == "push-pull" else 0.0
        return {"log10_shortfall": log_short, "log10_shortfall_bound":
                log_short + self.confidence * spread, "payload_per_node": payload,
                "control_per_node": control, "cost_per_node": payload + self.control_cost * control}

    def _mean_field(self, mode: str, n: int, loss: float):
        """``(actions, fanout, pull rounds, shortfall, payload)`` of every action of ``mode``,
        as the mean-field model alone predicts them."""
        acts = [a for a in self.actions if a[0] == mode]
        fanout = np.array([a[1] for a in acts], dtype=float)
        ttl = np.array([a[2] for a in acts])
        pull = np.array([a[3] if mode == "push-pull" else 0 for a in acts])
        return (acts, fanout, pull, *_mean_field_many(n, loss, fanout, ttl, pull))

    def _predicted(self, mode: str, n: int, avg_latency_ms: float, loss: float):
        """``(actions, log10 shortfall, its spread, cost per node)`` of every action of
        ``mode``: :meth:`expect` for all of them at once, in numpy."""
        self._learn_queued(mode)
        acts, fanout, pull, short, payload = self._mean_field(mode, n, loss)
        x_short, x_pay = (np.column_stack(np.broadcast_arrays(*cols)) for cols in
                          _columns(n, avg_latency_ms, loss, fanout, pull, short, payload))
        log_short = x_short @ self._shortfall[mode].weights
        spread = math.sqrt(self._residual[mode].get()) if self.rounds[mode] > 20 else 1.0
        paid = np.maximum(x_pay @ self._payload[mode].weights, 0.0)
        control = 2.0 * pull if mode == "push-pull" else np.zeros(len(acts))
        return acts, log_short, spread, paid + self.control_cost * control

    def _choose(self, network_size: int, avg_latency_ms: float, loss: float
                ) -> tuple[tuple, dict[str, float]] | None:
        """The cheapest action predicted to reach the target (else the surest), with what is
        expected of it; ``None`` when no mode was seen enough in networks like this one."""
        goal = math.log10(max(1.0 - self.coverage_target, 1e-9))
        n = max(int(network_size), 1)
        best = fallback = None
        for mode in _MODES:
            if not self.rounds[mode] or not self._supported(mode, n, loss):
                continue
            acts, log_short, spread, cost = self._predicted(mode, n, avg_latency_ms, loss)
            if not acts:
                continue
            ok = log_short + self.confidence * spread <= goal
            if ok.any():
                i = int(np.flatnonzero(ok)[np.argmin(cost[ok])])
                if best is None or cost[i] < best[1]:
                    best = (acts[i], float(cost[i]))
            else:
                i = int(np.argmin(log_short))
                if fallback is None or log_short[i] < fallback[1]:
                    fallback = (acts[i], float(log_short[i]))
        if best is None and fallback is None:
            return None
        action = (best or fallback)[0]
        return action, self.expect(n, avg_latency_ms, loss, action)

    def _supported(self, mode: str, n: int, loss: float) -> bool:
        """Whether ``mode`` was seen ``min_support`` times in networks like this one: its
        size band (powers of two) or the next, its loss band or the next."""
        _, size, lossy = self._cell(mode, n, loss)
        seen = sum(self._support.get((mode, size + i, lossy + j), 0)
                   for i in (-1, 0, 1) for j in (-1, 0, 1))
        return seen >= self.min_support

    def _explore(self, n: int, avg_latency_ms: float, loss: float) -> tuple:
        """An exploring action, drawn from :meth:`_exploring`."""
        return self._rng.choice(self._exploring(n, avg_latency_ms, loss))

    def _exploring(self, n: int, avg_latency_ms: float, loss: float) -> list[tuple]:
        """The actions exploring draws from: those the models expect to reach the coverage
        target here, or, where none is, to miss it by at most a factor of three more than the
        surest (exploring costs the node that acts on it: never a setting expected to do
        much worse). A mode not yet seen enough in networks like this one is judged by the
        mean-field model alone, so that it gets explored where it promises to do well."""
        goal = math.log10(max(1.0 - self.coverage_target, 1e-9))
        scored = []
        for mode in _MODES:
            if self.rounds[mode] and self._supported(mode, n, loss):
                acts, log_short, _, _ = self._predicted(mode, n, avg_latency_ms, loss)
            else:
                acts, _, _, short, _ = self._mean_field(mode, n, loss)
                log_short = np.log10(np.maximum(short, _FLOOR / n))
            scored += zip(log_short.tolist(), acts)
        if not scored:
            return list(self.actions)
        best = min(v for v, _ in scored)
        bar = goal if best <= goal else best + math.log10(3.0)
        return [a for v, a in scored if v <= bar]

    def _values(self, state: Hashable) -> dict[tuple[int, int], tuple[float, float]]:
        """``action -> (lower confidence bound, mean)`` in ``state``, or in its back-off."""
        exact = self._q.get(state)
        if exact:
            n, c = self._n, 0.2
            return {a: (v - c / math.sqrt(n[(state, a)]), v) for a, v in exact.items()}
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
        """The gossip setting for the network described by ``request``: ``{mode, fanout, ttl,
        pull_rounds, source, expected_coverage, expected_payload_per_node,
        expected_control_per_node}``.

        With ``explore`` (as the hint endpoint does), an epsilon share of answers is a random
        action, so the learner keeps seeing what the others do. A request with a ``state``
        asks the guide's tabular Q-learner.
        """
        answer = fallback_answer()
        if request.get("state") is not None:
            values = self._values(tuple(request["state"]))
            if values:
                a, _ = max(values.items(), key=lambda kv: (kv[1][0], -kv[0][0] * kv[0][1]))
                answer.update(fanout=a[0], ttl=a[1], source="learned")
            return answer
        if sum(self.rounds.values()) < self.min_rounds:
            return answer
        n = max(int(request.get("network_size") or 1), 1)
        latency = float(request.get("avg_latency_ms", 0.0))
        loss = float(request.get("message_loss_rate", 0.0))
        # answers are kept per (size, latency, loss) until the models have moved on, and so
        # are the settings an exploring answer draws from (scoring them takes about 1 ms)
        key = (round(math.log2(n), 1), round(latency, -1), round(loss, 3))
        if self.n_updates - self._answered_at >= 100:
            self._answers.clear()
            self._explorations.clear()
            self._answered_at = self.n_updates
        if explore and self._rng.random() < self.epsilon:
            options = _kept(self._explorations, key, lambda: self._exploring(n, latency, loss))
            mode, fanout, ttl, pull = self._rng.choice(options)
            answer.update(mode=mode, fanout=fanout, ttl=ttl, pull_rounds=pull, source="explore")
            return answer
        cached = _kept(self._answers, key, lambda: self._choose(n, latency, loss))
        if cached is None:  # no mode was seen enough in networks like this one
            return answer
        (mode, fanout, ttl, pull), e = cached
        answer.update(mode=mode, fanout=fanout, ttl=ttl, pull_rounds=pull, source="learned",
                      expected_coverage=round(max(0.0, 1.0 - 10 ** e["log10_shortfall"]), 6),
                      expected_payload_per_node=round(e["payload_per_node"], 3),
                      expected_control_per_node=e["control_per_node"])
        return answer

    @property
    def n_states(self) -> int:
        return len(self._q) + sum(1 for m in _MODES if self.rounds[m])
