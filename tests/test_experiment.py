"""``pakit-stream experiment``, short: broker, daemon and both groups of nodes, on this
machine's files (no ../shared). It asserts only that both groups produced every outcome and
that the figures are where the README says; the uplift itself is measured by the full run."""

from __future__ import annotations

import json
import urllib.request

import pytest

from pakit_stream.cli import main
from pakit_stream.experiment import (GROUPS, OUTCOMES, Samples, load_workload, run_experiment,
                                     summarise)


def test_a_short_experiment_produces_every_outcome_for_both_groups(tmp_path):
    workload = load_workload(max_accesses=20_000, max_blocks=60, use_shared=False)
    assert workload.sources["trace"].startswith("synthetic")
    results = run_experiment(workload, seconds=20, nodes=4, out=tmp_path / "out",
                             data_dir=tmp_path / "data", metrics_port=0, blocks=3, quiet=True)
    assert set(results["outcomes"]) == set(OUTCOMES)
    for name, entry in results["outcomes"].items():
        assert entry["treatment"] is not None and entry["control"] is not None, name
        assert entry["uplift"] == pytest.approx(entry["treatment"] - entry["control"])
        lo, hi = entry["ci95"]
        assert lo <= entry["uplift"] <= hi, name
        assert all(entry["samples"][g] > 0 for g in GROUPS)
    assert 0 <= results["hint_deadline_miss_share"] <= 1
    assert sorted(results["groups"].values()) == ["control", "control", "treatment", "treatment"]
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["outcomes"].keys() == results["outcomes"].keys()
    report = (tmp_path / "out" / "report.md").read_text()
    assert all(name in report for name in OUTCOMES) and (tmp_path / "out" / "over_time.png").exists()
    with urllib.request.urlopen(f"http://127.0.0.1:{results['metrics_port']}/metrics") as r:
        live = r.read().decode()
    for group in GROUPS:
        assert f'pakit_stream_experiment_outcome{{group="{group}",outcome="cache_hit_ratio"}}' in live


def test_summary_intervals_are_batch_means_around_the_whole_runs_uplift():
    samples = Samples()
    for t in range(300):  # treatment hits twice as often; control never
        samples.add(t / 10, "treatment", "cache_hit", t % 2 == 0)
        samples.add(t / 10, "control", "cache_hit", False)
    out = summarise(samples, [("prefetch", 1.0, False), ("peer", 60.0, True)], 30.0, blocks=3)
    hit = out["outcomes"]["cache_hit_ratio"]
    assert hit["uplift"] == pytest.approx(0.5) and hit["ci95"][0] <= 0.5 <= hit["ci95"][1]
    assert hit["overtakes_at_s"] == 0.0
    assert out["outcomes"]["fetch_success"]["treatment"] is None  # no fetch sampled
    assert out["hint_deadline_miss_share"] == 0.5


@pytest.mark.parametrize("args", [["--nodes", "3"], ["--trace", "x.bin"]])
def test_experiment_refuses_bad_flags_with_a_usage_error(args, capsys):
    assert main(["experiment", "--seconds", "1", *args]) == 2
    assert "error:" in capsys.readouterr().err
