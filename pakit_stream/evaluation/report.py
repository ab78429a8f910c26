"""What an evaluation produces: ``results.json``, a Markdown report with PNG plots, and the
README's Results section regenerated from any number of ``results.json`` files.

``results.json``::

    {"learner": "peers", "data": ["…"], "headline": {"metric": "mean_latency_ms",
     "higher_is_better": false}, "naive_baseline": "random",
     "results": {"pakit-stream": {"mean_latency_ms": …, …}, "random": {…}, …},
     "intervals": {"pakit-stream": {"mean_latency_ms": [lo, hi], …}, …},
     "seeds": [0, 1, 2], "verdict": {…}, "protocol": "…", "details": {…},
     "machine": {…}, "created": "…"}

``results`` holds means over the seeds; ``intervals`` their 95% confidence intervals (Student's
t over seeds, or Wilson's interval where a figure is one proportion); ``details.per_seed`` each
seed's own figures. The verdict compares ours with the naive and the best competing baseline
seed by seed: ``*_diff_ci95`` is the interval of the paired difference (ours − theirs), and a
comparison is ``significant`` when that interval excludes zero.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pakit_stream.evaluation.intervals import mean_interval
from pakit_stream.exceptions import DataError, UsageError

__all__ = ["Evaluation", "write", "verdict", "combine", "readme_section", "update_readme",
           "figure", "machine", "labels", "save", "OURS"]

OURS = "pakit-stream"
_BEGIN, _END = "<!-- results:begin -->", "<!-- results:end -->"


@dataclass
class Evaluation:
    learner: str
    data: list[str]
    metric: str
    higher_is_better: bool
    naive_baseline: str
    protocol: str
    results: dict[str, dict[str, Any]]
    details: dict[str, Any] = field(default_factory=dict)
    plots: list[tuple[str, str]] = field(default_factory=list)  # (caption, file name)
    notes: list[str] = field(default_factory=list)
    # methods that are references, not competitors a node could run (e.g. an oracle)
    references: tuple[str, ...] = ()
    title: str = ""  # what sets this run apart, e.g. "compression, CPU at 20 B/µs"
    #: 95% intervals of the figures: ``{method: {metric: (lo, hi)}}``
    intervals: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    #: why this run has no headline verdict (say, too few true pairs to judge), else ``None``
    no_headline: str | None = None

    def __post_init__(self) -> None:
        self.title = self.title or self.learner


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}"}


def _better(a: float, b: float, higher: bool) -> bool:
    return a > b if higher else a < b


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def combine(runs: list[Evaluation], seeds: list[int]) -> Evaluation:
    """One evaluation from the same evaluation run with several seeds: each figure's mean and
    95% interval over the seeds; each seed's figures kept in ``details["per_seed"]``; the
    first seed's details, notes and plots."""
    if not runs or len(runs) != len(seeds):
        raise UsageError("one evaluation per seed")
    first = runs[0]
    results: dict[str, dict[str, Any]] = {}
    intervals: dict[str, dict[str, tuple[float, float]]] = {}
    for method, row in first.results.items():
        results[method], intervals[method] = {}, {}
        for key, value in row.items():
            values = [r.results.get(method, {}).get(key) for r in runs]
            if all(_numeric(v) for v in values):
                results[method][key] = sum(values) / len(values)
                own = [r.intervals.get(method, {}).get(key) for r in runs]
                if len(runs) == 1 and own[0] is not None:
                    intervals[method][key] = tuple(own[0])
                else:
                    intervals[method][key] = mean_interval(values)
            else:
                results[method][key] = value
    details = dict(first.details)
    if len(runs) > 1:
        details["per_seed"] = {str(s): r.results for s, r in zip(seeds, runs)}
    notes = list(first.notes)
    if len(runs) > 1 and first.plots:
        notes.append(f"Plots show seed {seeds[0]}; tables give means over seeds "
                     f"{', '.join(map(str, seeds))} with 95% intervals.")
    return Evaluation(learner=first.learner, data=first.data, metric=first.metric,
                      higher_is_better=first.higher_is_better,
                      naive_baseline=first.naive_baseline, protocol=first.protocol,
                      results=results, details=details, plots=first.plots, notes=notes,
                      references=first.references, title=first.title, intervals=intervals,
                      seeds=list(seeds),
                      no_headline=next((r.no_headline for r in runs if r.no_headline), None))


def _paired(ev: Evaluation, other: str) -> tuple[float, float] | None:
    """95% interval of ours − ``other`` on the headline, paired by seed."""
    per_seed = ev.details.get("per_seed")
    if not per_seed or len(per_seed) < 2:
        return None
    diffs = []
    for results in per_seed.values():
        a, b = results.get(OURS, {}).get(ev.metric), results.get(other, {}).get(ev.metric)
        if not (_numeric(a) and _numeric(b)):
            return None
        diffs.append(a - b)
    return mean_interval(diffs)


def _significant(ci: tuple[float, float] | None, higher: bool) -> bool | None:
    if ci is None:
        return None
    return ci[0] > 0 if higher else ci[1] < 0


def verdict(ev: Evaluation) -> dict[str, Any]:
    """Ours against the naive baseline and against the best competing baseline (by mean); with
    several seeds, also whether each difference holds seed by seed (a paired 95% interval)."""
    score = {m: r.get(ev.metric) for m, r in ev.results.items()}
    ours, naive = score.get(OURS), score.get(ev.naive_baseline)
    valid = {m: v for m, v in score.items() if _numeric(v)}
    rivals = {m: v for m, v in valid.items() if m != OURS and m not in ev.references}
    best = (max if ev.higher_is_better else min)(rivals, key=rivals.get) if rivals else None
    out = {"metric": ev.metric, "higher_is_better": ev.higher_is_better, "ours": ours,
           "ours_ci95": ev.intervals.get(OURS, {}).get(ev.metric),
           "naive_baseline": ev.naive_baseline, "naive": naive,
           "beats_naive": (_numeric(ours) and _numeric(naive)
                           and _better(ours, naive, ev.higher_is_better)),
           "best_baseline": best, "best": rivals.get(best),
           "best_ci95": ev.intervals.get(best, {}).get(ev.metric) if best else None,
           "beats_best_baseline": (_numeric(ours) and best is not None
                                   and _better(ours, rivals[best], ev.higher_is_better)),
           "seeds": len(ev.seeds) or 1}
    if best is not None:
        ci = _paired(ev, best)
        out["best_diff_ci95"] = ci
        out["beats_best_significant"] = _significant(ci, ev.higher_is_better)
    ci = _paired(ev, ev.naive_baseline)
    out["naive_diff_ci95"] = ci
    out["beats_naive_significant"] = _significant(ci, ev.higher_is_better)
    if ev.no_headline:
        out["no_headline"] = ev.no_headline
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:,.4f}".rstrip("0").rstrip(".") if abs(v) < 10 else f"{v:,.1f}"
    return str(v)


def _fmt_ci(v: Any, ci: Any) -> str:
    """A figure with its 95% interval, when it has one of non-zero width."""
    if (ci is None or not _numeric(v) or not all(_numeric(c) for c in ci)
            or abs(ci[1] - ci[0]) <= 1e-9 * max(1.0, abs(v))):  # no spread (rounding aside)
        return _fmt(v)
    return f"{_fmt(v)} [{_fmt(float(ci[0]))}, {_fmt(float(ci[1]))}]"


def table(results: dict[str, dict[str, Any]], metric: str, higher: bool,
          columns: list[str] | None = None,
          intervals: dict[str, dict[str, Any]] | None = None) -> str:
    """A Markdown table, methods ordered by the headline metric (best first); the headline
    carries its 95% interval where ``intervals`` has one."""
    columns = columns or list(dict.fromkeys(k for r in results.values() for k in r))
    columns = [metric] + [c for c in columns if c != metric]
    intervals = intervals or {}

    def key(item):
        v = item[1].get(metric)
        ok = _numeric(v)
        return (not ok, -v if ok and higher else (v if ok else 0))

    lines = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for method, r in sorted(results.items(), key=key):
        name = f"**{method}**" if method == OURS else method
        cells = [_fmt_ci(r.get(c), intervals.get(method, {}).get(c)) if c == metric
                 else _fmt(r.get(c)) for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _verdict_text(v: dict[str, Any]) -> str:
    direction = "higher" if v["higher_is_better"] else "lower"
    if v["ours"] is None:
        return f"pakit-stream produced no `{v['metric']}` figure."
    s = ""
    if v.get("no_headline"):
        s = f"**No headline verdict**: {v['no_headline']}. "
    s += (f"pakit-stream's `{v['metric']}` ({direction} is better) is "
          f"{_fmt_ci(v['ours'], v.get('ours_ci95'))}; the naive baseline "
          f"`{v['naive_baseline']}` scores {_fmt(v['naive'])}: "
          + ("**beats it**" if v["beats_naive"] else "**does not beat it**"))
    if v["best_baseline"]:
        s += (f". Best other method: `{v['best_baseline']}` at "
              f"{_fmt_ci(v['best'], v.get('best_ci95'))} ("
              + ("beaten" if v["beats_best_baseline"] else "not beaten"))
        ci = v.get("best_diff_ci95")
        if ci is not None:
            s += (f"; ours − theirs per seed: [{_fmt(float(ci[0]))}, {_fmt(float(ci[1]))}], "
                  + ("significant" if v.get("beats_best_significant") else "not significant"))
        s += ")."
    if v.get("seeds", 1) > 1:
        s += f" Means over {v['seeds']} seeds, 95% intervals in brackets."
    return s


def write(ev: Evaluation, out: Path) -> dict[str, Any]:
    """``out/results.json`` and ``out/report.md``; returns the JSON document."""
    out.mkdir(parents=True, exist_ok=True)
    v = verdict(ev)
    doc = {"learner": ev.learner, "title": ev.title, "data": ev.data,
           "headline": {"metric": ev.metric, "higher_is_better": ev.higher_is_better},
           "naive_baseline": ev.naive_baseline, "references": list(ev.references),
           "results": ev.results, "intervals": ev.intervals, "seeds": ev.seeds,
           "verdict": v, "protocol": ev.protocol, "notes": ev.notes,
           "details": ev.details, "plots": [f for _, f in ev.plots], "machine": machine(),
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out / "results.json").write_text(json.dumps(doc, indent=2, default=float) + "\n")
    md = [f"# Evaluation: {ev.title}", "",
          "Data: " + ", ".join(f"`{d}`" for d in ev.data), "",
          f"Protocol: {ev.protocol}", "",
          f"Headline: `{ev.metric}` ({'higher' if ev.higher_is_better else 'lower'} is better).",
          "", table(ev.results, ev.metric, ev.higher_is_better, intervals=ev.intervals), "",
          "Verdict: " + _verdict_text(v), ""]
    if ev.references:
        md += ["References, not competitors: " + ", ".join(f"`{r}`" for r in ev.references), ""]
    md += [f"- {n}" for n in ev.notes] + ([""] if ev.notes else [])
    for caption, name in ev.plots:
        md += [f"## {caption}", "", f"![{caption}]({name})", ""]
    m = doc["machine"]
    md.append(f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; {doc['created']}.")
    (out / "report.md").write_text("\n".join(md) + "\n")
    return doc


def figure(width: float = 7.0, height: float = 4.2, ncols: int = 0):
    """A matplotlib figure on the non-interactive Agg backend, and its axes: one, or a list of
    ``ncols`` side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(ncols, 1), figsize=(width, height), dpi=110, squeeze=False)
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    return fig, (list(axes[0]) if ncols else axes[0][0])


def labels(ax, xlabel: str, ylabel: str, title: str, legend: bool = True, xlog: bool = False,
           ylog: bool = False) -> None:
    """Axis labels, title, legend and log scales of one plot."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if xlog:
        ax.set_xscale("log")
    if ylog:
        ax.set_yscale("log")
    if legend:
        ax.legend(fontsize=7)


def save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _read_results(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except ValueError as exc:  # not JSON, or not UTF-8
        raise DataError(f"{path}: not a results.json ({exc})") from None


def readme_section(result_files: list[Path], readme_dir: Path) -> str:
    """The README's Results section, from ``results.json`` files: per learner, one table with
    a row per run (ours, the best competing baseline, the naive one, the verdict), then each
    run's notes; the full tables are in the linked reports. File order is kept."""
    docs = [(p, _read_results(p)) for p in result_files]
    if not docs:
        raise UsageError("no results.json given")
    m = docs[0][1]["machine"]
    lines = [f"Generated by `pakit-stream results` from {len(docs)} `results.json` files; "
             f"measured on {m['cpu']} ({m['cores']} cores, Python {m['python']}). "
             "Each row is one run: every method on the same data in the same run, means over "
             "its seeds with 95% intervals in brackets; *significant* means ours beat that "
             "method seed by seed (a paired interval that excludes zero).",
             ""]
    by_learner: dict[str, list[tuple[Path, dict]]] = {}
    for path, doc in docs:
        by_learner.setdefault(doc["learner"], []).append((path, doc))
    for learner, group in by_learner.items():
        h = group[0][1]["headline"]
        direction = "higher" if h["higher_is_better"] else "lower"
        lines += [f"### {learner}: `{h['metric']}` ({direction} is better)", "",
                  "| run | data | seeds | **pakit-stream** | best other method | naive baseline "
                  "| verdict |", "|---|---|---|---|---|---|---|"]
        for path, doc in group:
            v = doc["verdict"]
            rel = os.path.relpath(path.parent / "report.md", readme_dir)
            data = ", ".join(f"`{Path(d).name}`" for d in doc["data"])
            best = (f"{v['best_baseline']} {_fmt_ci(v['best'], v.get('best_ci95'))}"
                    if v.get("best_baseline") else "–")
            lines.append(f"| [{doc.get('title') or learner}]({rel}) | {data} | {v.get('seeds', 1)} "
                         f"| {_fmt_ci(v['ours'], v.get('ours_ci95'))} | {best} "
                         f"| {v['naive_baseline']} {_fmt(v['naive'])} | {_short_verdict(v)} |")
        lines.append("")
        for path, doc in group:  # (which seed the plots show is said in each report)
            notes = [n for n in doc.get("notes", []) if not n.startswith("Plots show seed")]
            if notes:
                lines += [f"*{doc.get('title') or learner}*:", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines).rstrip() + "\n"


def _short_verdict(v: dict[str, Any]) -> str:
    if v.get("no_headline"):
        return f"no headline: {v['no_headline']}"
    if v["ours"] is None:
        return "no figure"
    if v["beats_best_baseline"]:
        sig = v.get("beats_best_significant")
        return "**beats every baseline**" + ("" if sig is None else
                                               (", significant" if sig else ", not significant"))
    if v["beats_naive"]:
        return f"beats naive, **not** {v['best_baseline']}"
    return "**beats no baseline**"


def update_readme(readme: Path, section: str) -> None:
    """Replace what lies between the results markers of ``readme`` with ``section``."""
    text = readme.read_text()
    pattern = re.compile(re.escape(_BEGIN) + r".*?" + re.escape(_END), re.S)
    if not pattern.search(text):
        raise DataError(f"{readme}: no '{_BEGIN}' ... '{_END}' markers")
    readme.write_text(pattern.sub(lambda _: f"{_BEGIN}\n{section}{_END}", text))
