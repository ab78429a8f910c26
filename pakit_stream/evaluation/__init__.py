"""``pakit-stream evaluate``: each learner on real data, against its baselines, in one run.

Every learner module has a ``run(paths, out, **options)`` that returns an
:class:`~pakit_stream.evaluation.report.Evaluation`; :func:`evaluate` writes it as
``results.json`` and ``report.md`` (plots beside them). Online learners are scored
prequentially (each prediction before its outcome is learned), batch nets on data held out
in time or by file; nothing is scored on what it was trained on.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from pakit_stream.evaluation.report import OURS, Evaluation, readme_section, update_readme, write

__all__ = ["LEARNERS", "evaluate", "Evaluation", "OURS", "readme_section", "update_readme"]

LEARNERS = ("compression", "prefetch", "peers", "gossip", "dedup")


def evaluate(learner: str, paths: list[Path], out: Path, **options: Any) -> dict[str, Any]:
    """Run ``learner``'s evaluation on ``paths``; write ``out/results.json`` and
    ``out/report.md``; return the results document."""
    if learner not in LEARNERS:
        raise ValueError(f"unknown learner {learner!r}; one of {', '.join(LEARNERS)}")
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"no such data: {', '.join(missing)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    module = importlib.import_module(f"pakit_stream.evaluation.{learner}")
    return write(module.run([Path(p) for p in paths], out, **options), out)
