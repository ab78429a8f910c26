"""Which codec to compress a block with: least expected cost, choosing charged at the same price.

A block's cost under a codec is ``compressed bytes + λ · CPU µs`` (compress + decompress;
``λ`` = ``cpu_bytes_per_us``). Nodes report, for every stored block, how each codec did
(``codec_results``), so after each block the learner knows what *every* rule would have cost:
full information. It keeps

* **cost tables**: per cell, the bytes each codec produced and the µs it took per raw byte,
  over half-octave size buckets, crossed with the node's **recent compressibility** (the lz4
  ratio of its previous block: free, since consecutive blocks of a file look alike) and with
  the **probe** (the lz4 ratio of the block's first 4 KiB: it costs ``probe_us`` to compute).
  A cell's estimate starts from its parent's (size bucket, then everything) and moves to its
  own data as blocks arrive (``shrinkage`` pseudo-blocks);
* **experts**: rules that turn the tables into a choice: every fixed codec, by size, by size
  and recent compressibility, by size and probe, by all three (and the batch net, when one is
  attached). Each expert's cost on every block, selection included (the probe, the lookup,
  the net's forward pass), is summed with exponential forgetting (``halflife`` blocks) over
  all blocks, per size bucket, per node and per node and size bucket; a block follows the
  expert cheapest so far for its node and size, each level starting from the broader ones
  (``prior_blocks`` pseudo-blocks). This is prediction with expert advice under full
  information: every expert's cost on every block is known once the block is stored.

Because the fixed codecs are experts, the chooser follows the best fixed codec wherever nothing
cleverer has paid off, probes only where probing has paid for itself, and switches when the
data change.

What a node applies is :meth:`CodecCostModel.policy`: per size bucket, the leading expert's
decisions as a small table (a dict lookup, plus the probe where the expert uses it).

>>> model = CodecCostModel(cpu_bytes_per_us=1.0)
>>> for i in range(200):  # text-like blocks: zstd-9 squeezes hardest and CPU is cheap
...     model.learn_one({"block_size": 65536, "node_id": "n1", "probe_ratio": 0.5},
...                     {"zstd-9": (20000, 900.0), "lz4": (33000, 60.0), "none": (65536, 0.0)})
>>> model.predict_one({"block_size": 65536, "node_id": "n1"})
'zstd-9'
"""

from __future__ import annotations

import math
import operator
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pakit_stream.base_model import ModelConfig, OnlineModel
from pakit_stream.exceptions import UsageError

__all__ = ["CodecCostModel", "CodecChoice", "CodecPolicy", "CODEC_MENU", "heuristic_codec",
           "EXPERTS", "forward_us", "size_bucket", "ratio_bucket"]

#: every codec a node may be told to use (``none``: store as is)
CODEC_MENU = ("none", "zstd-1", "zstd-3", "zstd-9", "lz4", "snappy", "brotli-4")
#: the rules built on the cost tables, and the features each reads
EXPERTS = {"size": (), "recent": ("recent",), "probe": ("probe",),
           "recent+probe": ("recent", "probe")}
_RATIO_STEP = 0.05  # width of a compressibility bucket (lz4 ratio)
_EXPERT_AT = {name: i for i, name in enumerate(EXPERTS)}  # place in _rates' answer


def heuristic_codec(block_size: int) -> str:
    """The fallback before any data: zstd-3 above 100 kB, else lz4."""
    return "zstd-3" if block_size > 100_000 else "lz4"


def forward_us(model, features: Mapping[str, float], repeats: int = 200) -> float:
    """Median µs of one ``model.predict(features)``: what a node pays to ask a model."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.predict(features)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e6)


def size_bucket(size: int) -> int:
    """The half-octave size bucket the tables and the experts key blocks by."""
    return int(round(2 * math.log2(max(size, 1))))


def ratio_bucket(ratio: float | None) -> int:
    """The compressibility bucket of an lz4 ratio (``-1``: unknown)."""
    return -1 if ratio is None else int(min(max(ratio, 0.0), 1.2) / _RATIO_STEP)


@dataclass(frozen=True)
class CodecChoice:
    """A decision: the codec, the expert that made it, whether it read the probe, and the
    µs the choosing cost (the lookup, the probe, a forward pass)."""

    algorithm: str
    expert: str
    probed: bool
    selection_us: float
    source: str = "learned"

    @classmethod
    def fallback(cls, block_size: int) -> CodecChoice:
        """The fixed rule's choice (:func:`heuristic_codec`), choosing nothing."""
        return cls(heuristic_codec(block_size), "fallback", False, 0.0, "fallback")


class CodecPolicy:
    """The decisions a node applies, compiled from the learner's state at one moment.

    ``rules[size bucket] = (expert, table)``: ``table`` maps the expert's features (recent
    and/or probe bucket) to a codec; an expert without features maps ``()``; ``"noprobe"``
    is the codec for a block without its probe, ``"other"`` for a bucket the table lacks.
    Sizes never seen use the nearest bucket; with no rule at all, ``default`` (``None``: the
    fixed rule, :func:`heuristic_codec`). The daemon serves it as JSON (``GET /v1/policies/codec``,
    :meth:`as_dict`); a node rebuilds it (:meth:`from_dict`) and chooses locally.

    >>> policy = CodecPolicy({32: ("probe", {(10,): "zstd-9", (19,): "lz4", "noprobe": "lz4"})},
    ...                      None, version=7)
    >>> again = CodecPolicy.from_dict(policy.as_dict())
    >>> again.choose(65536, probe=0.52), again.choose(65536), again.version
    (('zstd-9', True), ('lz4', False), 7)
    >>> CodecPolicy.fallback().choose(262144), CodecPolicy.fallback().choose(4096)
    (('zstd-3', False), ('lz4', False))
    """

    def __init__(self, rules: dict[int, tuple[str, dict[tuple, str]]], default: str | None,
                 version: int = 0) -> None:
        self.rules, self.default, self.version = rules, default, version
        self._sizes = sorted(rules)

    @classmethod
    def fallback(cls) -> CodecPolicy:
        """No rule: every block gets the fixed rule's codec."""
        return cls({}, None)

    def as_dict(self) -> dict[str, Any]:
        """The policy as JSON-able data (the API's ``CodecPolicyAnswer`` without ``source``)."""
        return {"version": self.version, "default": self.default,
                "rules": [{"size_bucket": s, "expert": expert,
                           "table": [{"key": key if isinstance(key, str) else list(key),
                                      "codec": codec} for key, codec in table.items()]}
                          for s, (expert, table) in sorted(self.rules.items())]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CodecPolicy:
        """The policy :meth:`as_dict` gave (an answer's extra keys are ignored)."""
        rules = {int(rule["size_bucket"]): (
            rule["expert"], {d["key"] if isinstance(d["key"], str) else tuple(d["key"]): d["codec"]
                             for d in rule["table"]}) for rule in data.get("rules", ())}
        return cls(rules, data.get("default"), int(data.get("version", 0)))

    def _rule(self, size: int) -> tuple[str, dict[tuple, str]] | None:
        s = size_bucket(size)
        rule = self.rules.get(s)
        if rule is None and self._sizes:
            rule = self.rules[min(self._sizes, key=lambda b: abs(b - s))]
        return rule

    def needs_probe(self, size: int) -> bool:
        rule = self._rule(size)
        return rule is not None and "probe" in EXPERTS.get(rule[0], ())

    def choose(self, size: int, recent: float | None = None,
               probe: Callable[[], float] | float | None = None) -> tuple[str, bool]:
        """``(codec, probed)``; ``probe`` is the probe ratio or a function computing it,
        called only when the rule reads it."""
        rule = self._rule(size)
        if rule is None:
            return self.default or heuristic_codec(size), False
        expert, table = rule
        other = table.get("other") or self.default or heuristic_codec(size)
        feats = EXPERTS.get(expert, ())
        key: tuple = ()
        probed = False
        if "recent" in feats:
            key += (ratio_bucket(recent),)
        if "probe" in feats:
            if probe is None:
                return table.get("noprobe", other), False
            value = probe() if callable(probe) else probe
            key += (ratio_bucket(value),)
            probed = True
        return table.get(key, other), probed


class _Cell:
    """One cell of the cost tables: per codec, the raw bytes measured, compressed bytes and
    CPU µs, summed over ``n`` blocks, and ``own``: their cost per raw byte at the price the
    model last priced at (nan: never measured), kept up to date as blocks arrive; ``clean``
    when every ``own`` is finite, ``even`` when every codec was measured on every block."""

    __slots__ = ("n", "raw", "comp", "cpu", "own", "clean", "even")

    def __init__(self, width: int) -> None:
        self.n = 0.0
        self.raw, self.comp, self.cpu = [0.0] * width, [0.0] * width, [0.0] * width
        self.own = [math.nan] * width
        self.clean, self.even = width == 0, True

    def price(self, lam: float) -> None:
        """Recompute ``own`` at the price ``lam``."""
        self.own = [(c + lam * u) / r if r > 0 else math.nan
                    for r, c, u in zip(self.raw, self.comp, self.cpu)]
        self.clean = _finite(self.own)


def _finite(values: list[float]) -> bool:
    """Whether every value is finite (tested on their sum: an overflow counts as not)."""
    total = sum(values)
    return total - total == 0


class CodecCostModel(OnlineModel):
    """Online cost tables and the experts that choose from them (see the module docstring).

    Parameters
    ----------
    cpu_bytes_per_us
        ``λ``: what a CPU µs costs, in bytes.
    probe_us, lookup_us
        What computing the probe and applying a compiled rule cost a node, in µs: charged to
        the experts that do so, at the price ``λ``.
    halflife
        Blocks after which an expert's past costs weigh half.
    shrinkage
        Pseudo-blocks with which a cell's parent estimate enters its own.
    prior_blocks
        Pseudo-blocks with which the ranking over all sizes enters a size bucket's.
    max_nodes
        Nodes whose recent compressibility is kept, and (node, size) running costs (least
        recent forgotten).

    The tables and running costs are plain Python floats: their vectors are a few codecs or
    experts long, where a numpy call costs more than the arithmetic it does.
    """

    default_name = "codec_cost_model"

    def __init__(self, model_config: ModelConfig | None = None, *,
                 cpu_bytes_per_us: float = 1.0, probe_us: float = 5.0, lookup_us: float = 0.3,
                 halflife: float = 100.0, shrinkage: float = 4.0, prior_blocks: float = 5.0,
                 max_nodes: int = 100_000, codecs: tuple[str, ...] = CODEC_MENU) -> None:
        super().__init__(model_config)
        self.cpu_bytes_per_us, self.probe_us, self.lookup_us = cpu_bytes_per_us, probe_us, lookup_us
        self.halflife, self.shrinkage, self.prior_blocks = halflife, shrinkage, prior_blocks
        self.max_nodes, self.codecs = max_nodes, tuple(codecs)
        self._index = {c: i for i, c in enumerate(self.codecs)}
        self._cells: dict[tuple, _Cell] = {}
        self._priced_at = cpu_bytes_per_us  # the λ the cells' ``own`` costs are at
        self._recent: OrderedDict[str, float] = OrderedDict()
        self.experts: list[str] = [f"fixed:{c}" for c in self.codecs] + list(EXPERTS)
        self._keep = 0.5 ** (1.0 / halflife)
        #: running costs of the experts: () for all blocks, (size bucket,), and (node, size
        #: bucket) for the ``max_nodes`` nodes stored to most recently -> [costs, blocks]
        self._scores: OrderedDict[tuple, list] = OrderedDict()
        self._finite = True  # every running cost is finite (else _leader follows numpy's rules)
        self.net = None  # an attached batch model (see attach_net), an expert when present
        self.net_us = 0.0
        self._policy: CodecPolicy | None = None
        self._policy_at = -1
        self._selection: tuple | None = None  # cached _selection_cost
        self._eligibility: dict[tuple, tuple[bool, ...]] = {}  # cached _eligible

    # -- tables ---------------------------------------------------------------------------------
    def _shrink(self, cell: _Cell | None, prior: tuple | None) -> tuple | None:
        """Expected cost per raw byte of each codec in ``cell`` (nan: never measured), its own
        data entering against ``prior`` (its parent's) with ``shrinkage`` weight; estimates
        are ``(costs, all finite)``."""
        if cell is None:
            return prior
        own = cell.own
        if prior is None:
            return own, cell.clean
        w = cell.n / (cell.n + self.shrinkage)
        v = 1 - w
        costs, clean = prior
        if clean and cell.clean:
            return [w * a + v * b for a, b in zip(own, costs)], True
        # unmeasured in the cell: the prior's; unmeasured in the prior: the cell's
        mixed = [b if a != a else a if b != b else w * a + v * b for a, b in zip(own, costs)]
        return mixed, _finite(mixed)

    def _rates(self, cells: list[_Cell | None], probe: bool = True) -> tuple:
        """Every table expert's cost estimates from a block's cells (as :meth:`_cells_of` lists
        them), in the order of :data:`EXPERTS`, each cell shrunk once towards its parent:
        everything → size → size × recent → size × recent × probe, and size → size × probe
        (``probe``: whether the probe experts' are wanted)."""
        if self.cpu_bytes_per_us != self._priced_at:
            self._price()
        whole, of_size, of_recent, of_probe, of_both = cells
        by_size = self._shrink(of_size, None if whole is None else (whole.own, whole.clean))
        by_recent = self._shrink(of_recent, by_size)
        if not probe:
            return by_size, by_recent, None, None
        return (by_size, by_recent, self._shrink(of_probe, by_size),
                self._shrink(of_both, by_recent))

    def _expert_rate(self, name: str, size: int, recent: float | None,
                     probe: float | None) -> tuple | None:
        """One table expert's :meth:`_rates` for a block of this size, recent compressibility
        and probe."""
        cells = list(map(self._cells.get, self._cells_of(size, recent, probe)))
        return self._rates(cells, "probe" in EXPERTS[name])[_EXPERT_AT[name]]

    @staticmethod
    def _cells_of(size: int, recent: float | None, probe: float | None) -> tuple:
        """The cells a block falls in: everything, its size, size × recent compressibility,
        size × probe, size × both."""
        s = size_bucket(size)
        r, p = ratio_bucket(recent), ratio_bucket(probe)
        return ("all",), ("s", s), ("sr", s, r), ("sp", s, p), ("srp", s, r, p)

    def _price(self) -> None:
        """Reprice every cell's ``own`` costs at the current ``λ``."""
        for cell in self._cells.values():
            cell.price(self.cpu_bytes_per_us)
        self._priced_at = self.cpu_bytes_per_us

    @staticmethod
    def _pick(rate: tuple | None) -> int | None:
        """The cheapest codec by ``rate`` (the first of equals), ``None`` if none was measured."""
        if rate is None:
            return None
        costs, clean = rate
        if not clean:
            costs = [math.inf if c != c else c for c in costs]
        best = min(costs)
        return None if best == math.inf else costs.index(best)

    # -- learning -------------------------------------------------------------------------------
    def learn_one(self, x: Mapping[str, Any], costs: Mapping[str, tuple[float, float]]) -> None:
        """Learn one stored block: ``x`` holds ``block_size`` and optionally ``node_id``,
        ``probe_ratio``, ``features`` (the net's inputs); ``costs`` maps each measured codec
        to ``(compressed bytes, cpu µs)``."""
        size = int(x["block_size"])
        if size <= 0:
            return
        node = x.get("node_id")
        probe = x.get("probe_ratio")
        recent = self._recent.get(node) if node is not None else None
        index = self._index
        if not index.keys() >= costs.keys():
            for codec in costs:
                if codec not in index:
                    self._add_codec(codec)
        lam = self.cpu_bytes_per_us
        if lam != self._priced_at:
            self._price()
        width = len(self.codecs)
        block = [(index[codec], float(nbytes), float(us)) for codec, (nbytes, us) in costs.items()]
        actual = [math.nan] * width  # the block's cost under each codec (nan: not measured)
        for i, nbytes, us in block:
            actual[i] = nbytes + lam * us
        complete = len(block) == width
        full = complete and _finite(actual)
        keys = self._cells_of(size, recent, probe)
        cells = self._cells
        mine = list(map(cells.get, keys))
        self._score(keys[1][1], node, probe, mine, actual, full, x.get("features"))
        for key, cell in zip(keys, mine):
            if cell is None:
                cell = cells[key] = _Cell(width)
            raw, comp, cpu, own = cell.raw, cell.comp, cell.cpu, cell.own
            if complete and cell.even:  # every codec measured on every block: one raw total
                total = raw[0] + size
                raw[:] = (total,) * width
                for i, nbytes, us in block:
                    squeezed = comp[i] = comp[i] + nbytes
                    spent = cpu[i] = cpu[i] + us
                    own[i] = (squeezed + lam * spent) / total
            else:
                cell.even = False
                for i, nbytes, us in block:
                    total = raw[i] = raw[i] + size
                    squeezed = comp[i] = comp[i] + nbytes
                    spent = cpu[i] = cpu[i] + us
                    own[i] = (squeezed + lam * spent) / total
            cell.n += 1.0
            if not (full and cell.clean):
                cell.clean = _finite(own)
        if node is not None and "lz4" in costs:
            self._recent[node] = costs["lz4"][0] / size
            self._recent.move_to_end(node)
            if len(self._recent) > self.max_nodes:
                self._recent.popitem(last=False)
        self.n_updates += 1

    def _selection_cost(self) -> list[float]:
        """What each expert's choosing costs a node, in bytes: ``λ`` × its µs (cached: experts
        rarely change)."""
        key = (len(self.experts), self.lookup_us, self.probe_us, self.net_us)
        lam, cached = self.cpu_bytes_per_us, self._selection
        if cached is None or cached[0] != key:
            us = [0.0] * len(self.codecs)
            us += [self.lookup_us + (self.probe_us if "probe" in feats else 0.0)
                   for feats in EXPERTS.values()]
            if self.net is not None:
                us.append(self.net_us)
        elif cached[2] == lam:
            return cached[3]
        else:
            us = cached[1]
        self._selection = (key, us, lam, [lam * u for u in us])
        return self._selection[3]

    def _score(self, s, node, probe, cells, actual, full, features) -> None:
        """Charge every expert what it would have cost on this block (``actual``: each codec's
        cost, nan where not measured; ``full``: every codec measured, all finite)."""
        picks = list(map(self._pick, self._rates(cells, probe is not None)))
        fallback = picks[0]  # the size expert: what a rule without its inputs does
        if self.net is not None:
            picks.append(self._index.get(self.net.predict(features)["algorithm"])
                         if features is not None and probe is not None else None)
        if full:
            dearest = max(actual)
            alt = dearest if fallback is None else actual[fallback]
            chosen = actual + [alt if q is None else actual[q] for q in picks]
        else:
            # an expert with no answer, or one the node did not measure, pays the dearest measured
            dearest = max((a for a in actual if a == a), default=math.nan)
            alt = math.nan if fallback is None else actual[fallback]
            chosen = [a if a == a else dearest
                      for a in actual + [alt if q is None else actual[q] for q in picks]]
        cost = list(map(operator.add, chosen, self._selection_cost()))
        if self._finite and not _finite(cost):
            self._finite = False
        keep, scores = self._keep, self._scores
        for key in ((), (s,), (node,), (node, s)) if node is not None else ((), (s,)):
            entry = scores.get(key)
            if entry is None:
                entry = scores[key] = [[0.0] * len(cost), 0.0]
                if key and isinstance(key[0], str) and len(scores) > self.max_nodes:
                    self._forget_oldest_node_score()
            elif key and isinstance(key[0], str):
                scores.move_to_end(key)
            entry[0] = [a * keep + c for a, c in zip(entry[0], cost)]
            entry[1] = entry[1] * keep + 1.0

    def _forget_oldest_node_score(self) -> None:
        for key in self._scores:
            if key and isinstance(key[0], str):
                del self._scores[key]
                return

    def _leader(self, size: int, eligible: tuple[bool, ...] | None = None,
                node: str | None = None) -> int | None:
        """The expert with the least running cost for blocks of this size of this node.

        Each level starts from the one above as ``prior_blocks`` pseudo-blocks (rescaled to its
        own block cost): all blocks → blocks of this size; all blocks → this node's blocks;
        then this node's blocks of this size start from the size's ranking, tilted by how the
        node's ranking differs from everyone's (a node storing only text favours the same
        codecs at every size).
        """
        total = self._scores.get(())
        if total is None or total[1] == 0:
            return None
        if not self._finite:
            return self._leader_by_numpy(size, eligible, node)
        blocks = total[1]
        overall = [c / blocks for c in total[0]]
        least = min(overall)
        s = size_bucket(size)
        score = self._shrunk((s,), overall, least)
        if node is not None and (node,) in self._scores:
            mine = self._shrunk((node,), overall, least)
            if least > 0:
                mine_least = min(mine)
                if mine_least == 0:  # numpy's infinities and nans, not Python's error
                    return self._leader_by_numpy(size, eligible, node)
                score = [c * ((a / mine_least) / (b / least))
                         for c, a, b in zip(score, mine, overall)]
            score = self._shrunk((node, s), score, min(score))
        if eligible is not None:
            score = [c if ok else math.inf for c, ok in zip(score, eligible)]
        return score.index(min(score))

    def _shrunk(self, key: tuple, prior: list[float], least: float) -> list[float]:
        """``key``'s running costs per block, ``prior`` (whose least is ``least``) entering as
        ``prior_blocks`` pseudo-blocks rescaled to its own block cost."""
        entry = self._scores.get(key)
        if entry is None or entry[1] == 0:
            return prior
        scale = (min(entry[0]) / entry[1]) / least if least > 0 else 1.0
        m = self.prior_blocks
        blocks = entry[1] + m
        return [(c + m * b * scale) / blocks for c, b in zip(entry[0], prior)]

    def _leader_by_numpy(self, size: int, eligible: tuple[bool, ...] | None,
                         node: str | None) -> int:
        """:meth:`_leader` by numpy's rules for nan and division by zero: for costs that are
        not finite, or zero."""
        def shrunk(key, prior):
            entry = self._scores.get(key)
            if entry is None or entry[1] == 0:
                return prior
            costs = np.array(entry[0])
            scale = (costs.min() / entry[1]) / prior.min() if prior.min() > 0 else 1.0
            return (costs + self.prior_blocks * prior * scale) / (entry[1] + self.prior_blocks)

        total = self._scores[()]
        overall = np.array(total[0]) / total[1]
        s = size_bucket(size)
        score = shrunk((s,), overall)
        if node is not None and (node,) in self._scores:
            mine = shrunk((node,), overall)
            tilt = (mine / mine.min()) / (overall / overall.min()) if overall.min() > 0 else 1.0
            score = shrunk((node, s), score * tilt)
        if eligible is not None:
            score = np.where(eligible, score, np.inf)
        return int(np.argmin(score))

    def _columns(self, change) -> None:
        """Apply ``change(costs) -> costs`` to every running-cost vector (a numpy array: these
        changes are rare, and keep numpy's rules)."""
        for entry in self._scores.values():
            entry[0] = change(np.array(entry[0])).tolist()
        self._finite = all(_finite(entry[0]) for entry in self._scores.values())

    def _add_codec(self, codec: str) -> None:
        """A codec never seen before joins the tables and, as a fixed rule, the experts (with
        the worst running cost: it leads only once it has paid off)."""
        if not isinstance(codec, str) or not codec:
            raise UsageError(f"codec names are non-empty strings, got {codec!r}")
        at = len(self.codecs)
        self.codecs += (codec,)
        self._index[codec] = at
        for cell in self._cells.values():
            for column in (cell.raw, cell.comp, cell.cpu):
                column.append(0.0)
            cell.own.append(math.nan)
            cell.clean = cell.even = False
        self.experts.insert(at, f"fixed:{codec}")
        self._columns(lambda costs: np.insert(costs, at, costs.max(initial=0.0)))
        self._policy = None

    # -- the net --------------------------------------------------------------------------------
    def attach_net(self, net, forward_us: float, relative_cost: float | None = None) -> None:
        """Make a served batch model an expert (``None`` removes it); ``forward_us`` is what
        its features and forward pass cost a node. Its running cost starts at the best
        expert's times ``relative_cost`` (what the gate measured: the net's cost over the better
        of the tables and the best fixed codec on the held-out window), or without that
        evidence at the worst expert's, so that it leads only once it has paid off."""
        had = self.net is not None
        self.net, self.net_us = net, float(forward_us)

        def start(costs: np.ndarray) -> float:
            if relative_cost is None or costs.size == 0:
                return costs.max(initial=0.0)
            return costs.min() * relative_cost

        if net is not None:
            if had:  # a new version replaces the old one's column
                self.experts.pop()
                self._columns(lambda costs: costs[:-1])
            self.experts.append("net")
            self._columns(lambda costs: np.append(costs, start(costs)))
        elif had:
            self.experts.pop()
            self._columns(lambda costs: costs[:-1])

    # -- choosing -------------------------------------------------------------------------------
    def choose(self, block_size: int, node_id: str | None = None,
               probe: Callable[[], float] | float | None = None,
               features: Mapping[str, float] | None = None, net=None) -> CodecChoice:
        """The leading expert's codec for this block. ``probe`` is the probe ratio or a
        function computing it (called only if the leader reads it); without one, only experts
        that do not read it are eligible. ``net``, when given, answers for the net expert in
        place of the attached one (a canary's arm: :mod:`pakit_stream.canary`)."""
        size = int(block_size)
        lead = self._leader(size, self._eligible(probe is not None, features is not None), node_id)
        if lead is None:
            return CodecChoice.fallback(size)
        name = self.experts[lead]
        if lead < len(self.codecs):
            return CodecChoice(self.codecs[lead], name, False, 0.0)
        recent = self._recent.get(node_id) if node_id is not None else None
        probed, value = False, None
        if name == "net" or "probe" in EXPERTS.get(name, ()):
            value = probe() if callable(probe) else probe
            probed = True
        if name == "net":
            codec = (net or self.net).predict(features)["algorithm"]
            return CodecChoice(codec, name, True, self.net_us)
        pick = self._pick(self._expert_rate(name, size, recent, value))
        us = self.lookup_us + (self.probe_us if probed else 0.0)
        if pick is None:
            return CodecChoice(heuristic_codec(size), "fallback", probed, us, "fallback")
        return CodecChoice(self.codecs[pick], name, probed, us)

    def reads_probe(self, block_size: int) -> bool:
        """Whether the rule leading for blocks of this size reads the probe (or the net's
        features): a node should send them for such blocks."""
        lead = self._leader(int(block_size), self._eligible(True, True))
        return lead is not None and (self.experts[lead] == "net"
                                     or "probe" in EXPERTS.get(self.experts[lead], ()))

    def _eligible(self, has_probe: bool, has_features: bool) -> tuple[bool, ...]:
        """Which experts can answer with (or without) the probe and the net's features."""
        key = (has_probe, has_features, len(self.codecs), self.net is not None)
        ok = self._eligibility.get(key)
        if ok is None:
            ok = [True] * len(self.codecs) + [has_probe or "probe" not in f
                                              for f in EXPERTS.values()]
            if self.net is not None:
                ok.append(has_probe and has_features)
            ok = self._eligibility[key] = tuple(ok)
        return ok

    def policy(self) -> CodecPolicy:
        """The current decisions as a :class:`CodecPolicy` (cached until the next update)."""
        if self._policy is not None and self._policy_at == self.n_updates:
            return self._policy
        rules: dict[int, tuple[str, dict]] = {}
        ratios = sorted({k[2] for k in self._cells if k[0] == "sr"} |
                        {k[2] for k in self._cells if k[0] == "sp"})
        eligible = self._eligible(True, False)
        for s in sorted({k[1] for k in self._cells if k[0] == "s"}):
            size = int(round(2 ** (s / 2)))
            lead = self._leader(size, eligible)
            if lead is None:
                continue
            name = self.experts[lead]
            if lead < len(self.codecs):
                rules[s] = (name, {(): self.codecs[lead]})
                continue
            table: dict[Any, str] = {}
            feats = EXPERTS[name]
            pick = self._pick(self._expert_rate("size", size, None, None))
            by_size = self.codecs[pick] if pick is not None else heuristic_codec(size)
            if not feats:
                table[()] = by_size
            else:
                grid = [(r, p) for r in ([*ratios, -1] if "recent" in feats else [None])
                        for p in (ratios if "probe" in feats else [None])]
                for r, p in grid:
                    rv = None if r in (None, -1) else (r + 0.5) * _RATIO_STEP
                    pv = None if p is None else (p + 0.5) * _RATIO_STEP
                    pick = self._pick(self._expert_rate(name, size, rv, pv))
                    key = tuple(v for v in (r, p) if v is not None)
                    table[key] = self.codecs[pick] if pick is not None else heuristic_codec(size)
                # a bucket no block of this size fell in: the size's own estimates
                table["other"] = by_size
                no_probe = self._leader(size, self._eligible(False, False))
                table["noprobe"] = (self.codecs[no_probe] if no_probe is not None
                                    and no_probe < len(self.codecs) else by_size)
            rules[s] = (name, table)
        self._policy = CodecPolicy(rules, None, self.n_updates)
        self._policy_at = self.n_updates
        return self._policy

    # -- the guide's verbs ------------------------------------------------------------------------
    def predict_one(self, x: Mapping[str, Any]) -> str:
        return self.choose(int(x["block_size"]), x.get("node_id"), x.get("probe_ratio"),
                           x.get("features")).algorithm

    def predict(self, request: Mapping[str, Any]) -> str:
        return self.predict_one(request)

    def learn_record(self, record: Mapping[str, Any]) -> None:
        """Learn a ``block_stored`` record with ``codec_results``; others are skipped."""
        results = record.get("codec_results") or []
        costs = {r["algorithm"]: (r["compressed_size"], r["compress_us"] + r["decompress_us"])
                 for r in results}
        if costs:
            self.learn_one(record, costs)

    def recent(self, node_id: str) -> float | None:
        """The lz4 ratio of ``node_id``'s last stored block, if known."""
        return self._recent.get(node_id)

    def __getstate__(self):
        state = super().__getstate__()
        state["net"] = None  # batch models are files in the registry, attached on load
        state["_policy"] = state["_selection"] = None
        state["_policy_at"] = -1
        state["_eligibility"] = {}
        if self.net is not None:  # persist the pool without the net's column
            state["experts"] = self.experts[:-1]
            state["_scores"] = OrderedDict((k, [v[0][:-1], v[1]]) for k, v in self._scores.items())
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if "_counts" in state:  # saved when the cells were numpy arrays, their counts apart
            counts = self.__dict__.pop("_counts")
            cells: dict[tuple, _Cell] = {}
            for key, sums in self._cells.items():
                cell = cells[key] = _Cell(0)
                cell.raw, cell.comp, cell.cpu = sums.tolist()
                cell.n, cell.even = counts[key], len(set(cell.raw)) <= 1
                cell.price(self.cpu_bytes_per_us)
            self._cells, self._priced_at = cells, self.cpu_bytes_per_us
            self._scores = OrderedDict((k, [np.asarray(v[0]).tolist(), v[1]])
                                       for k, v in self._scores.items())
            self._finite = all(_finite(v[0]) for v in self._scores.values())
            self._eligibility = {}
