"""What comes next in a sequence of tokens: a GRU, with a Markov fallback.

The guide's prefetch engine: trained on sequences of block ids it names the next block; the
daemon trains it on the **steps** between reads of one object
(:func:`~pakit_stream.learners.prefetch.delta_sequences`), so that it names the next step, which
generalises to blocks it never saw. The vocabulary is the ``max_vocab_size - 1`` most frequent
tokens of the training sequences; id 0 stands for every other token (and for padding). The net
reads the last ``context_len`` tokens and scores every vocabulary token as the next one. When
there is no net yet, or the last token is outside the vocabulary, a first-order successor table
learned on the same sequences answers instead.

>>> engine = PrefetchEngine(max_vocab_size=50)
>>> seqs = [["a", "b", "c", "d"] * 30, ["x", "y", "z"] * 30]
>>> _ = engine.train(seqs, TrainingConfig(num_epochs=40, early_stopping_patience=40))
>>> engine.predict({"recent_accesses": ["a", "b"], "k": 1}), engine.predict({"recent_accesses": ["x"], "k": 1})
(['c'], ['y'])
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from pakit_stream.batch.base import BatchModel
from pakit_stream.exceptions import DataError
from pakit_stream.learners.successors import SuccessorTable
from pakit_stream.training.config import TrainingConfig
from pakit_stream.training.dataset import TrainingDataset

__all__ = ["PrefetchEngine"]


class _Net(nn.Module):
    def __init__(self, vocab: int, embed: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed, padding_idx=0)
        self.gru = nn.GRU(embed, hidden, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x):
        _, h = self.gru(self.embed(x))
        return self.out(self.drop(h[-1]))


class PrefetchEngine(BatchModel):
    default_name = "prefetch_engine"

    def __init__(self, model_config=None, max_vocab_size: int = 10_000, context_len: int = 8,
                 embed_dim: int = 64, hidden_dim: int = 128, dropout: float = 0.1) -> None:
        super().__init__(model_config)
        self.max_vocab_size, self.context_len = max_vocab_size, context_len
        self.embed_dim, self.hidden_dim, self.dropout = embed_dim, hidden_dim, dropout
        self.vocab: list[str] = ["<other>"]
        self._index: dict[str, int] = {}
        self.fallback = SuccessorTable(capacity=max(10 * max_vocab_size, 1000))

    # data ----------------------------------------------------------------------------------
    def _ids(self, blocks: Sequence[str]) -> list[int]:
        return [self._index.get(b, 0) for b in blocks]

    def _context(self, ids: Sequence[int]) -> list[int]:
        ctx = list(ids[-self.context_len:])
        return [0] * (self.context_len - len(ctx)) + ctx

    def examples(self, sequences: Sequence[Sequence[str]]) -> TrainingDataset:
        """``(context ids, next id)`` pairs; next blocks outside the vocabulary are skipped."""
        out = TrainingDataset()
        for seq in sequences:
            ids = self._ids(seq)
            for t in range(1, len(ids)):
                if ids[t]:
                    out.samples.append((self._context(ids[:t]), ids[t]))
        return out

    def prepare(self, train_data, hidden_dim: int | None = None, dropout: float | None = None):
        self.hidden_dim = hidden_dim or self.hidden_dim
        self.dropout = self.dropout if dropout is None else dropout
        self.net = _Net(len(self.vocab), self.embed_dim, self.hidden_dim, self.dropout)
        return self

    def encode(self, data) -> tuple[torch.Tensor, torch.Tensor]:
        samples = list(data)
        return (torch.tensor([c for c, _ in samples], dtype=torch.long).reshape(-1, self.context_len),
                torch.tensor([y for _, y in samples], dtype=torch.long))

    # training ------------------------------------------------------------------------------
    def train(self, sequences: Sequence[Sequence[str]],
              training_config: TrainingConfig | None = None, val_fraction: float = 0.1
              ) -> dict[str, Any]:
        """Build the vocabulary, learn the fallback table, fit the GRU. The last
        ``val_fraction`` of each sequence is held out for early stopping (time order)."""
        from pakit_stream.training.trainer import ModelTrainer

        counts = Counter(b for seq in sequences for b in seq)
        self.vocab = ["<other>"] + [b for b, _ in counts.most_common(self.max_vocab_size - 1)]
        self._index = {b: i for i, b in enumerate(self.vocab) if i}
        heads, tails = [], []
        for seq in sequences:
            cut = max(1, int(len(seq) * (1 - val_fraction)))
            heads.append(seq[:cut])
            tails.append(seq[max(0, cut - self.context_len):])
            self.fallback.learn_sequence(seq[:cut], node_id=str(id(seq)))
        train, val = self.examples(heads), self.examples(tails)
        if not len(train):
            raise DataError("sequences too short to learn from")
        return ModelTrainer(training_config or TrainingConfig(num_epochs=20)).train(self, train, val)

    # answering -----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, request: Mapping[str, Any]) -> list[str]:
        """Top-k likely next blocks after ``recent_accesses`` (most recent last)."""
        recent = list(request.get("recent_accesses") or [])
        k = int(request.get("k", 5))
        if not recent:
            return []
        if self.net is None or recent[-1] not in self._index:
            return self.fallback.successors(recent[-1], k)
        self.net.eval()
        x = torch.tensor([self._context(self._ids(recent))], dtype=torch.long, device=self.device)
        scores = self.net(x)[0]
        scores[0] = float("-inf")  # never propose "some other block"
        top = torch.topk(scores, min(k, len(self.vocab) - 1)).indices.tolist()
        return [self.vocab[i] for i in top]

    def _describe(self) -> dict[str, Any]:
        return {"vocab": self.vocab, "context_len": self.context_len, "embed_dim": self.embed_dim,
                "hidden_dim": self.hidden_dim, "dropout": self.dropout,
                "max_vocab_size": self.max_vocab_size,
                "successors": {b: self.fallback.successors(b, 3) for b in self.vocab[1:]}}

    def _rebuild(self, meta: dict[str, Any]) -> None:
        self.vocab = meta["vocab"]
        self._index = {b: i for i, b in enumerate(self.vocab) if i}
        self.context_len, self.embed_dim = meta["context_len"], meta["embed_dim"]
        self.hidden_dim, self.dropout = meta["hidden_dim"], meta["dropout"]
        self.max_vocab_size = meta["max_vocab_size"]
        self.net = _Net(len(self.vocab), self.embed_dim, self.hidden_dim, self.dropout)
        self.fallback = SuccessorTable(capacity=max(10 * self.max_vocab_size, 1000))
        for block, succ in meta.get("successors", {}).items():
            for rank, nxt in enumerate(succ):  # keep their order: the first counts most
                self.fallback.add_transition(block, nxt, len(succ) - rank)
