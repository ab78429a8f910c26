"""What an evaluation produces: ``results.json``, a Markdown report with PNG plots, and the
README's Results section regenerated from any number of ``results.json`` files.

``results.json``::

    {"learner": "peers", "data": ["…"], "headline": {"metric": "mean_latency_ms",
     "higher_is_better": false}, "naive_baseline": "random",
     "results": {"pakit-stream": {"mean_latency_ms": …, …}, "random": {…}, …},
     "verdict": {…}, "protocol": "…", "details": {…}, "machine": {…}, "created": "…"}
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

__all__ = ["Evaluation", "write", "verdict", "readme_section", "update_readme", "figure",
           "machine", "labels", "save", "OURS"]

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


def verdict(ev: Evaluation) -> dict[str, Any]:
    """Ours against the naive baseline and against the best competing baseline."""
    score = {m: r.get(ev.metric) for m, r in ev.results.items()}
    ours, naive = score.get(OURS), score.get(ev.naive_baseline)
    valid = {m: v for m, v in score.items()
             if isinstance(v, (int, float)) and math.isfinite(v)}
    rivals = {m: v for m, v in valid.items() if m != OURS and m not in ev.references}
    best = (max if ev.higher_is_better else min)(rivals, key=rivals.get) if rivals else None
    out = {"metric": ev.metric, "higher_is_better": ev.higher_is_better, "ours": ours,
           "naive_baseline": ev.naive_baseline, "naive": naive,
           "beats_naive": (ours is not None and naive is not None
                           and _better(ours, naive, ev.higher_is_better)),
           "best_baseline": best, "best": rivals.get(best),
           "beats_best_baseline": (ours is not None and best is not None
                                   and _better(ours, rivals[best], ev.higher_is_better))}
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


def table(results: dict[str, dict[str, Any]], metric: str, higher: bool,
          columns: list[str] | None = None) -> str:
    """A Markdown table, methods ordered by the headline metric (best first)."""
    columns = columns or list(dict.fromkeys(k for r in results.values() for k in r))
    columns = [metric] + [c for c in columns if c != metric]

    def key(item):
        v = item[1].get(metric)
        ok = isinstance(v, (int, float)) and math.isfinite(v)
        return (not ok, -v if ok and higher else (v if ok else 0))

    lines = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for method, r in sorted(results.items(), key=key):
        name = f"**{method}**" if method == OURS else method
        lines.append(f"| {name} | " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _verdict_text(v: dict[str, Any]) -> str:
    direction = "higher" if v["higher_is_better"] else "lower"
    if v["ours"] is None:
        return f"pakit-stream produced no `{v['metric']}` figure."
    s = (f"pakit-stream's `{v['metric']}` ({direction} is better) is {_fmt(v['ours'])}; "
         f"the naive baseline `{v['naive_baseline']}` scores {_fmt(v['naive'])}: "
         + ("**beats it**" if v["beats_naive"] else "**does not beat it**"))
    if v["best_baseline"]:
        s += (f". Best other method: `{v['best_baseline']}` at {_fmt(v['best'])} ("
              + ("beaten" if v["beats_best_baseline"] else "not beaten") + ").")
    return s


def write(ev: Evaluation, out: Path) -> dict[str, Any]:
    """``out/results.json`` and ``out/report.md``; returns the JSON document."""
    out.mkdir(parents=True, exist_ok=True)
    v = verdict(ev)
    doc = {"learner": ev.learner, "title": ev.title, "data": ev.data,
           "headline": {"metric": ev.metric, "higher_is_better": ev.higher_is_better},
           "naive_baseline": ev.naive_baseline, "references": list(ev.references),
           "results": ev.results, "verdict": v, "protocol": ev.protocol, "notes": ev.notes,
           "details": ev.details, "plots": [f for _, f in ev.plots], "machine": machine(),
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out / "results.json").write_text(json.dumps(doc, indent=2, default=float) + "\n")
    md = [f"# Evaluation: {ev.title}", "",
          "Data: " + ", ".join(f"`{d}`" for d in ev.data), "",
          f"Protocol: {ev.protocol}", "",
          f"Headline: `{ev.metric}` ({'higher' if ev.higher_is_better else 'lower'} is better).",
          "", table(ev.results, ev.metric, ev.higher_is_better), "",
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


def readme_section(result_files: list[Path], readme_dir: Path) -> str:
    """The README's Results section, from ``results.json`` files (their order is kept)."""
    docs = [(p, json.loads(p.read_text())) for p in result_files]
    if not docs:
        raise ValueError("no results.json given")
    m = docs[0][1]["machine"]
    lines = [f"Generated by `pakit-stream results` from {len(docs)} `results.json` files; "
             f"measured on {m['cpu']} ({m['cores']} cores, Python {m['python']}). "
             "Each row is one method on the same data in the same run; **pakit-stream** is ours.",
             ""]
    for path, doc in docs:
        h = doc["headline"]
        v = doc["verdict"]
        rel = os.path.relpath(path.parent / "report.md", readme_dir)
        lines += [f"### {doc.get('title') or doc['learner']}", "",
                  "Data: " + ", ".join(f"`{d}`" for d in doc["data"]) + f". [Full report]({rel}).",
                  "", f"Protocol: {doc['protocol']}", ""]
        keep = [h["metric"]] + [k for k in _summary_columns(doc) if k != h["metric"]]
        rows = {meth: {k: r.get(k) for k in keep} for meth, r in doc["results"].items()}
        lines += [table(rows, h["metric"], h["higher_is_better"], keep), "",
                  _verdict_text(v), ""]
        lines += [f"- {n}" for n in doc.get("notes", [])] + ([""] if doc.get("notes") else [])
    return "\n".join(lines).rstrip() + "\n"


def _summary_columns(doc: dict[str, Any]) -> list[str]:
    first = next(iter(doc["results"].values()))
    return list(doc.get("details", {}).get("summary_columns") or first)[:6]


def update_readme(readme: Path, section: str) -> None:
    """Replace what lies between the results markers of ``readme`` with ``section``."""
    text = readme.read_text()
    pattern = re.compile(re.escape(_BEGIN) + r".*?" + re.escape(_END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme}: no '{_BEGIN}' ... '{_END}' markers")
    readme.write_text(pattern.sub(lambda _: f"{_BEGIN}\n{section}{_END}", text))
