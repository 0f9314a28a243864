"""The composable training step and the component registries, end to end: a method of one's own through `fit` and the
CLI, a closure optimizer that draws k minibatches per step (counted, checkpointed, resumed exactly, distributed),
SyncBatchNorm, old run directories, and the rule that one name means one thing. Runs that register plugins happen in
subprocesses, so the registries of this test process stay the built-in ones."""
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import robustnb.train as T

TESTS = Path(__file__).resolve().parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
SMALL = dict(dataset="digits", batch_size=64, max_train_samples=640, eval_subset=32, val_attack="pgd2", test_subset=32,
             eval_suite="none", device="cpu")


def flags(**kw):
    return [a for k, v in kw.items() for a in (f"--{k}", str(v))]


def python(code: str, **kw):
    "Run `code` in a fresh interpreter (with tests/ on the path); the CompletedProcess."
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=ENV, **kw)


def cli(*args):
    return subprocess.run([shutil.which("robustnb-train"), *map(str, args)], capture_output=True, text=True, env=ENV)


# ---------------------------------------------------------------- a method of one's own: one module, no trainer edit

def test_a_toy_method_from_a_test_module_trains_through_fit_and_the_cli(tmp_path):
    r = python(f"""
        import json, robustnb.train as T
        cfg = T.make_config(plugins="toy_components", method="toy", toy_scale=0.5, epochs=1, out_dir={str(tmp_path / 'fit')!r},
                            **{SMALL!r})
        run = T.fit(cfg, progress=False)
        print(json.dumps(run.history[-1]))""")
    assert r.returncode == 0, r.stderr[-3000:]
    h = json.loads(r.stdout.strip().splitlines()[-1])
    assert h["toy_scale"] == 0.5 and h["passes_per_sample"] == h["grad_evals_per_sample"] == 3
    cfg = json.loads((tmp_path / "fit" / "config.json").read_text())
    assert (cfg["method"], cfg["toy_scale"], cfg["steps"], cfg["plugins"]) == ("toy", 0.5, 2, "toy_components")
    out = tmp_path / "cli"
    r = cli("--plugins", "toy_components", "--method", "toy", "--toy_scale", "0.25", "--epochs", "1", *flags(**SMALL),
            "--out_dir", out, "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["toy_scale"] == 0.25
    h = cli("--plugins", "toy_components", "--help").stdout
    assert "--toy_scale" in h and "factor on the training loss [knob of toy 1.0]" in " ".join(h.split())
    bad = cli("--plugins", "toy_components", "--method", "toy", "--toy_scale", "-1", "--out_dir", tmp_path / "bad")
    assert bad.returncode == 2 and "scale must be a finite number > 0" in bad.stderr and not (tmp_path / "bad").exists()
    assert "cannot import 'no_such_module'" in cli("--plugins", "no_such_module").stderr


# ---------------------------------------------------------------- a closure optimizer: k fresh minibatches per step

def test_a_closure_optimizer_draws_k_batches_per_step_and_its_passes_are_counted(tmp_path):
    r = python(f"""
        import json, robustnb.train as T
        run = T.fit(T.make_config(plugins="toy_components", method="trades", steps=2, optimizer="stub_sgd", stub_k=3,
                                  epochs=2, out_dir={str(tmp_path / 'run')!r}, **{SMALL!r}), progress=False)
        print(json.dumps(run.history))""")
    assert r.returncode == 0, r.stderr[-3000:]
    hist = json.loads(r.stdout.strip().splitlines()[-1])
    for h in hist:   # 10 minibatches of 64 per epoch: 3 steps of 3 (the tenth does not fill a step)
        assert (h["steps"], h["closure_calls"]) == (3, 3)
        assert h["passes_per_sample"] == h["grad_evals_per_sample"] == 2 + 2
    refused = python("""
        import robustnb.train as T
        try: T.make_config(plugins="toy_components", optimizer="stub_sgd", amp="fp16")
        except ValueError as e: print(e)""")
    assert "cannot be used with optimizer stub_sgd, which calls its closure several times" in refused.stdout


def test_resume_with_a_closure_optimizer_and_awp_is_exact(tmp_path):
    "Kill after epoch 2 (an exception from the epoch callback), resume: the same weights and history as straight through."
    r = python(f"""
        import json, torch, robustnb.train as T
        kw = dict(plugins="toy_components", method="trades", steps=2, optimizer="stub_sgd", stub_k=2, perturbation="awp",
                  awp_gamma=0.01, epochs=3, **{SMALL!r})
        full = T.fit(T.make_config(**kw, out_dir={str(tmp_path / 'full')!r}), progress=False)
        class Killed(Exception): pass
        def kill(rec):
            if rec["epoch"] == 2: raise Killed()
        try: T.fit(T.make_config(**kw, out_dir={str(tmp_path / 'cut')!r}), progress=False, on_epoch_end=kill)
        except Killed: pass
        resumed = T.fit(T.make_config(**kw, out_dir={str(tmp_path / 'cut')!r}, resume=True), progress=False)
        strip = lambda hs: [{{k: v for k, v in h.items() if k not in ("epoch_time_s", "images_per_s")}} for h in hs]
        assert strip(full.history) == strip(resumed.history), (full.history, resumed.history)
        for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()): assert torch.equal(a, b)
        print("exact", full.history[-1]["grad_evals_per_sample"], full.history[-1]["passes_per_sample"])""")
    assert r.returncode == 0, r.stderr[-3000:]
    word, declared, counted = r.stdout.split()[-3:]
    assert word == "exact" and float(declared) == float(counted) == 4 + 2   # TRADES-2 and AWP's proxy step on its outer loss


def _torchrun(args, out):
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--no-python",
                        shutil.which("robustnb-train"), *args, "--out_dir", str(out)], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(out / "checkpoint.pt", weights_only=True)


@pytest.mark.parametrize("opt", [["--optimizer", "stub_sgd", "--stub_k", "2"],
                                 ["--optimizer", "entropy_sgd", "--esgd_L", "2", "--esgd_noise", "0", "--weight_decay", "5e-4"]],
                         ids=["stub_sgd", "entropy_sgd"])
def test_two_processes_equal_one_with_a_closure_optimizer(tmp_path, opt):
    common = ["--plugins", "toy_components", "--method", "standard", "--arch", "lenet5", *opt, "--epochs", "2",
              "--eval_every", "100", *flags(**SMALL), "--quiet"]
    assert cli(*common, "--out_dir", tmp_path / "one").returncode == 0
    a = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    b = _torchrun(common, tmp_path / "two")
    assert a["history"][1]["steps"] == b["history"][1]["steps"] == 5
    for k in a["model"]: torch.testing.assert_close(a["model"][k], b["model"][k], atol=1e-5, rtol=0)


def test_sync_batchnorm_is_refused_on_the_cpu():
    with pytest.raises(ValueError, match="sync_bn needs CUDA devices"): T.make_config(sync_bn=True, device="cpu")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices (SyncBatchNorm runs on GPUs only)")
def test_sync_batchnorm_makes_two_processes_equal_one_with_batch_norm(tmp_path):
    "ResNet-20 trains with batch statistics: only with SyncBatchNorm are they those of the global batch."
    common = ["--method", "standard", "--arch", "resnet20", "--epochs", "1", "--eval_every", "100",
              *flags(**{**SMALL, "device": "cuda"}), "--quiet"]
    assert cli(*common, "--out_dir", tmp_path / "one").returncode == 0
    a = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)["model"]
    synced = _torchrun([*common, "--sync_bn", "true"], tmp_path / "sync")["model"]
    local = _torchrun(common, tmp_path / "local")["model"]
    gap = lambda b: max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())
    assert gap(synced) < 1e-4 < gap(local), (gap(synced), gap(local))


# ---------------------------------------------------------------- run directories of robustnb's first version

def _as_wave1(ck_path: Path):
    "Rewrite a checkpoint the way robustnb's first version wrote it (pickled RNG states, one flat config)."
    ck = torch.load(ck_path, weights_only=True)
    c = ck["config"]
    old = {k: v for k, v in c.items() if k in T._RUN_FIELDS and k not in ("val_attack", "perturbation", "no_decay_bn_bias",
                                                                            "sync_bn", "plugins", "download")}
    old.update(alpha=None, steps=c.get("steps"), beta=c.get("beta", 6.0), gamma=1.0, bs_points=1, attack_mode="eval",
               plus_drop=0.2, plus_pgd_epochs=0, momentum=c["momentum"], weight_decay=c["weight_decay"], eval_steps=2)
    rng = ck["rng"]
    ck.update(format="robustnb-checkpoint-1", config=old, method=None,
              rng=dict(python=(rng["python_version"], tuple(int(v) for v in rng["python"].tolist()), rng["python_gauss"]),
                       numpy=(rng["numpy_kind"], rng["numpy"].numpy().astype(np.uint32), rng["numpy_pos"],
                              rng["numpy_has_gauss"], rng["numpy_cached"]), torch=rng["torch"]))
    for k in ("perturbation", "resumes"): ck.pop(k)
    torch.save(ck, ck_path)
    (ck_path.parent / "config.json").write_text(json.dumps(old))
    return old


def test_a_wave1_run_directory_is_refused_with_why_then_resumes_after_upgrade(tmp_path):
    out = tmp_path / "old"
    args = lambda epochs, *extra: ["--method", "trades", "--steps", "2", *flags(**{**SMALL, "epochs": epochs}),
                                   "--out_dir", out, "--quiet", *extra]
    assert cli(*args(1)).returncode == 0
    old = _as_wave1(out / "checkpoint.pt")
    r = cli(*args(2, "--resume"))
    assert r.returncode == 2 and "first format (robustnb-checkpoint-1)" in r.stderr and "upgrade_checkpoint" in r.stderr
    T.upgrade_checkpoint(out / "checkpoint.pt")      # the owner trusts the folder: converted once, safely loadable after
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["config"]["val_attack"] == "pgd2" and ck["config"]["beta"] == old["beta"] and "gamma" not in ck["config"]
    r = cli(*args(2, "--resume"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert [json.loads(l)["epoch"] for l in (out / "history.jsonl").read_text().splitlines()] == [1, 2]


# ---------------------------------------------------------------- one name, one meaning

def test_no_knob_name_means_two_things_anywhere():
    from robustnb.core import SHARED_KNOBS, Method
    assert not set(T.KNOBS) & set(T._RUN_FIELDS)
    for name, decl in T.KNOBS.items():
        assert len({k.annotation for k in decl}) == 1, (name, decl)
        if name not in SHARED_KNOBS: assert len({k.doc for k in decl}) == 1, (name, decl)
    for name, r in T.RECIPES.items():          # recipes speak the same names
        assert set(r) <= set(T._RUN_FIELDS) | set(T.KNOBS), (name, set(r) - set(T._RUN_FIELDS) - set(T.KNOBS))
    class Clash(Method):
        "Declares bs_gamma with another meaning than Backward Smoothing's."
        name, knob_prefix = "clash", "bs"
        def __init__(self, threat, gamma: float = 1.0, # the pull toward x
                    ): pass
    with pytest.raises(ValueError, match="knob 'bs_gamma' would mean two things"):
        T.register(Clash)
    assert "clash" not in T.METHODS
