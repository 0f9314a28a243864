"""Time of the official AutoAttack (standard version) and of PGD-100 on MNIST test images, on CPU (a benchmark, not a test).

    python benchmarks/evaluate.py --root /work/shared/data                 # 1,000 test images, 3-epoch TRADES SmallCNN
    python benchmarks/evaluate.py --root /data --n 1000 --epochs 3 --threads 1

Setting: a SmallCNN trained with TRADES on MNIST (the recipe `trades_mnist_smallcnn`, Zhang et al. 2019, with a few
epochs instead of 100 and `--steps` inner KL steps of size 2.5·ε/steps instead of 40 of 0.01), ε = 0.3 (Linf). The run
is written to --run-dir and reused when its model.pt is there (delete it to retrain). Then, on the first --n test
images, on the CPU: PGD-100 (CE, α = 2.5ε/100, uniform random start) and the standard AutoAttack (pyautoattack:
APGD-CE, APGD-T, FAB-T, Square), each through `robustnb.evaluate.evaluate` without the masking checks, timed with
`core.Timer`. Prints a markdown table; writes JSON to benchmarks/results/evaluate.json.
"""
import argparse
import json
import platform
from pathlib import Path

import torch

from robustnb.core import ThreatModel, Timer
from robustnb.data import get_data
from robustnb.evaluate import evaluate
from robustnb.runs import load_run_model
from robustnb.train import fit, make_config


def train(args) -> Path:
    "The TRADES run (trained unless its model.pt is already there)."
    run_dir = Path(args.run_dir)
    if (run_dir / "model.pt").exists(): return run_dir
    cfg = make_config("trades_mnist_smallcnn", epochs=args.epochs, steps=args.steps, alpha=2.5 * 0.3 / args.steps,
                      root=args.root, out_dir=str(run_dir), device="cpu", amp=args.amp, test_subset=args.n,
                      resume=(run_dir / "checkpoint.pt").exists(), seed=args.seed)
    fit(cfg)
    return run_dir


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=None, help="data root holding MNIST/raw (else $ROBUSTNB_DATA)")
    p.add_argument("--run-dir", default="runs/bench_evaluate_trades_mnist", help="the TRADES run (reused if trained)")
    p.add_argument("--epochs", type=int, default=3, help="TRADES epochs")
    p.add_argument("--steps", type=int, default=10, help="TRADES inner KL steps")
    p.add_argument("--amp", default="bf16", help="mixed precision of the training step (off, bf16)")
    p.add_argument("--n", type=int, default=1000, help="test images evaluated")
    p.add_argument("--batch-size", type=int, default=500, help="evaluation batch size")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/evaluate.json")
    args = p.parse_args()
    if args.threads: torch.set_num_threads(args.threads)

    run_dir = train(args)
    model, cfg = load_run_model(run_dir, "cpu")
    data = get_data("mnist", root=args.root)
    x, y = data.x_test[:args.n], data.y_test[:args.n]
    threat = ThreatModel(cfg["norm"], cfg["eps"])
    rows = {}
    for name in ("pgd100", "aa"):
        with Timer() as t:
            res = evaluate(model, x, y, threat, [name], batch_size=args.batch_size, seed=args.seed, checks=False)
        rows[name] = dict(title=res[name].title, accuracy=res[name].accuracy, time_s=t.elapsed,
                          stats=res[name].stats, notes=res[name].notes, correct=res[name].correct)
    clean = res["clean"].accuracy
    pgd_ok, aa_ok = rows["pgd100"].pop("correct"), rows["aa"].pop("correct")
    out = dict(setting=dict(dataset="mnist", n=args.n, arch=cfg["arch"], method=cfg["method"], epochs=cfg["epochs"],
                            steps=cfg["steps"], eps=cfg["eps"], norm=cfg["norm"], batch_size=args.batch_size,
                            device="cpu", threads=torch.get_num_threads(), torch=torch.__version__,
                            cpu=platform.processor() or platform.machine(), run_dir=str(run_dir)),
               clean_acc=clean, attacks=rows, worst_case=(pgd_ok & aa_ok).sum().item() / args.n,
               aa_only=(pgd_ok & ~aa_ok).sum().item(), pgd_only=(~pgd_ok & aa_ok).sum().item())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"TRADES SmallCNN, {cfg['epochs']} epochs on MNIST, eps {cfg['eps']} (Linf); first {args.n} test images, "
          f"CPU, {torch.get_num_threads()} thread(s), batch {args.batch_size}; clean accuracy {100 * clean:.2f} %\n")
    print("| attack | robust accuracy (%) | time (s) | ms / image |\n|---|---:|---:|---:|")
    for r in rows.values():
        print(f"| {r['title']} | {100 * r['accuracy']:.2f} | {r['time_s']:.1f} | {1000 * r['time_s'] / args.n:.1f} |")
    print(f"\nAutoAttack breaks {out['aa_only']} images PGD-100 misses; PGD-100 breaks {out['pgd_only']} AutoAttack misses; "
          f"AutoAttack after each attack: {rows['aa']['stats'].get('after')}")


if __name__ == "__main__":
    main()
