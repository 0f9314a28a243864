"""Tests of robustnb.runs: evaluating a run directory writes eval.json and eval.md next to the run's files, and the
cross-method comparison reads them."""
import json

import pytest

from robustnb.runs import EVAL_JSON, EVAL_MD, METRICS_FILE, compare, evaluate_run


def test_evaluate_run_and_compare(tmp_path, one_thread):
    from robustnb.train import fit, make_config  # runs sits below train: only the test imports it
    runs = [tmp_path / "standard", tmp_path / "trades"]
    for method, d in zip(("standard", "trades"), runs):
        knobs = dict(steps=3) if method == "trades" else {}   # a knob the method does not take is refused
        fit(make_config(method=method, epochs=1, **knobs, out_dir=str(d), test_subset=60), progress=False)
    for d, suite, checks in zip(runs, ("pgd", ["pgd20"]), (True, False)):
        ev = evaluate_run(d, suite=suite, n=60, check_n=30, checks=checks, progress=False)
        saved = json.loads((d / EVAL_JSON).read_text())
        metrics = json.loads((d / METRICS_FILE).read_text())
        assert saved["n"] == 60 and saved["method"] == d.name and saved["threat"]["eps"] == metrics["config"]["eps"]
        assert saved["clean_acc"] == pytest.approx(metrics["clean_acc"])   # the same test examples, the same model
        assert 0 <= saved["worst_case"] <= min(saved["robust_acc"].values()) <= saved["clean_acc"] <= 1
        assert [c["name"] for c in saved["checks"]][:2] == (["mode", "logits"] if checks else [])
        md = (d / EVAL_MD).read_text()
        assert f"{100 * ev.worst.accuracy:.2f}" in md and ("Gradient-masking checks" in md) == checks
        assert not list(d.glob(".*.tmp"))                                   # atomic writes leave nothing behind
    table, fig = compare(runs, out=tmp_path / "cmp.png")
    assert fig == tmp_path / "cmp.png" and fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = [l for l in table.splitlines() if l.startswith("| ")]
    assert len(lines) == 3 and "| standard | standard |" in lines[1] and "| trades | trades |" in lines[2]
    with pytest.raises(FileNotFoundError, match="run directory"):
        evaluate_run(tmp_path / "nothing")
