"""The honest-headline check of robustnb's evaluation, on the kind of model that motivated it.

Backward Smoothing on MNIST SmallCNN, ε = 0.3, 3 epochs on 8192 training images (a briefly trained model whose loss
surface is rough): fixed-step PGD overrates it. The script trains it through `robustnb-train` with the default
checkpoint selection (official APGD-CE on the held-out split), evaluates it with the `standard` suite (PGD-20,
PGD-100, CW-100, APGD-CE, AutoAttack standard) on `--n` test images, and prints the evaluation table, the per-epoch
selection numbers and the run's last line (the headline). With `--pgd20` it also runs the same training selected by
PGD-20, the papers' protocol, for comparison.

    python benchmarks/honest.py --root ../shared/data --threads 2
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(out, a, *extra):
    args = ["robustnb-train", "--recipe", "bs_mnist_smallcnn", "--epochs", "3", "--max_train_samples", str(a.train),
            "--schedule", "constant", "--root", a.root, "--test_subset", str(a.n), "--aa_subset", str(a.n),
            "--eval_suite", "standard", "--device", "cpu", "--seed", str(a.seed), "--out_dir", str(out), "--quiet", *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    t0 = time.time()
    p = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT)
    if p.returncode: sys.exit(f"robustnb-train failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p.stdout, time.time() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=os.environ.get("ROBUSTNB_DATA", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--train", type=int, default=8192, help="training images")
    p.add_argument("--n", type=int, default=500, help="test images of the evaluation (AutoAttack on all of them)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pgd20", action="store_true", help="also train with PGD-20 checkpoint selection")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in [("APGD-CE selection", ())] + ([("PGD-20 selection", ("--val_attack", "pgd20"))] if a.pgd20 else []):
            out = Path(tmp) / name.split()[0]
            stdout, wall = run(out, a, *extra)
            hist = [json.loads(l) for l in (out / "history.jsonl").read_text().splitlines()]
            print(f"## {name} ({wall:.0f} s wall)\n")
            print("per-epoch held-out robust accuracy (" + hist[0]["val_attack"] + "): " +
                  ", ".join(f"epoch {h['epoch']} {100 * h['val_robust_acc']:.1f} %" for h in hist) + "\n")
            print(stdout)


if __name__ == "__main__":
    main()
