"""Throughput of every attack in robustnb.attacks (a benchmark, not a test).

    python benchmarks/attacks.py                      # SmallCNN on 512 MNIST test images, CPU
    python benchmarks/attacks.py --n 1024 --root /data/robustnb
    python benchmarks/attacks.py --attacks pgd-linf,rays

CPU setting: a SmallCNN trained for one short epoch on MNIST (from --root, else $ROBUSTNB_DATA; `digits` when MNIST
is not there), attacked on the first --n test images at eps 0.3 (Linf) / 2.0 (L2). GPU setting (when CUDA is there):
PreAct-ResNet18 at random initialization on CIFAR-shaped synthetic images, eps 8/255 / 0.5. Each attack is timed with a
CUDA-synchronizing timer after a warm-up call, the attacks interleaved over --repeats rounds (the fastest kept).
Side by side in the same run: torchattacks' PGD with the same eps, step, steps and random start on the same model and
batches, when torchattacks imports. Prints a markdown table; writes JSON to benchmarks/results/attacks.json.
"""
import argparse
import json
import platform
from pathlib import Path

import torch
import torch.nn.functional as F

from robustnb.attacks import CWL2, FGSM, MIFGSM, PGD, DeepFool, RayS
from robustnb.core import ThreatModel, Timer, get_device, set_seed
from robustnb.data import Batches, dataset_info, get_data, to_float
from robustnb.models import get_model


def robustnb_attacks(model, eps_inf, eps_2, steps, cw_steps, rays_queries):
    "name -> (attack, its configuration in words); every attack with the settings the table reports."
    linf, l2 = ThreatModel("Linf", eps_inf), ThreatModel("L2", eps_2)
    alpha = 2.5 * eps_inf / steps
    return {
        "fgsm": (FGSM(model, linf), f"Linf eps={eps_inf:.4g}"),
        "pgd-linf": (PGD(model, linf, steps=steps, alpha=alpha), f"Linf, CE, {steps} steps, alpha={alpha:.4g}, uniform start"),
        "pgd-linf-cosine-es": (PGD(model, linf, steps=steps, alpha=2 * eps_inf, schedule="cosine", early_stop=True),
                               f"Linf, CE, {steps} steps, cosine from 2 eps, early stop"),
        "pgd-l2": (PGD(model, l2, steps=steps), f"L2 eps={eps_2:.4g}, CE, {steps} steps, alpha=2.5 eps/steps"),
        "pgd-cw": (PGD(model, linf, steps=steps, alpha=alpha, loss="cw"), f"Linf, CW margin, {steps} steps"),
        "pgd-kl (trades inner)": (PGD(model, linf, steps=steps, alpha=alpha, loss="kl", random_start="gaussian"),
                                  f"Linf, KL, {steps} steps, gaussian start"),
        "pgd-most-confusing": (PGD(model, linf, steps=steps, alpha=alpha, targeted="most_confusing"),
                               f"Linf, CE targeted to the most confusing class, {steps} steps"),
        "mifgsm": (MIFGSM(model, linf, steps=steps), f"Linf, {steps} steps, decay 1"),
        "deepfool": (DeepFool(model), "L2, <= 50 steps, 10 candidate classes, 10 bisections"),
        "cw-l2": (CWL2(model, const=100, binary_steps=1, steps=cw_steps, lr=0.1),
                  f"const 100, 1 binary step, {cw_steps} Adam steps, lr 0.1 (Bilateral AT supplement, arXiv 1811.10716)"),
        "rays": (RayS(model, linf, query_budget=rays_queries), f"Linf, {rays_queries} queries, early stop at eps"),
    }


def torchattacks_pgd(model, eps, alpha, steps):
    "torchattacks' PGD with our PGD's settings, or the reason it is not available."
    try:
        import torchattacks
    except Exception as e:  # an ImportError, or anything its import chain raises (e.g. a broken torchvision)
        return None, f"not available: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
    atk = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    return atk, f"torchattacks {torchattacks.__version__}: Linf, CE, {steps} steps, alpha={alpha:.4g}, uniform start"


def run_all(atk, batches):
    "Attack every batch; return the adversarial batches."
    return [atk(x, y) for x, y in batches]


def bench(setting, model, x, y, batch_size, device, attacks, repeats, eps_inf, steps):
    "Time every attack on the same batches (interleaved rounds, fastest kept); robust accuracy as a sanity check."
    batches = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]
    ta, ta_cfg = torchattacks_pgd(model, eps_inf, 2.5 * eps_inf / steps, steps)
    todo = dict(attacks)
    if ta is not None: todo["torchattacks pgd-linf"] = (ta, ta_cfg)
    for name, (atk, _) in todo.items(): run_all(atk, [(batches[0][0][:8], batches[0][1][:8])])  # warm-up
    times = {name: [] for name in todo}
    robust = {}
    for r in range(repeats):
        for name, (atk, _) in todo.items():
            with Timer(device) as t: advs = run_all(atk, batches)
            times[name].append(t.elapsed)
            with torch.no_grad():
                robust[name] = sum((model(a).argmax(1) == yb).sum().item() for a, (_, yb) in zip(advs, batches)) / len(y)
            print(f"  round {r + 1}: {setting:34s} {name:26s} {t.elapsed:8.2f} s  {len(y) / t.elapsed:9.1f} img/s",
                  flush=True)
    with torch.no_grad(): clean = sum((model(xb).argmax(1) == yb).sum().item() for xb, yb in batches) / len(y)
    rows = [dict(setting=setting, attack=name, config=cfg, seconds=min(times[name]), seconds_all=times[name],
                 images=len(y), images_per_s=len(y) / min(times[name]), robust_accuracy=robust[name],
                 clean_accuracy=clean) for name, (_, cfg) in todo.items()]
    if ta is None:
        rows.append(dict(setting=setting, attack="torchattacks pgd-linf", config=ta_cfg, seconds=None,
                         images=len(y), images_per_s=None, robust_accuracy=None, clean_accuracy=clean))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=512, help="test images attacked in the CPU setting")
    p.add_argument("--root", default=None, help="data root (default $ROBUSTNB_DATA); digits is used without MNIST")
    p.add_argument("--attacks", default="", help="comma-separated subset of the attack names (default: all)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=20, help="steps of PGD / MI-FGSM")
    p.add_argument("--cw-steps", type=int, default=100, help="Adam steps of CW-L2")
    p.add_argument("--rays-queries", type=int, default=1000, help="query budget of RayS")
    p.add_argument("--train-n", type=int, default=10000, help="training images for the short CPU training epoch")
    p.add_argument("--gpu-n", type=int, default=1024, help="CIFAR-shaped images in the GPU setting")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the fastest of each attack is kept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "attacks.json"))
    a = p.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    wanted = [s.strip() for s in a.attacks.split(",") if s.strip()]

    def select(attacks):
        bad = sorted(set(wanted) - set(attacks))
        if bad: raise SystemExit(f"unknown attack(s) {', '.join(bad)}: allowed are {', '.join(attacks)}")
        return {k: v for k, v in attacks.items() if not wanted or k in wanted}

    rows = []
    try:
        data, dataset = get_data("mnist", root=a.root), "mnist"
    except FileNotFoundError:
        data, dataset = get_data("digits"), "digits"
    set_seed(a.seed)
    model = get_model("smallcnn", dataset=dataset)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for xb, yb in Batches(data.x_train[:a.train_n], data.y_train[:a.train_n], 128, seed=a.seed):
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    model.eval()
    x, y = to_float(data.x_test[:a.n]), data.y_test[:a.n]
    print(f"CPU: {dataset} SmallCNN (1 epoch on {min(a.train_n, len(data.y_train))} images), {len(y)} test images, "
          f"batch {a.batch_size}, {torch.get_num_threads()} threads")
    cpu = torch.device("cpu")
    rows += bench(f"cpu {dataset} smallcnn", model, x, y, a.batch_size, cpu,
                  select(robustnb_attacks(model, 0.3, 2.0, a.steps, a.cw_steps, a.rays_queries)), a.repeats, 0.3, a.steps)

    if torch.cuda.is_available():
        dev = get_device("cuda")
        g = torch.Generator().manual_seed(a.seed)
        xc = torch.rand(a.gpu_n, 3, 32, 32, generator=g).to(dev)
        yc = torch.randint(0, 10, (a.gpu_n,), generator=g).to(dev)
        set_seed(a.seed)
        net = get_model("preactresnet18", dataset=dataset_info("cifar10")).to(dev).eval()
        print(f"GPU: {torch.cuda.get_device_name(dev)}, PreAct-RN18 (random init), CIFAR-shaped synthetic, {a.gpu_n} images")
        rows += bench("gpu cifar-shaped preactrn18", net, xc, yc, a.batch_size, dev,
                      select(robustnb_attacks(net, 8 / 255, 0.5, a.steps, a.cw_steps, a.rays_queries)), a.repeats,
                      8 / 255, a.steps)

    print("\n| setting | attack | configuration | images/s | time (s) | robust acc. |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if r["images_per_s"] is None:
            print(f"| {r['setting']} | {r['attack']} | {r['config']} | - | - | - |")
        else:
            print(f"| {r['setting']} | {r['attack']} | {r['config']} | {r['images_per_s']:.0f} | {r['seconds']:.2f} | "
                  f"{100 * r['robust_accuracy']:.1f} % |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    meta = dict(torch=torch.__version__, python=platform.python_version(), machine=platform.machine(),
                cpu_threads=torch.get_num_threads(), n=a.n, batch_size=a.batch_size, steps=a.steps,
                cw_steps=a.cw_steps, rays_queries=a.rays_queries, repeats=a.repeats, dataset=dataset)
    Path(a.out).write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))


if __name__ == "__main__":
    main()
