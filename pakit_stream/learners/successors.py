"""Which block comes next: a bounded first-order Markov successor table, learned per access.

For each node the last block it read is remembered; each new access counts one transition
``previous -> current``. Each block keeps at most ``max_successors`` successors (the weakest is
dropped when a new one arrives), and at most ``capacity`` blocks are tracked, least recently
used evicted. It is the prefetcher that serves before any batch model exists.

>>> table = SuccessorTable()
>>> for block in ["a", "b", "c", "a", "b", "d", "a", "b", "c"]:
...     _ = table.observe("node-1", block)
>>> table.successors("a"), table.successors("b", k=2)
(['b'], ['c', 'd'])
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

from pakit_stream.base_model import ModelConfig, OnlineModel

__all__ = ["SuccessorTable"]


class SuccessorTable(OnlineModel):
    default_name = "successor_table"

    def __init__(self, model_config: ModelConfig | None = None, *, capacity: int = 200_000,
                 max_successors: int = 8, max_nodes: int = 100_000) -> None:
        super().__init__(model_config)
        self.capacity, self.max_successors, self.max_nodes = capacity, max_successors, max_nodes
        self._next: OrderedDict[str, dict[str, int]] = OrderedDict()
        self._last: OrderedDict[str, str] = OrderedDict()

    def observe(self, node_id: str, block: str, k: int = 1) -> bool | None:
        """Count ``previous -> block`` for ``node_id``.

        Returns whether ``block`` was among the top-``k`` successors predicted before this access
        (``None`` when there was no prediction, or ``k`` is 0): the prequential signal of the
        table's quality.
        """
        last = self._last
        prev = last.get(node_id)
        last[node_id] = block
        last.move_to_end(node_id)
        if len(last) > self.max_nodes:
            last.popitem(last=False)
        if prev is None or prev == block:
            return None
        succ = self._next.get(prev) if k else None
        if not succ:
            hit = None
        elif k == 1:
            hit = max(succ, key=succ.__getitem__) == block
        else:
            hit = block in sorted(succ, key=lambda b: -succ[b])[:k]
        self.add_transition(prev, block)
        return hit

    def add_transition(self, prev: str, block: str, count: int = 1) -> None:
        """Count ``prev -> block`` ``count`` times (bounded as described above)."""
        table = self._next
        succ = table.get(prev)
        if succ is None:
            succ = table[prev] = {}
            if len(table) > self.capacity:
                table.popitem(last=False)
        else:
            table.move_to_end(prev)
        if block in succ:
            succ[block] += count
        else:
            if len(succ) >= self.max_successors:
                del succ[min(succ, key=succ.__getitem__)]
            succ[block] = count
        self.n_updates += 1

    def ranked(self, block: str, k: int = 5) -> tuple[list[tuple[str, int]], int]:
        """The ``k`` most counted successors of ``block`` with their counts, and the count of
        every transition out of it kept."""
        succ = self._next.get(block)
        if not succ:
            return [], 0
        # most counted first; equal counts in the order they were first seen (a stable sort)
        return sorted(succ.items(), key=itemgetter(1), reverse=True)[:k], sum(succ.values())

    def successors(self, block: str, k: int = 5) -> list[str]:
        return [b for b, _ in self.ranked(block, k)[0]]

    def learn_record(self, record: Mapping[str, Any]) -> None:
        self.observe(record.get("node_id", "-"), record["block_hash"])

    def learn_sequence(self, sequence: Sequence[str], node_id: str = "-") -> None:
        for block in sequence:
            self.observe(node_id, block)

    def predict(self, request: Mapping[str, Any]) -> list[str]:
        recent = request.get("recent_accesses") or []
        return self.successors(recent[-1], int(request.get("k", 5))) if recent else []

    def __len__(self) -> int:
        return len(self._next)
