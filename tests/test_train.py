"""End-to-end tests of the training engine: the papermill notebook, the console script and DDP under torchrun."""
import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import time
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
    from robustnb.train import KNOBS, parameters_cell
    src = _parameters_cell()
    assert src == parameters_cell(), "nbs/train.ipynb is out of date: run robustnb.train.write_parameters_cell()"
    tree = ast.parse(src)
    assigns = [n for n in tree.body if isinstance(n, ast.AnnAssign)]
    assert len(assigns) == len(tree.body), "the parameters cell holds only annotated assignments"
    params = {n.target.id: ast.literal_eval(n.value) for n in assigns}
    cfg_fields = {f.name: f.default for f in fields(TrainConfig) if f.name != "knobs"}
    assert list(params)[:len(cfg_fields)] == list(cfg_fields), "the run-level fields, in TrainConfig's order"
    assert list(params)[len(cfg_fields):] == sorted(KNOBS), "then every knob of every registered component"
    for k, v in params.items():
        d = cfg_fields.get(k)
        assert (tuple(v) if isinstance(v, (list, tuple)) else v) == d, f"default of {k}: notebook {v!r}, TrainConfig {d!r}"
    for line in src.splitlines():  # papermill --help-notebook documents parameters from their trailing comments
        assert "  # " in line, f"parameter without a comment: {line}"


def test_papermill_help_documents_every_parameter():
    from robustnb.train import KNOBS
    out = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook", str(TRAIN_NB)],
                         capture_output=True, text=True, check=True).stdout
    for name in [f.name for f in fields(TrainConfig) if f.name != "knobs"] + sorted(KNOBS):
        assert f"  {name}:" in out, f"{name} missing from papermill --help-notebook"
    assert "peak learning rate" in out and "knob of trades 6.0" in out and "knob of entropy_sgd 20" in out


def test_cli_help_lists_every_knob_with_its_comment_and_defaults():
    from robustnb.train import KNOBS
    out = subprocess.run([shutil.which("robustnb-train"), "--help"], capture_output=True, text=True, check=True).stdout
    flat = " ".join(out.split())
    for name in KNOBS: assert f"--{name}" in out, name
    assert "knobs of the methods" in out and "knobs of the optimizers" in out and "knobs of the weight perturbations" in out
    assert "scale of the output-space noise [knob of bs 1.0, bs_at 1.0]" in flat


def test_papermill_run_writes_a_complete_run(tmp_path):
    out_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "papermill", "--start-timeout", "600", str(TRAIN_NB), str(tmp_path / "out.ipynb"), "-p", "method", "pgd_at",
           "-p", "epochs", "2", "-p", "steps", "3", "-p", "test_subset", "200", "-p", "aa_subset", "20",
           "-p", "out_dir", str(out_dir)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    files = set(os.listdir(out_dir))
    assert {"config.json", "history.jsonl", "metrics.json", "model.pt", "checkpoint.pt", "curves.png"} <= files
    cfg = json.loads((out_dir / "config.json").read_text())
    assert (cfg["method"], cfg["epochs"], cfg["steps"]) == ("pgd_at", 2, 3)
    m = json.loads((out_dir / "metrics.json").read_text())
    assert m["grad_evals_per_sample"] == 1 + 3
    assert 0 <= m["robust_acc"]["apgd-ce"] <= m["clean_acc"] <= 1    # the selection attack: official APGD-CE
    assert len((out_dir / "history.jsonl").read_text().splitlines()) == 2
    ev = json.loads((out_dir / "eval.json").read_text())  # the notebook ends with the 'quick' suite, AutoAttack included
    assert ev["suite"] == ["clean", "fgsm", "pgd20", "pgd100", "cw100", "apgd-ce", "aa_fast"]
    # the same attack on the same examples gives the same number in metrics.json's fit record and in eval.json
    assert ev["robust_acc"]["apgd-ce"] == pytest.approx(m["robust_acc"]["apgd-ce"], abs=1e-12)
    # the headline is the suite's worst case, named; metrics.json says the same
    assert m["headline"] == ev["headline"] and m["headline"]["robust_acc"] == ev["worst_case"]
    assert m["headline"]["label"] == "AutoAttack fast (APGD-CE, APGD-T), worst case of 6 attacks"
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
              "--lr", "0.05", "--eval_every", "100", "--val_attack", "pgd2", "--test_subset", "100", "--device", "cpu",
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


# ---------------------------------------------------------------- runs that fail loud (subprocess runs of the CLI)

FAST_FLAGS = dict(method="trades", steps=2, dataset="digits", epochs=2, batch_size=64, eval_subset=64, val_attack="pgd3",
                  test_subset=64, eval_suite="none", device="cpu")


def fast(**over):
    "The flags of a seconds-long CLI run on digits, with some replaced."
    return [a for k, v in {**FAST_FLAGS, **over}.items() for a in (f"--{k}", str(v))] + ["--quiet"]


FAST = fast()


def cli(*args, **kw):
    "Run robustnb-train with one torch thread; the CompletedProcess (text)."
    exe = shutil.which("robustnb-train")
    assert exe, "the robustnb-train console script is not installed (pip install -e .)"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, env=env, **kw)


def one_line_error(r, code=2):
    "A user error: the given exit status and one line `robustnb-train: error: ...` on stderr, no traceback."
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == code and len(lines) == 1 and lines[0].startswith("robustnb-train: error: "), r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    return lines[0]


def test_cli_headline_is_the_worst_case_named(tmp_path):
    r = cli(*fast(eval_suite="pgd"), "--out_dir", tmp_path / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    ev = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert f"robust {100 * ev['worst_case']:.2f} %" in last and "in-house attacks only, worst case of 4 attacks" in last
    assert "may overstate robustness" in last and m["headline"]["robust_acc"] == ev["worst_case"]


def test_diverging_run_stops_loud_and_nothing_bad_is_refused_late(tmp_path):
    r = cli(*FAST, "--lr", "1e6", "--out_dir", tmp_path / "blow")
    line = one_line_error(r, code=1)
    assert "training diverged" in line and "at epoch 1, batch" in line and "no epoch had finished" in line
    assert not (tmp_path / "blow" / "metrics.json").exists() and not (tmp_path / "blow" / "checkpoint.pt").exists()
    # refused before anything is written: non-finite numbers, a negative decay, no held-out split, no folder, bad knobs
    for bad, what in [(["--weight_decay", "nan"], "weight_decay"), (["--lr", "inf"], "lr"), (["--eps", "nan"], "eps"),
                      (["--lr_decay", "-0.1"], "lr_decay"), (["--eval_subset", "0"], "eval_subset"),
                      (["--beta", "-1"], "beta"), (["--method", "bs", "--bs_gamma", "-1"], "gamma"),
                      (["--gamma", "1"], "unrecognized arguments: --gamma"), (["--method", "pgd_at", "--beta", "1"], "not used"), (["--momentum", "nan"], "momentum"),
                      (["--alpha", "nan"], "alpha"), (["--cyclic_peak", "inf"], "cyclic_peak")]:
        out = tmp_path / f"bad_{what}"
        line = one_line_error(cli(*FAST, *bad, "--out_dir", out))
        assert what in line and not out.exists(), (bad, line)
    assert "out_dir must name a directory" in one_line_error(cli(*FAST, "--out_dir", ""))


def test_two_runs_into_one_folder_the_second_is_refused(tmp_path):
    out = tmp_path / "shared"
    exe = shutil.which("robustnb-train")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([exe, *fast(epochs=6), "--out_dir", str(out)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / ".robustnb.lock").exists() and time.time() < deadline and first.poll() is None: time.sleep(0.02)
    assert first.poll() is None, "the first run ended before the second could start"
    second = cli(*fast(method="pgd_at"), "--out_dir", out)
    line = one_line_error(second)
    assert f"in use by another run (pid {first.pid}" in line, line
    assert first.wait(300) == 0, first.stderr.read()[-3000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == "trades" and cfg["epochs"] == 6          # the first run's folder, whole
    from robustnb.runs import load_run_model
    _, snap = load_run_model(out)
    assert snap == cfg and not (out / ".robustnb.lock").exists()


def test_killed_before_first_checkpoint_resumes_with_the_same_command(tmp_path):
    out = tmp_path / "cut"
    exe = shutil.which("robustnb-train")
    args = [exe, *fast(epochs=3), "--out_dir", str(out), "--resume"]
    p = subprocess.Popen(args, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "config.json").exists() and time.time() < deadline and p.poll() is None: time.sleep(0.005)
    p.send_signal(signal.SIGKILL); p.wait()
    assert not (out / "checkpoint.pt").exists(), "the kill came too late for this test"
    assert (out / ".robustnb.lock").exists()                         # left behind by the killed run: stale
    r = cli(*fast(epochs=3), "--out_dir", out, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert len((out / "history.jsonl").read_text().splitlines()) == 3 and not list(out.glob(".*.tmp"))


def test_user_errors_are_one_line_with_status_2(tmp_path):
    done = tmp_path / "done"
    assert cli(*FAST, "--out_dir", done).returncode == 0
    assert "already holds a run" in one_line_error(cli(*FAST, "--out_dir", done))
    assert "another configuration: eps" in one_line_error(cli(*fast(eps=0.2), "--out_dir", done, "--resume"))
    (tmp_path / "corrupt").mkdir(); (tmp_path / "corrupt" / "checkpoint.pt").write_bytes(b"garbage")
    assert "corrupt" in one_line_error(cli(*FAST, "--out_dir", tmp_path / "corrupt", "--resume"))
    line = one_line_error(cli(*fast(dataset="mnist"), "--root", tmp_path / "nodata", "--out_dir", tmp_path / "m"))
    assert "data file(s) missing" in line and "robustnb-train --download" in line and not (tmp_path / "m").exists()
    bad = tmp_path / "badmnist" / "MNIST" / "raw"; bad.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (bad / f"{name}.gz").write_bytes(b"not the official file")
    assert "md5 mismatch" in one_line_error(cli(*fast(dataset="mnist"), "--root", tmp_path / "badmnist",
                                                "--out_dir", tmp_path / "m2"))
    if os.geteuid() == 0: target = Path("/sys/robustnb-test-run")   # root ignores file modes; /sys refuses it
    else:
        ro = tmp_path / "ro"; ro.mkdir(); ro.chmod(0o500); target = ro / "run"
    line = one_line_error(cli(*FAST, "--out_dir", target))
    assert "not permitted" in line or "Permission denied" in line, line


def test_papermill_explicit_default_value_wins_over_the_recipe(tmp_path):
    "-p eps 0.1 with a recipe of eps 0.3: 0.1 is the notebook's default, yet it was given, so it wins."
    root = os.environ.get("ROBUSTNB_DATA")
    if not root or not (Path(root) / "MNIST" / "raw").is_dir(): pytest.skip("needs MNIST under $ROBUSTNB_DATA")
    out_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "papermill", "--start-timeout", "600", str(TRAIN_NB), str(tmp_path / "out.ipynb"), "-p", "recipe",
           "trades_mnist_smallcnn", "-p", "eps", "0.1", "-p", "epochs", "1", "-p", "steps", "2",
           "-p", "max_train_samples", "256", "-p", "eval_subset", "32", "-p", "val_attack", "pgd2", "-p", "test_subset",
           "32", "-p", "eval_suite", "none", "-p", "out_dir", str(out_dir), "-p", "root", root]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    cfg = json.loads((out_dir / "config.json").read_text())
    assert (cfg["eps"], cfg["dataset"], cfg["beta"], cfg["recipe"]) == (0.1, "mnist", 1.0, "trades_mnist_smallcnn")


def test_evaluate_run_takes_the_threat_model_from_the_weights_snapshot(tmp_path):
    out = tmp_path / "run"
    assert cli(*fast(eps=0.1), "--out_dir", out).returncode == 0
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "eps": 0.3}))  # as another run writing into the folder would
    from robustnb.runs import evaluate_run
    ev = evaluate_run(out, suite=["pgd3"], n=32, checks=False, progress=False)
    assert ev.threat.eps == 0.1


def test_a_checkpoint_or_model_that_would_run_code_is_never_unpickled(tmp_path):
    import pickle
    marker = tmp_path / "pwned"
    class Evil:
        def __reduce__(self): return (os.system, (f"touch {marker}",))
    out = tmp_path / "evil"; out.mkdir()
    (out / "checkpoint.pt").write_bytes(pickle.dumps({"format": "robustnb-checkpoint-2", "x": Evil()}))
    assert "without running code" in one_line_error(cli(*FAST, "--out_dir", out, "--resume"))
    (out / "config.json").write_text(json.dumps({"arch": "smallcnn", "dataset": "digits"}))
    (out / "model.pt").write_bytes(pickle.dumps({"format": "robustnb-model-1", "x": Evil()}))
    from robustnb.runs import load_run_model
    with pytest.raises(ValueError, match="cannot be read safely"):
        load_run_model(out)
    assert not marker.exists()
