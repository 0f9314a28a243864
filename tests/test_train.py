"""End-to-end tests of the training engine: the papermill notebook, the console script and DDP under torchrun."""
import ast
import json
import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from robustnb.train import TrainConfig, build_parser

ROOT = Path(__file__).resolve().parents[1]
TRAIN_NB = ROOT / "nbs" / "train.ipynb"


def _parameters_cell():
    nb = json.loads(TRAIN_NB.read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "train.ipynb must have exactly one cell tagged 'parameters'"
    return "".join(cells[0]["source"])


def test_parameters_cell_mirrors_trainconfig():
    src = _parameters_cell()
    tree = ast.parse(src)
    assigns = [n for n in tree.body if isinstance(n, ast.AnnAssign)]
    assert len(assigns) == len(tree.body), "the parameters cell holds only annotated assignments"
    params = {n.target.id: ast.literal_eval(n.value) for n in assigns}
    cfg_fields = {f.name: f.default for f in fields(TrainConfig)}
    assert list(params) == list(cfg_fields), "same names, same order as TrainConfig"
    for k, v in params.items():
        d = cfg_fields[k]
        assert (tuple(v) if isinstance(v, (list, tuple)) else v) == d, f"default of {k}: notebook {v!r}, TrainConfig {d!r}"
    for line in src.splitlines():  # papermill --help-notebook documents parameters from their trailing comments
        assert "  # " in line, f"parameter without a comment: {line}"


def test_papermill_help_documents_every_parameter():
    out = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook", str(TRAIN_NB)],
                         capture_output=True, text=True, check=True).stdout
    for f in fields(TrainConfig):
        assert f"  {f.name}:" in out, f"{f.name} missing from papermill --help-notebook"
    assert "peak learning rate" in out


def test_papermill_run_writes_a_complete_run(tmp_path):
    out_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "papermill", str(TRAIN_NB), str(tmp_path / "out.ipynb"), "-p", "method", "pgd_at",
           "-p", "epochs", "2", "-p", "steps", "3", "-p", "test_subset", "200", "-p", "aa_subset", "20",
           "-p", "out_dir", str(out_dir)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    files = set(os.listdir(out_dir))
    assert {"config.json", "history.jsonl", "metrics.json", "model.pt", "checkpoint.pt", "curves.png"} <= files
    cfg = json.loads((out_dir / "config.json").read_text())
    assert (cfg["method"], cfg["epochs"], cfg["steps"]) == ("pgd_at", 2, 3)
    m = json.loads((out_dir / "metrics.json").read_text())
    assert m["grad_evals_per_sample"] == 1 + 3
    assert 0 <= m["robust_acc"]["pgd20"] <= m["clean_acc"] <= 1
    assert len((out_dir / "history.jsonl").read_text().splitlines()) == 2
    ev = json.loads((out_dir / "eval.json").read_text())  # the notebook ends with the 'quick' suite, AutoAttack included
    assert ev["suite"] == ["clean", "fgsm", "pgd20", "pgd100", "cw100", "aa_fast"]
    assert ev["attacks"]["aa_fast"]["n"] == 20 and ev["attacks"]["pgd100"]["n"] == 200
    assert ev["worst_case"] <= min(ev["robust_acc"].values()) <= ev["clean_acc"] == m["clean_acc"]
    assert (out_dir / "eval.md").read_text().startswith("**Robust accuracy**")


def test_cli_refuses_bad_input_and_writes_nothing(tmp_path):
    exe = shutil.which("robustnb-train")
    assert exe, "the robustnb-train console script is not installed (pip install -e .)"
    for bad, msg in [(["--method", "nope"], "unknown method"), (["--eps", "-1"], "eps"),
                     (["--steps", "0"], "steps"), (["--recipe", "nope"], "unknown recipe")]:
        r = subprocess.run([exe, "--out_dir", str(tmp_path / "x"), *bad], capture_output=True, text=True)
        assert r.returncode == 2 and msg in r.stderr, (bad, r.stderr)
    assert not (tmp_path / "x").exists()


def test_torchrun_matches_single_process(tmp_path):
    """Two CPU processes (gloo), each on half of every global batch, end with the weights of one process.

    LeNet-5 has neither batch norm nor dropout, whose per-process statistics and masks would differ by design."""
    exe = shutil.which("robustnb-train")
    assert exe
    common = ["--method", "standard", "--dataset", "digits", "--arch", "lenet5", "--epochs", "2", "--batch_size", "64",
              "--lr", "0.05", "--eval_every", "100", "--eval_steps", "2", "--test_subset", "100", "--device", "cpu",
              "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([exe, *common, "--out_dir", str(tmp_path / "one")], check=True, env=env,
                   capture_output=True)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "--no-python", exe, *common, "--out_dir", str(tmp_path / "two")],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    a = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 2
    assert a["history"][1]["train_loss"] < a["history"][0]["train_loss"]
    assert abs(a["history"][1]["train_loss"] - b["history"][1]["train_loss"]) < 1e-5  # statistics summed over ranks
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=1e-5, rtol=0)
    # the weights did move away from the seeded initialization (else equality would be trivial)
    from robustnb.core import set_seed
    from robustnb.models import get_model
    set_seed(0)
    init = get_model("lenet5", dataset="digits").state_dict()
    assert max((a["model"][k].float() - init[k].float()).abs().max().item() for k in init) > 1e-2
