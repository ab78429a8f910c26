"""``pakit-stream evaluate``: each learner on real data, against its baselines, in one run.

Every learner module has a ``run(paths, out, **options)`` that returns an
:class:`~pakit_stream.evaluation.report.Evaluation`; :func:`evaluate` writes it as
``results.json`` and ``report.md`` (plots beside them). Online learners are scored
prequentially (each prediction before its outcome is learned), batch nets on data held out
in time or by file; nothing is scored on what it was trained on.

An evaluation with anything random in it (draws, weight init, orders) runs once per seed
(``seeds``, three by default) and reports each figure's mean with its 95% interval; a learner
module whose evaluation has no randomness sets ``SEEDED = False`` and runs once. A module's
``finish(evaluation)``, if it has one, then judges goals on the combined figures.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pakit_stream.evaluation.report import (OURS, Evaluation, combine, readme_section,
                                           update_readme, write)
from pakit_stream.exceptions import UsageError

__all__ = ["LEARNERS", "DEFAULT_SEEDS", "evaluate", "Evaluation", "OURS", "readme_section",
           "update_readme"]

LEARNERS = ("compression", "prefetch", "peers", "gossip", "dedup")
DEFAULT_SEEDS = (0, 1, 2)


def evaluate(learner: str, paths: list[Path], out: Path, *,
             seeds: Sequence[int] = DEFAULT_SEEDS, **options: Any) -> dict[str, Any]:
    """Run ``learner``'s evaluation on ``paths`` once per seed; write ``out/results.json`` and
    ``out/report.md`` (means and 95% intervals over the seeds); return the results document."""
    if learner not in LEARNERS:
        raise UsageError(f"unknown learner {learner!r}; one of {', '.join(LEARNERS)}")
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"no such data: {', '.join(missing)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    module = importlib.import_module(f"pakit_stream.evaluation.{learner}")
    seeds = list(seeds) if getattr(module, "SEEDED", True) else list(seeds)[:1]
    if not seeds:
        raise UsageError("at least one seed")
    paths = [Path(p) for p in paths]
    runs = [module.run(paths, out, seed=seed, plots=i == 0, **options)
            for i, seed in enumerate(seeds)]
    ev = combine(runs, seeds)
    if hasattr(module, "finish"):  # judgements that must rest on the combined figures
        module.finish(ev)
    return write(ev, out)
