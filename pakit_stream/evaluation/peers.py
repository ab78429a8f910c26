"""Peer choice on real RTT matrices: the daemon's peer learner against the classic bandits,
Vowpal Wabbit (with per-candidate features: last latency and its age), two hand-written rules
(lowest last latency; last latency decayed by age towards the pair's mean) and two references
(the best fixed ranking in hindsight and the per-slice oracle).

``nodes`` requesting hosts take turns: at every step each of them holds a block that 3–8 other
hosts can serve, picks one, gets that fetch's outcome (the same draws for every policy) and
learns from it before the next step: a prequential, test-then-train evaluation. Each policy is
**one** instance for all requesting hosts, as the daemon's learner is, and is told which host
asks (``step.node``) and when (``step.ts``); the tabular bandits keep one arm per (host, peer).
Regret is measured against the per-slice oracle in expected cost (a failure costs the timeout).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np

from pakit_stream.evaluation.report import OURS, Evaluation, figure, labels, save
from pakit_stream.learners.peers import PeerSelector
from pakit_stream.replay.latency import FetchStep, PeerReplay, RttMatrix
from pakit_stream.settings import Settings

__all__ = ["run", "POLICIES"]


class Policy:
    """One policy for every requesting host: ``choose`` a candidate, then ``learn`` its outcome."""

    def __init__(self, matrix: RttMatrix, timeout_ms: float, seed: int) -> None:
        self.matrix, self.timeout_ms = matrix, timeout_ms
        self.rng = random.Random(seed)

    def choose(self, step: FetchStep) -> int:
        raise NotImplementedError

    def learn(self, step: FetchStep, peer: int, success: bool, latency_ms: float) -> None:
        pass

    def reward(self, success: bool, latency_ms: float, scale: float = 200.0) -> float:
        return math.exp(-latency_ms / scale) if success else 0.0


def _name(host: int) -> str:
    return f"host-{host:03d}"


class Ours(Policy):
    """The daemon's :class:`~pakit_stream.learners.peers.PeerSelector`, built from the
    daemon's settings."""

    def __init__(self, matrix, timeout_ms, seed):
        super().__init__(matrix, timeout_ms, seed)
        s = Settings()
        self.sel = PeerSelector(latency_scale_ms=s.bandit_latency_scale_ms,
                                failure_ms=s.bandit_failure_ms, max_pairs=s.bandit_max_pairs,
                                max_peers=s.bandit_max_peers, halflife=s.bandit_halflife,
                                seed=seed)

    def choose(self, step):
        pick = self.sel.select([_name(p) for p in step.candidates], None, 65536,
                               node_id=_name(step.node), ts=step.ts).peer_id
        return int(pick.split("-")[1])

    def learn(self, step, peer, success, latency_ms):
        self.sel.learn_fetch(_name(peer), success, latency_ms, 65536, None,
                             node_id=_name(step.node), ts=step.ts)


class Random(Policy):
    def choose(self, step):
        return self.rng.choice(step.candidates)


class RoundRobin(Policy):
    """Each host cycles through all peers in id order, taking the next one that is a candidate."""

    def __init__(self, matrix, timeout_ms, seed):
        super().__init__(matrix, timeout_ms, seed)
        self.pointer: dict[int, int] = {}

    def choose(self, step):
        n, start = self.matrix.hosts, self.pointer.get(step.node, 0)
        best = min(step.candidates, key=lambda p: (p - start) % n)
        self.pointer[step.node] = (best + 1) % n
        return best


class BestFixed(Policy):
    """Reference: per host, a fixed preference order by the peers' mean cost over the whole run
    (hindsight)."""

    def __init__(self, matrix, timeout_ms, seed):
        super().__init__(matrix, timeout_ms, seed)
        self.rank: dict[int, dict[int, int]] = {}

    def choose(self, step):
        rank = self.rank.get(step.node)
        if rank is None:
            ms = self.matrix.ms[:, step.node, :].astype(np.float64)
            cost = np.where(np.isnan(ms), self.timeout_ms, ms).mean(axis=0)
            rank = self.rank[step.node] = {int(p): r for r, p in enumerate(np.argsort(cost))}
        return min(step.candidates, key=rank.__getitem__)


class Oracle(Policy):
    """Reference: the candidate with the least expected cost at the current slice."""

    def choose(self, step):
        return min(step.candidates, key=step.expected_ms)


class _Tabular(Policy):
    """Arms per (host, peer): what the classic bandits know."""

    def __init__(self, matrix, timeout_ms, seed):
        super().__init__(matrix, timeout_ms, seed)
        self.n: dict[tuple[int, int], int] = {}
        self.mean: dict[tuple[int, int], float] = {}
        self.t: dict[int, int] = {}

    def learn(self, step, peer, success, latency_ms):
        self.t[step.node] = self.t.get(step.node, 0) + 1
        key = (step.node, peer)
        n = self.n[key] = self.n.get(key, 0) + 1
        x = self.value(success, latency_ms)
        self.mean[key] = self.mean.get(key, 0.0) + (x - self.mean.get(key, 0.0)) / n

    def value(self, success, latency_ms):
        return self.reward(success, latency_ms)

    def unseen(self, step):
        fresh = [p for p in step.candidates if (step.node, p) not in self.n]
        return self.rng.choice(fresh) if fresh else None


class EpsilonGreedy(_Tabular):
    """ε = 0.1; otherwise the candidate of least mean observed latency (failures at timeout)."""

    epsilon = 0.1

    def value(self, success, latency_ms):
        return latency_ms if success else self.timeout_ms

    def choose(self, step):
        fresh = self.unseen(step)
        if fresh is not None:
            return fresh
        if self.rng.random() < self.epsilon:
            return self.rng.choice(step.candidates)
        return min(step.candidates, key=lambda p: self.mean[step.node, p])


class UCB1(_Tabular):
    """Auer et al.'s UCB1 on the reward ``exp(-latency / 200 ms)`` (0 on failure)."""

    def choose(self, step):
        fresh = self.unseen(step)
        if fresh is not None:
            return fresh
        log_t = math.log(max(self.t.get(step.node, 1), 1))
        node = step.node
        return max(step.candidates,
                   key=lambda p: self.mean[node, p] + math.sqrt(2 * log_t / self.n[node, p]))


class LastLatency(Policy):
    """The practitioner's rule: the candidate whose last fetch (by this host) was fastest,
    failures at the timeout; candidates never tried first."""

    def __init__(self, matrix, timeout_ms, seed):
        super().__init__(matrix, timeout_ms, seed)
        self.last: dict[tuple[int, int], float] = {}

    def choose(self, step):
        fresh = [p for p in step.candidates if (step.node, p) not in self.last]
        if fresh:
            return self.rng.choice(fresh)
        return min(step.candidates, key=lambda p: self.last[step.node, p])

    def learn(self, step, peer, success, latency_ms):
        self.last[step.node, peer] = latency_ms if success else self.timeout_ms


class DecayedLastLatency(Policy):
    """A strong hand-written rule: per (host, peer), the last log latency weighted by
    ``0.85 ** slices since it was seen``, the rest on the pair's mean log latency (failures at
    the timeout); candidates never tried first. Its one constant is given the replay's slice
    length, which the learners are not told."""

    decay = 0.85

    def __init__(self, matrix, timeout_ms, seed):
        super().__init__(matrix, timeout_ms, seed)
        self.state: dict[tuple[int, int], list[float]] = {}  # last, when, mean, n

    def choose(self, step):
        fresh = [p for p in step.candidates if (step.node, p) not in self.state]
        if fresh:
            return self.rng.choice(fresh)
        slice_len = step.replay.fetches_per_slice

        def estimate(p):
            last, when, mean, _ = self.state[step.node, p]
            w = self.decay ** ((step.ts - when) / slice_len)
            return w * last + (1 - w) * mean
        return min(step.candidates, key=estimate)

    def learn(self, step, peer, success, latency_ms):
        y = math.log(latency_ms if success else self.timeout_ms)
        s = self.state.setdefault((step.node, peer), [y, step.ts, 0.0, 0])
        s[3] += 1
        s[2] += (y - s[2]) / s[3]
        s[0], s[1] = y, step.ts


class Thompson(Policy):
    """Beta–Bernoulli Thompson sampling per (host, peer); a reward in [0, 1] counts as a
    success with that probability (Agrawal & Goyal's trick for bounded rewards)."""

    def __init__(self, matrix, timeout_ms, seed):
        super().__init__(matrix, timeout_ms, seed)
        self.ab: dict[tuple[int, int], list[float]] = {}

    def choose(self, step):
        def sample(p):
            a, b = self.ab.get((step.node, p), (1.0, 1.0))
            return self.rng.betavariate(a, b)
        return max(step.candidates, key=sample)

    def learn(self, step, peer, success, latency_ms):
        ab = self.ab.setdefault((step.node, peer), [1.0, 1.0])
        ab[0 if self.rng.random() < self.reward(success, latency_ms) else 1] += 1


class VowpalWabbit(Policy):
    """``vw --cb_explore_adf --epsilon 0.05 -q sa``: one action per candidate, with the host as
    shared feature and, per candidate, its id, the log of the last latency this host saw from it
    (the timeout after a failure), the log of that observation's age and whether it was ever
    tried; cost = latency in seconds (the timeout on failure)."""

    def __init__(self, matrix, timeout_ms, seed):
        super().__init__(matrix, timeout_ms, seed)
        from vowpalwabbit import Workspace

        self.vw = Workspace(f"--cb_explore_adf --epsilon 0.05 -q sa --quiet --random_seed {seed}")
        self._pmf: list[float] = []
        self.last: dict[tuple[int, int], tuple[float, float]] = {}  # (latency, ts)

    def _lines(self, step, label=None):
        lines = [f"shared |s n{step.node}"]
        for i, p in enumerate(step.candidates):
            prefix = f"0:{label[1]:.6f}:{label[2]:.6f} " if label and label[0] == i else ""
            seen = self.last.get((step.node, p))
            if seen is None:
                feats = f"p{p} unseen"
            else:
                feats = (f"p{p} last:{math.log(max(seen[0], 1e-3)):.4f} "
                         f"age:{math.log1p(step.ts - seen[1]):.4f}")
            lines.append(f"{prefix}|a {feats}")
        return lines

    def choose(self, step):
        self._pmf = self.vw.predict(self._lines(step))
        i = self.rng.choices(range(len(step.candidates)), weights=self._pmf)[0]
        return step.candidates[i]

    def learn(self, step, peer, success, latency_ms):
        i = step.candidates.index(peer)
        cost = (latency_ms if success else self.timeout_ms) / 1000
        self.vw.learn(self._lines(step, (i, cost, max(self._pmf[i], 1e-6))))
        self.last[step.node, peer] = (latency_ms if success else self.timeout_ms, step.ts)

    def close(self):
        self.vw.finish()


POLICIES = {OURS: Ours, "random": Random, "round-robin": RoundRobin,
            "lowest-last-latency": LastLatency, "decayed-last-latency": DecayedLastLatency,
            "epsilon-greedy": EpsilonGreedy, "ucb1": UCB1,
            "thompson-sampling": Thompson, "vw-cb-explore-adf": VowpalWabbit,
            "best-fixed-in-hindsight": BestFixed, "per-slice-oracle": Oracle}


def _requesters(matrix: RttMatrix, n: int, seed: int) -> list[int]:
    measured = np.isfinite(matrix.ms).mean(axis=(0, 2))
    eligible = [int(h) for h in np.flatnonzero(measured >= np.quantile(measured, 0.25))]
    return sorted(random.Random(seed).sample(eligible, min(n, len(eligible))))


def run(paths: list[Path], out: Path, *, unit: str, seed: int = 0, nodes: int = 16,
        fetches_per_slice: int = 20, max_slices: int | None = None, loss: float = 0.01,
        noise: float = 0.1, timeout_ms: float = 2000.0,
        policies: dict[str, type[Policy]] | None = None, plots: bool = True) -> Evaluation:
    policies = policies or POLICIES
    matrix = RttMatrix.load(paths[0], unit, max_slices=max_slices)
    requesters = _requesters(matrix, nodes, seed)
    replays = [PeerReplay(matrix, node, fetches_per_slice, loss, noise, timeout_ms,
                          seed=seed * 1000 + node) for node in requesters]
    live = {m: cls(matrix, timeout_ms, seed) for m, cls in policies.items()}
    steps_per_node = matrix.slices * fetches_per_slice
    shape = (steps_per_node, len(requesters))
    lat = {m: np.zeros(shape) for m in policies}
    ok = {m: np.zeros(shape, dtype=bool) for m in policies}
    regret = {m: np.zeros(shape) for m in policies}
    for steps in zip(*(r.steps() for r in replays)):  # hosts take turns, step by step
        for j, step in enumerate(steps):
            best = min(step.expected_ms(p) for p in step.candidates)
            for m, pol in live.items():
                peer = pol.choose(step)
                success, latency = step.fetch(peer)
                pol.learn(step, peer, success, latency)
                lat[m][step.index, j] = latency
                ok[m][step.index, j] = success
                regret[m][step.index, j] = step.expected_ms(peer) - best
    for pol in live.values():
        if hasattr(pol, "close"):
            pol.close()
    fetches = len(requesters) * steps_per_node
    results = {}
    for m in policies:
        a = lat[m]
        results[m] = {"mean_latency_ms": float(a.mean()),
                      "p95_latency_ms": float(np.percentile(a, 95)),
                      "success_rate": float(ok[m].mean()),
                      "cumulative_regret_s": float(regret[m].sum()) / 1000,
                      "regret_ms_per_fetch": float(regret[m].sum()) / fetches}
    ev = Evaluation(
        learner="peers", title=f"peers: {paths[0].name}", data=[str(paths[0])],
        metric="mean_latency_ms", higher_is_better=False, naive_baseline="random",
        references=("best-fixed-in-hindsight", "per-slice-oracle"),
        protocol=(f"{matrix.slices} slices × {matrix.hosts} hosts (unit `{unit}`); "
                  f"{len(requesters)} requesting hosts taking turns × {steps_per_node:,} fetches "
                  f"({fetches_per_slice} per slice), 3–8 random candidates each; latency = RTT × "
                  f"exp(N(0, {noise})), loss {loss}, unmeasured pair = failure, failure = "
                  f"{timeout_ms:g} ms timeout; prequential (every policy picks, then learns, on "
                  "the same draws); one instance of each policy serves every host."),
        results=results,
        details={"requesters": requesters, "fetches": fetches,
                 "summary_columns": ["mean_latency_ms", "p95_latency_ms", "success_rate",
                                     "regret_ms_per_fetch"]})
    learned = {m: r["mean_latency_ms"] for m, r in results.items()
               if m not in ev.references and m not in ("random", "round-robin")}
    if learned and all(r in results for r in ev.references):
        ev.notes.append(f"The learning policies span {min(learned.values()):.1f}–"
                        f"{max(learned.values()):.1f} ms; the best fixed ranking in hindsight "
                        f"{results['best-fixed-in-hindsight']['mean_latency_ms']:.1f} ms; the "
                        f"per-slice oracle {results['per-slice-oracle']['mean_latency_ms']:.1f} ms.")
    if OURS in live:
        _staleness_note(ev, live[OURS].sel._policy.staleness())
    if plots:
        ev.plots = _plots({m: r.sum(axis=1).cumsum() for m, r in regret.items()},
                          {m: a.mean(axis=1) for m, a in lat.items()}, out)
    return ev


def _staleness_note(ev: Evaluation, learned: dict[tuple[int, int, float], float]) -> None:
    """What ours learned of stale readings (``details.learned_staleness``), and a note on the
    weight of a reading about 32 fetches old before and after a large jump of its node."""
    ev.details["learned_staleness"] = {f"node_jump={a} peer_jump={b} age>={age:g}": w
                                       for (a, b, age), w in learned.items()}
    ages = {age for (a, b, age) in learned if b == 0 and a in (0, 3)}
    both = [age for age in ages if (0, 0, age) in learned and (3, 0, age) in learned]
    if both:
        age = min(both, key=lambda x: abs(x - 32))
        ev.notes.append(f"Learned by pakit-stream: a reading {age:g}+ fetches old weighs "
                        f"{learned[0, 0, age]:g} when its node has shown no jump since, "
                        f"{learned[3, 0, age]:g} after a jump of over 8 noise sds "
                        "(`details.learned_staleness`).")


def _plots(regret, lat, out: Path) -> list[tuple[str, str]]:
    fig, ax = figure()
    for m, curve in regret.items():
        x = np.arange(1, len(curve) + 1)
        ax.plot(x, curve / 1000, lw=2.5 if m == OURS else 1.2, label=m)
    labels(ax, "fetches per requesting host", "cumulative regret, s (all hosts)",
           "Regret against the per-slice oracle")
    save(fig, out / "peers_regret.png")
    fig, ax = figure()
    for m, a in lat.items():  # mean over requesting hosts, per step
        w = max(1, len(a) // 100)
        ax.plot(np.arange(len(a) - w + 1)[::w], np.convolve(a, np.ones(w) / w, mode="valid")[::w],
                lw=2.5 if m == OURS else 1, label=m)
    labels(ax, f"fetches per requesting host (mean over hosts, windows of {w})", "mean latency, ms",
           "Learning curve: rolling mean fetch latency", ylog=True)
    save(fig, out / "peers_latency.png")
    return [("Cumulative regret", "peers_regret.png"), ("Rolling mean latency", "peers_latency.png")]
