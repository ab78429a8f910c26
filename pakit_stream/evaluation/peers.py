"""Peer choice on real RTT matrices: the daemon's contextual bandit against the classic
bandits, Vowpal Wabbit and two references (the best fixed ranking in hindsight and the
per-slice oracle).

For each of ``nodes`` requesting hosts, a :class:`~pakit_stream.replay.latency.PeerReplay`
walks the matrix slice by slice; at every step each policy picks one of the candidates, gets
that fetch's outcome (the same draws for every policy) and learns from it before the next step:
a prequential, test-then-train evaluation. Regret is measured against the per-slice oracle in
expected cost (a failure costs the timeout).
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
    def __init__(self, replay: PeerReplay, seed: int) -> None:
        self.replay = replay
        self.rng = random.Random(seed)

    def choose(self, step: FetchStep) -> int:
        raise NotImplementedError

    def learn(self, step: FetchStep, peer: int, success: bool, latency_ms: float) -> None:
        pass

    def reward(self, success: bool, latency_ms: float, scale: float = 200.0) -> float:
        return math.exp(-latency_ms / scale) if success else 0.0


class Ours(Policy):
    """The daemon's :class:`~pakit_stream.learners.peers.PeerSelector`, with its settings."""

    def __init__(self, replay, seed):
        super().__init__(replay, seed)
        s = Settings()
        self.sel = PeerSelector(smoothing=s.bandit_smoothing,
                                latency_scale_ms=s.bandit_latency_scale_ms, seed=seed)
        self.name = replay.peer_name

    def choose(self, step):
        pick = self.sel.select([self.name(p) for p in step.candidates], {}, 65536).peer_id
        return int(pick.split("-")[1])

    def learn(self, step, peer, success, latency_ms):
        self.sel.learn_fetch(self.name(peer), success, latency_ms, 65536, {})


class Random(Policy):
    def choose(self, step):
        return self.rng.choice(step.candidates)


class RoundRobin(Policy):
    """Cycles through all peers in id order, taking the next one that is a candidate."""

    pointer = 0

    def choose(self, step):
        n = self.replay.matrix.hosts
        best = min(step.candidates, key=lambda p: (p - self.pointer) % n)
        self.pointer = (best + 1) % n
        return best


class BestFixed(Policy):
    """Reference: a fixed preference order, the peers' mean cost over the whole run (hindsight)."""

    def __init__(self, replay, seed):
        super().__init__(replay, seed)
        ms = replay.matrix.ms[:, replay.node, :].astype(np.float64)
        cost = np.where(np.isnan(ms), replay.timeout_ms, ms).mean(axis=0)
        self.rank = {int(p): r for r, p in enumerate(np.argsort(cost))}

    def choose(self, step):
        return min(step.candidates, key=self.rank.__getitem__)


class Oracle(Policy):
    """Reference: the candidate with the least expected cost at the current slice."""

    def choose(self, step):
        return min(step.candidates, key=step.expected_ms)


class _Tabular(Policy):
    def __init__(self, replay, seed):
        super().__init__(replay, seed)
        self.n: dict[int, int] = {}
        self.mean: dict[int, float] = {}
        self.t = 0

    def learn(self, step, peer, success, latency_ms):
        self.t += 1
        n = self.n[peer] = self.n.get(peer, 0) + 1
        x = self.value(success, latency_ms)
        self.mean[peer] = self.mean.get(peer, 0.0) + (x - self.mean.get(peer, 0.0)) / n

    def value(self, success, latency_ms):
        return self.reward(success, latency_ms)

    def unseen(self, step):
        fresh = [p for p in step.candidates if p not in self.n]
        return self.rng.choice(fresh) if fresh else None


class EpsilonGreedy(_Tabular):
    """ε = 0.1; otherwise the candidate of least mean observed latency (failures at timeout)."""

    epsilon = 0.1

    def value(self, success, latency_ms):
        return latency_ms if success else self.replay.timeout_ms

    def choose(self, step):
        fresh = self.unseen(step)
        if fresh is not None:
            return fresh
        if self.rng.random() < self.epsilon:
            return self.rng.choice(step.candidates)
        return min(step.candidates, key=self.mean.__getitem__)


class UCB1(_Tabular):
    """Auer et al.'s UCB1 on the reward ``exp(-latency / 200 ms)`` (0 on failure)."""

    def choose(self, step):
        fresh = self.unseen(step)
        if fresh is not None:
            return fresh
        log_t = math.log(max(self.t, 1))
        return max(step.candidates,
                   key=lambda p: self.mean[p] + math.sqrt(2 * log_t / self.n[p]))


class Thompson(Policy):
    """Beta–Bernoulli Thompson sampling; a reward in [0, 1] counts as a success with that
    probability (Agrawal & Goyal's trick for bounded rewards)."""

    def __init__(self, replay, seed):
        super().__init__(replay, seed)
        self.ab: dict[int, list[float]] = {}

    def choose(self, step):
        def sample(p):
            a, b = self.ab.get(p, (1.0, 1.0))
            return self.rng.betavariate(a, b)
        return max(step.candidates, key=sample)

    def learn(self, step, peer, success, latency_ms):
        ab = self.ab.setdefault(peer, [1.0, 1.0])
        ab[0 if self.rng.random() < self.reward(success, latency_ms) else 1] += 1


class VowpalWabbit(Policy):
    """``vw --cb_explore_adf --epsilon 0.05``: one action per candidate, featured by its id;
    cost = latency in seconds (the timeout on failure)."""

    def __init__(self, replay, seed):
        super().__init__(replay, seed)
        from vowpalwabbit import Workspace

        self.vw = Workspace(f"--cb_explore_adf --epsilon 0.05 --quiet --random_seed {seed}")
        self._pmf: list[float] = []

    def _lines(self, step, label=None):
        lines = ["shared |s node"]
        for i, p in enumerate(step.candidates):
            prefix = f"0:{label[1]:.6f}:{label[2]:.6f} " if label and label[0] == i else ""
            lines.append(f"{prefix}|a p{p}")
        return lines

    def choose(self, step):
        self._pmf = self.vw.predict(self._lines(step))
        i = self.rng.choices(range(len(step.candidates)), weights=self._pmf)[0]
        return step.candidates[i]

    def learn(self, step, peer, success, latency_ms):
        i = step.candidates.index(peer)
        cost = (latency_ms if success else self.replay.timeout_ms) / 1000
        self.vw.learn(self._lines(step, (i, cost, max(self._pmf[i], 1e-6))))

    def close(self):
        self.vw.finish()


POLICIES = {OURS: Ours, "random": Random, "round-robin": RoundRobin, "epsilon-greedy": EpsilonGreedy,
            "ucb1": UCB1, "thompson-sampling": Thompson, "vw-cb-explore-adf": VowpalWabbit,
            "best-fixed-in-hindsight": BestFixed, "per-slice-oracle": Oracle}


def _requesters(matrix: RttMatrix, n: int, seed: int) -> list[int]:
    measured = np.isfinite(matrix.ms).mean(axis=(0, 2))
    eligible = [int(h) for h in np.flatnonzero(measured >= np.quantile(measured, 0.25))]
    return sorted(random.Random(seed).sample(eligible, min(n, len(eligible))))


def run(paths: list[Path], out: Path, *, unit: str, seed: int = 0, nodes: int = 8,
        fetches_per_slice: int = 20, max_slices: int | None = None, loss: float = 0.01,
        noise: float = 0.1, timeout_ms: float = 2000.0,
        policies: dict[str, type[Policy]] | None = None) -> Evaluation:
    policies = policies or POLICIES
    matrix = RttMatrix.load(paths[0], unit, max_slices=max_slices)
    requesters = _requesters(matrix, nodes, seed)
    lat: dict[str, list[float]] = {m: [] for m in policies}
    ok: dict[str, list[bool]] = {m: [] for m in policies}
    regret: dict[str, np.ndarray] = {}
    steps_per_node = matrix.slices * fetches_per_slice
    for node in requesters:
        replay = PeerReplay(matrix, node, fetches_per_slice, loss, noise, timeout_ms, seed=seed + node)
        live = {m: cls(replay, seed + node) for m, cls in policies.items()}
        node_regret = {m: np.zeros(steps_per_node) for m in policies}
        for step in replay.steps():
            best = min(step.expected_ms(p) for p in step.candidates)
            for m, pol in live.items():
                peer = pol.choose(step)
                success, latency = step.fetch(peer)
                pol.learn(step, peer, success, latency)
                lat[m].append(latency)
                ok[m].append(success)
                node_regret[m][step.index] = step.expected_ms(peer) - best
        for m, pol in live.items():
            if hasattr(pol, "close"):
                pol.close()
            regret[m] = regret.get(m, 0) + np.cumsum(node_regret[m])
    results = {}
    for m in policies:
        a = np.asarray(lat[m])
        results[m] = {"mean_latency_ms": float(a.mean()), "p95_latency_ms": float(np.percentile(a, 95)),
                      "success_rate": float(np.mean(ok[m])),
                      "cumulative_regret_s": float(regret[m][-1]) / 1000,
                      "regret_ms_per_fetch": float(regret[m][-1]) / (len(requesters) * steps_per_node)}
    ev = Evaluation(
        learner="peers", title=f"peers: {paths[0].name}", data=[str(paths[0])], metric="mean_latency_ms", higher_is_better=False,
        naive_baseline="random", references=("best-fixed-in-hindsight", "per-slice-oracle"),
        protocol=(f"{matrix.slices} slices × {matrix.hosts} hosts (unit `{unit}`); {len(requesters)} "
                  f"requesting hosts × {steps_per_node:,} fetches ({fetches_per_slice} per slice), "
                  f"3–8 random candidates each; latency = RTT × exp(N(0, {noise})), loss {loss}, "
                  f"unmeasured pair = failure, failure = {timeout_ms:g} ms timeout; prequential "
                  "(every policy picks, then learns, on the same draws)."),
        results=results,
        details={"requesters": requesters, "fetches": len(requesters) * steps_per_node,
                 "summary_columns": ["mean_latency_ms", "p95_latency_ms", "success_rate",
                                     "regret_ms_per_fetch"]})
    learned = {m: r["mean_latency_ms"] for m, r in results.items()
               if m not in ev.references and m not in ("random", "round-robin")}
    if learned:
        ev.notes.append(f"The learning policies span {min(learned.values()):.1f}–"
                        f"{max(learned.values()):.1f} ms; the best fixed ranking in hindsight "
                        f"{results['best-fixed-in-hindsight']['mean_latency_ms']:.1f} ms; the "
                        f"per-slice oracle {results['per-slice-oracle']['mean_latency_ms']:.1f} ms.")
    ev.plots = _plots(regret, lat, len(requesters), out)
    return ev


def _plots(regret, lat, nodes: int, out: Path) -> list[tuple[str, str]]:
    fig, ax = figure()
    for m, curve in regret.items():
        x = np.arange(1, len(curve) + 1)
        ax.plot(x, curve / 1000, lw=2.5 if m == OURS else 1.2, label=m)
    labels(ax, "fetches per requesting host", "cumulative regret, s (all hosts)",
           "Regret against the per-slice oracle")
    save(fig, out / "peers_regret.png")
    fig, ax = figure()
    for m, a in lat.items():
        a = np.asarray(a).reshape(nodes, -1).mean(axis=0)  # all requesting hosts, per step
        w = max(1, len(a) // 100)
        ax.plot(np.arange(len(a) - w + 1)[::w], np.convolve(a, np.ones(w) / w, mode="valid")[::w],
                lw=2.5 if m == OURS else 1, label=m)
    labels(ax, f"fetches per requesting host (mean over hosts, windows of {w})", "mean latency, ms",
           "Learning curve: rolling mean fetch latency", ylog=True)
    save(fig, out / "peers_latency.png")
    return [("Cumulative regret", "peers_regret.png"), ("Rolling mean latency", "peers_latency.png")]
