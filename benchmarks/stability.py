"""Seed stability of single-step robust training: n seeds × methods through the `robustnb-train` command line.

    python benchmarks/stability.py                                   # 5 seeds of Fast AT and BS on digits, ε = 0.2
    python benchmarks/stability.py --seeds 10 --methods fast_at,bs,fast_trades --dataset mnist --eps 0.3 \\
        --extra "--max_train_samples 4096 --root ../shared/data"

Each run is a separate process of the trainer's command line (`robustnb.train.main`, the `robustnb-train` entry
point) with `--seed s`; its final robust accuracy (`--attack`, APGD-CE by default, on the test set, of the model selected on the
held-out split) is read back from the run's metrics.json. The per-method summary (mean / median / min / max / std of
robust accuracy) and a box plot — the paper's Figure 5 — go to benchmarks/results/stability_<dataset>.{json,md,png}.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]



def run_one(method, seed, a, tmp):
    out_dir = Path(tmp) / f"{method}_seed{seed}"
    args = ["--method", method, "--seed", str(seed), "--dataset", a.dataset, "--arch", a.arch, "--eps", str(a.eps),
            "--epochs", str(a.epochs), "--steps", "1", "--val_attack", a.attack, "--test_subset", "0",
            "--out_dir", str(out_dir), "--quiet", *shlex.split(a.extra)]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    t0 = time.time()
    proc = subprocess.run(["robustnb-train", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} seed {seed} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    m = json.loads((out_dir / "metrics.json").read_text())
    return dict(method=method, seed=seed, robust_acc=m["robust_acc"][a.attack], clean_acc=m["clean_acc"],
                best_epoch=m["best_epoch"], train_time_s=m["train_time_s"], wall_s=time.time() - t0,
                grad_evals=m["grad_evals_per_sample"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..n-1 per method")
    p.add_argument("--methods", default="fast_at,bs", help="comma-separated method names")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--arch", default="smallcnn")
    p.add_argument("--eps", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--attack", default="apgd-ce", help="attack of the robust accuracy (robustnb-train --val_attack): apgd-ce, or pgd20 for the papers' protocol")
    p.add_argument("--extra", default="", help="more robustnb-train flags, as one string")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = p.parse_args(argv)
    from robustnb.analysis import plot_stability, stability_summary
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(a.jobs) as pool:
        runs = list(pool.map(lambda ms: run_one(*ms, a, tmp), [(m, s) for m in methods for s in range(a.seeds)]))
    for r in runs:
        print(f"{r['method']:12s} seed {r['seed']}: clean {100 * r['clean_acc']:.1f}%  {a.attack} "
              f"{100 * r['robust_acc']:.1f}%  (best epoch {r['best_epoch']}, {r['train_time_s']:.0f}s)", file=sys.stderr)
    acc = {m: [r["robust_acc"] for r in runs if r["method"] == m] for m in methods}
    summary = stability_summary(acc)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    stem = f"stability_{a.dataset}"
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ax = plot_stability(acc, f"{a.dataset}/{a.arch}, ε = {a.eps:g}, {a.epochs} epochs, {a.seeds} seeds ({a.attack})")
    ax.figure.tight_layout(); ax.figure.savefig(out / f"{stem}.png", dpi=110); plt.close(ax.figure)
    setup = dict(dataset=a.dataset, arch=a.arch, eps=a.eps, epochs=a.epochs, seeds=a.seeds, attack=a.attack,
                 extra=a.extra, threads=a.threads, jobs=a.jobs, wall_s=time.time() - t0)
    (out / f"{stem}.json").write_text(json.dumps(dict(setup=setup, summary=summary, runs=runs), indent=2))
    lines = [f"{a.dataset}/{a.arch}, ε = {a.eps:g}, {a.epochs} epochs, seeds 0–{a.seeds - 1}, robust accuracy under "
             f"{a.attack} on the test set (model selected on the held-out split), via robustnb-train.", "",
             "| method | grad evals | mean | median | min | max | std |", "|---|---|---|---|---|---|---|"]
    for m, s in summary.items():
        ge = next(r["grad_evals"] for r in runs if r["method"] == m)
        lines.append(f"| {m} | {ge} | {100 * s['mean']:.1f}% | {100 * s['median']:.1f}% | {100 * s['min']:.1f}% | "
                     f"{100 * s['max']:.1f}% | {100 * s['std']:.1f} |")
    lines += ["", f"Box plot: {stem}.png. Total wall time {setup['wall_s']:.0f} s."]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
