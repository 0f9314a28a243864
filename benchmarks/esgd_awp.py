"""Entropy-SGD and AWP for adversarial training, side by side (a benchmark, not a test).

What Kanai et al. (arXiv 2103.01400) claim about cost: Entropy-SGD costs about the same as SGD per epoch (their Fig. 3b,
with an epoch = one pass over the data whatever the optimizer) and AWP about 8 % more (the AWP logs: +9 %). This script
trains six combinations of the trainer's composed step (method x optimizer x weight perturbation) on the same data,
the same initial weights and the same minibatch order, in interleaved rounds (every configuration trains epoch e, then
every configuration trains epoch e + 1, ...), so a change of machine load hits all of them alike:

    at          PGD-AT, momentum SGD                         (the baseline of the AT family)
    at_esgd     PGD-AT, Entropy-SGD                          (L Langevin steps per outer step, one fresh minibatch each)
    awp         PGD-AT + AWP (gamma --awp-gamma), momentum SGD
    awp_esgd    PGD-AT + AWP (gamma --awp-esgd-gamma) inside Entropy-SGD (AWP recomputed at every Langevin iterate)
    trades      TRADES, momentum SGD                         (the baseline of the TRADES family)
    trades_awp  TRADES + AWP (gamma --trades-awp-gamma), momentum SGD

Every epoch is timed by the trainer itself (`robustnb.train.train_epoch`, whose `epoch_time_s` covers the composed
steps only), and each configuration is then evaluated, outside the timing, on the first --n-test test images: clean
accuracy and PGD-40 (step 0.01, uniform start, the MNIST papers' attack). The cost ratio of a configuration is the
median of its epoch times over the median of its baseline's (at for the AT family, trades for trades_awp). The counted
forward+backward passes per training sample (the trainer's pass counter) are printed beside the declared ones.

The model is MNIST SmallCNN at eps 0.3, the recipe `esgd_at_mnist_smallcnn` (Entropy-SGD L 5, gamma 0.03, noise 1e-4,
inner lr 0.1, EMA 0.75, Nesterov), with the inner attack shortened to PGD-10 of step eps/4 (the CIFAR ratio 2/255 :
8/255) so that several epochs fit on a CPU; lr --lr for SGD and --esgd-lr for Entropy-SGD, x0.1 for the last epoch.
With L = 5 an epoch of Entropy-SGD takes a fifth of SGD's outer steps, each along w_c - mu (a chain of 5 steps of the
inner lr 0.1, averaged), so at the same lr it moves the weights several times less per epoch; Kanai et al. "coarsely
tuned" their settings, and 0.2 is ours: a 3-epoch pilot on 2048 images (PGD-40 after 3 epochs: SGD at 0.05 20.7 %;
Entropy-SGD at 0.2 2.7 %, at 0.5 stuck on one class, 11.3 %).

    python benchmarks/esgd_awp.py --threads 2                     # 16384 images, 4 epochs, 500 test images: ~45 min
    python benchmarks/esgd_awp.py --n 1024 --epochs 2 --n-test 200 --threads 1 --only at,at_esgd   # a quick look
    python benchmarks/esgd_awp.py --n 4096 --epochs 0 --rounds 5 --out benchmarks/results/esgd_awp_cost.json  # cost only

Writes a markdown table to stdout, JSON to benchmarks/results/esgd_awp.json and the convergence figure (robust and
clean accuracy against epochs and against cumulated training time, the paper's Fig. 3) to esgd_awp.png beside it.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {  # name: (baseline, overrides of the recipe)
    "at": ("at", dict(optimizer="sgd", sgd_nesterov=True)),
    "at_esgd": ("at", dict()),
    "awp": ("at", dict(optimizer="sgd", sgd_nesterov=True, perturbation="awp")),
    "awp_esgd": ("at", dict(perturbation="awp")),
    "trades": ("trades", dict(method="trades", beta=1.0, optimizer="sgd", sgd_nesterov=True)),
    "trades_awp": ("trades", dict(method="trades", beta=1.0, optimizer="sgd", sgd_nesterov=True, perturbation="awp")),
}


def build(name, a, tmp):
    "The trainer's state for configuration `name` (data, model, method, optimizer, perturbation), in a temporary run folder."
    import robustnb.train as T
    base, over = CONFIGS[name]
    over = dict(over)
    if over.get("perturbation") == "awp":
        over["awp_gamma"] = {"awp": a.awp_gamma, "awp_esgd": a.awp_esgd_gamma, "trades_awp": a.trades_awp_gamma}[name]
    esgd = over.get("optimizer", "entropy_sgd") == "entropy_sgd"
    if esgd: over["esgd_L"] = a.L
    epochs = max(a.epochs, 1) + a.rounds  # the configured schedule: x0.1 from the last training epoch on
    cfg = T.make_config(recipe="esgd_at_mnist_smallcnn", root=a.root, max_train_samples=a.n, epochs=epochs,
                        milestones=[a.epochs - 1] if a.epochs > 1 else [epochs], lr=a.esgd_lr if esgd else a.lr, steps=a.steps, alpha=a.alpha,
                        device="cpu", eval_suite="none", seed=a.seed, out_dir=str(Path(tmp) / name), **over)
    return T.setup(cfg, progress=False)


def timed(rec, st):
    "What the cost ratios need of one epoch record of `train_epoch`: its time, the images it trained on, its passes."
    return dict(epoch_time_s=rec["epoch_time_s"], images=rec["steps"] * rec["closure_calls"] * st.cfg.batch_size,
                grad_evals=rec["grad_evals_per_sample"], passes=rec["passes_per_sample"])


def evaluate_epoch(st, x, y, n_test, seed):
    "Clean and PGD-40 accuracy of the model on the first n_test test images (eval mode; not timed with the epoch)."
    from robustnb.evaluate import evaluate
    res = evaluate(st.model, x[:n_test], y[:n_test], st.cfg.threat, ["clean", "pgd40"], seed=seed, checks=False,
                   progress=False, options={"pgd40": {"alpha": 0.01}})
    return res["clean"].accuracy, res["pgd40"].accuracy


def plot(rows, names, path):
    "Kanai et al.'s Fig. 3 from the records: PGD-40 and clean accuracy against epochs and against training time."
    from robustnb.analysis import plot_convergence
    styles = {n: dict(color=f"C{i}", ls="--" if n.startswith("trades") else "-") for i, n in enumerate(CONFIGS)}
    fig = plot_convergence({n: rows[n]["history"] for n in names}, {"pgd40": "PGD-40 accuracy (%)", "clean": "clean accuracy (%)"},
                           "MNIST SmallCNN, eps 0.3: AT / TRADES with Entropy-SGD and AWP (test subset; Kanai et al. Fig. 3)",
                           styles)
    fig.savefig(path, dpi=80)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=os.environ.get("ROBUSTNB_DATA", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--n", type=int, default=16384, help="training images (MNIST)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--n-test", type=int, default=500, help="test images of the per-epoch clean / PGD-40 evaluation")
    p.add_argument("--steps", type=int, default=10, help="PGD steps of the inner attack (AT and TRADES)")
    p.add_argument("--alpha", type=float, default=0.075, help="step of the inner attack")
    p.add_argument("--lr", type=float, default=0.05, help="learning rate of momentum SGD")
    p.add_argument("--esgd-lr", type=float, default=0.2, help="outer learning rate of Entropy-SGD (see the docstring)")
    p.add_argument("--L", type=int, default=5, help="Langevin steps of Entropy-SGD")
    p.add_argument("--awp-gamma", type=float, default=0.01)
    p.add_argument("--awp-esgd-gamma", type=float, default=0.007)
    p.add_argument("--trades-awp-gamma", type=float, default=0.005)
    p.add_argument("--only", default=",".join(CONFIGS), help="comma-separated configurations")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=0, help="then this many interleaved timing rounds of one more epoch each "
                   "(min of the rounds per configuration; --epochs 0 --rounds R: a cost measurement only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "esgd_awp.json"))
    p.add_argument("--from-json", default=None, help="print the tables (and redraw the figure) of an earlier run's JSON")
    a = p.parse_args(argv)
    if a.from_json:
        saved = json.loads(Path(a.from_json).read_text())
        report(saved["rows"], list(saved["rows"]), saved["meta"], Path(a.out if a.out != p.get_default("out") else a.from_json))
        return
    names = [s.strip() for s in a.only.split(",") if s.strip()]
    bad = [s for s in names if s not in CONFIGS]
    if bad: sys.exit(f"unknown configuration(s) {', '.join(bad)}: allowed are {', '.join(CONFIGS)}")
    torch.set_num_threads(a.threads)
    from robustnb.data import get_data
    from robustnb.train import train_epoch
    data = get_data("mnist", root=a.root)
    x_te, y_te = data.x_test, data.y_test
    rows, t0 = {}, time.time()
    with tempfile.TemporaryDirectory() as tmp:
        states = {}
        try:
            for name in names: states[name] = build(name, a, tmp)
            for name in names:
                st = states[name]
                rows[name] = dict(method=st.cfg.method, optimizer=st.cfg.optimizer, perturbation=st.cfg.perturbation,
                                  knobs=dict(st.cfg.knobs), lr=st.cfg.lr, history=[])
            for e in range(a.epochs):
                for name in names:  # interleaved: every configuration sees the same load, epoch by epoch
                    st = states[name]
                    rec = train_epoch(st, e)
                    t_eval = time.perf_counter()
                    clean, rob = evaluate_epoch(st, x_te, y_te, a.n_test, a.seed)
                    rows[name]["history"].append(dict(epoch=e + 1, **timed(rec, st), train_loss=rec["train_loss"],
                                                      steps=rec["steps"], closure_calls=rec["closure_calls"], clean=clean,
                                                      pgd40=rob, eval_s=time.perf_counter() - t_eval))
                    print(f"epoch {e + 1} {name:10s} {rec['epoch_time_s']:7.1f} s  loss {rec['train_loss']:.3f}  "
                          f"clean {100 * clean:5.1f}  PGD-40 {100 * rob:5.1f}  passes/sample {rec['passes_per_sample']:.2f} "
                          f"(declared {rec['grad_evals_per_sample']})", file=sys.stderr, flush=True)
            for r in range(a.rounds):  # timing only: one more epoch each, interleaved, no evaluation
                for name in names:
                    rec = train_epoch(states[name], a.epochs + r)
                    rows[name].setdefault("rounds", []).append(timed(rec, states[name]))
                    print(f"round {r + 1} {name:10s} {rec['epoch_time_s']:7.1f} s", file=sys.stderr, flush=True)
        finally:
            for st in states.values():
                if st.lock is not None: st.lock.release()
    meta = dict(args=vars(a), torch=torch.__version__, machine=platform.machine(), processor=platform.processor(),
                cpus=os.cpu_count(), minutes=(time.time() - t0) / 60)
    report(rows, names, meta, Path(a.out))


def per_image(rec):
    "Seconds per training image of one timed epoch (Entropy-SGD's epoch may drop the last few minibatches: n/B/L rounds down)."
    return rec["epoch_time_s"] / rec["images"]


def report(rows, names, meta, out):
    "The tables (stdout), the JSON and, after a training run, the figure. Ratios are of the time per training image."
    a = argparse.Namespace(**meta["args"])
    if a.rounds:
        best = {n: min(per_image(r) for r in rows[n]["rounds"]) for n in names}
        print(f"\ncost: the fastest of {a.rounds} interleaved epochs on {a.n} images, {a.threads} threads\n\n"
              "| configuration | passes / sample (declared / counted) | fastest epoch (s) | ms / image | ratio to SGD | passes ratio |\n"
              "|---|---:|---:|---:|---:|---:|")
        for n in names:
            base, h = CONFIGS[n][0], rows[n]["rounds"]
            rows[n]["fastest_ms_per_image"] = 1e3 * best[n]
            rows[n]["fastest_ratio_to_sgd"] = best[n] / best[base] if base in best else None
            ratio = "–" if base not in best else f"{best[n] / best[base]:.3f}"
            passes = "–" if base not in rows else f"{h[-1]['grad_evals'] / rows[base]['rounds'][-1]['grad_evals']:.3f}"
            print(f"| {n} | {h[-1]['grad_evals']} / {h[-1]['passes']:.2f} | {min(r['epoch_time_s'] for r in h):.1f} | "
                  f"{1e3 * best[n]:.2f} | {ratio} | {passes} |")
    if a.epochs:
        med = {n: statistics.median(per_image(r) for r in rows[n]["history"]) for n in names}
        for n in names:
            base = CONFIGS[n][0]
            rows[n]["median_ms_per_image"] = 1e3 * med[n]
            rows[n]["ratio_to_sgd"] = med[n] / med[base] if base in med else None
            rows[n]["ratio_per_epoch"] = ([per_image(r) / per_image(b) for r, b in zip(rows[n]["history"], rows[base]["history"])]
                                          if base in rows else None)
        print(f"\nMNIST SmallCNN eps 0.3, {a.n} training images, {a.epochs} epochs, PGD-{a.steps} step {a.alpha} inside training, "
              f"{a.threads} threads; evaluation on {a.n_test} test images; {meta['minutes']:.1f} min in all\n")
        print("| configuration | optimizer | perturbation | lr | passes / sample (declared / counted) | median epoch (s) | "
              "ratio to SGD | ratio range over epochs | clean (%) | PGD-40 (%) | best PGD-40 (%) |")
        print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in names:
            r, h = rows[n], rows[n]["history"]
            rng = r["ratio_per_epoch"]
            ratio = "–" if r["ratio_to_sgd"] is None else f"{r['ratio_to_sgd']:.3f}"
            spread = "–" if rng is None else f"{min(rng):.3f}–{max(rng):.3f}"
            opt = r["optimizer"] + (f" L={a.L}" if r["optimizer"] == "entropy_sgd" else "")
            print(f"| {n} | {opt} | {r['perturbation']} | {r['lr']:g} | {h[-1]['grad_evals']} / {h[-1]['passes']:.2f} | "
                  f"{statistics.median(x['epoch_time_s'] for x in h):.1f} | {ratio} | {spread} | {100 * h[-1]['clean']:.1f} | "
                  f"{100 * h[-1]['pgd40']:.1f} | {100 * max(x['pgd40'] for x in h):.1f} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    if a.epochs: plot(rows, names, out.with_suffix(".png"))
    print(f"\n{out}" + (f" and {out.with_suffix('.png')}" if a.epochs else ""), file=sys.stderr)


if __name__ == "__main__":
    main()
