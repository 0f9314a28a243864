"""Per-epoch cost of every registered training method (a benchmark, not a test).

    python benchmarks/methods.py --n 2048                      # MNIST SmallCNN on the CPU, 2048 training images
    python benchmarks/methods.py --n 2048 --methods trades,pgd_at
    python benchmarks/methods.py --gpu-n 10240                 # also CIFAR-shaped PreAct-RN18 on a GPU: fp32, bf16,
                                                               # bf16 + channels_last, and that + torch.compile

For every method: one epoch over the same images with the same model, each step the trainer's own composed step
(`robustnb.core.composed_step`), timed with a CUDA-synchronizing timer after a warm-up step, methods interleaved over
several rounds (the fastest epoch of each is kept); images/s, the method's declared grad evals per sample, and the
fraction of the bare forward+backward throughput it reaches (images/s x grad evals / the images/s of standard
training, which is one forward+backward per image: 1.0 means the method's passes run as fast as plain ones). Side by side in the same run, TRADES is also
timed in the straightforward reference formulation that recomputes the clean forward inside every attack step and
twice in the outer loss (as the official code does), and the ratio is reported. Writes a markdown table to stdout and
JSON to benchmarks/results/methods.json.
"""
import argparse
import json
import platform
from pathlib import Path

import torch

from robustnb.core import Method, MethodOutput, Timer, composed_step, get_device, knobs_of, set_mode, set_seed
from robustnb.data import Batches, get_data
from robustnb.models import get_model
from robustnb.trades import trades_reference_loss
from robustnb.train import METHODS, _autocast, build_method, make_config


class TRADESReference(Method):
    "TRADES as the official trades.py computes it (robustnb.trades.trades_reference_loss), as a Method for timing."
    name = "trades_reference"

    def __init__(self, eps, alpha, steps, beta):
        self.eps, self.alpha, self.steps, self.beta = eps, alpha, steps, beta
        self.grad_evals = steps + 2  # the same gradient passes; it spends steps + 1 extra clean forwards

    def loss(self, model, x, y):
        with set_mode(model, model.training):  # the official code switches modes itself; restore ours afterwards
            loss, _ = trades_reference_loss(model, x, y, self.eps, self.alpha, self.steps, self.beta)
        return MethodOutput(loss)


def _stream(batches, channels_last):
    for x, y in batches: yield (x.contiguous(memory_format=torch.channels_last) if channels_last else x), y


def time_epoch(method, model, opt, batches, device, amp="off", channels_last=False):
    "Seconds for one epoch of `method` (the trainer's composed step), and the number of images."
    model.train()
    amp_ctx = (lambda: _autocast(device, amp)) if amp != "off" else None
    it, n = _stream(batches, channels_last), len(batches) * batches.batch_size
    with Timer(device) as t:
        for _ in range(len(batches)): composed_step(model, method, opt, it, autocast=amp_ctx)
    return t.elapsed, n


def _knobs_for(name, multi_kw):
    "The benchmark's steps/alpha for a method that takes them; every other method runs with its own defaults."
    take = {k.name for k in knobs_of(METHODS.get(name))}
    return {k: v for k, v in multi_kw.items() if k in take} if name in MULTI_STEP else {}


MULTI_STEP = ("pgd_at", "trades")


def bench(setting, names, x, y, arch, info, cfg_kw, multi_kw, device, amp, channels_last, batch_size, seed, repeats,
          compile=False):
    "Time every method; methods are interleaved over `repeats` rounds and the fastest epoch of each is kept."
    # the multi-step methods get the steps and step size asked for; every other method runs with its own defaults
    methods = [(n, build_method(make_config(**cfg_kw, **_knobs_for(n, multi_kw), method=n))) for n in names]
    if "trades" in names:
        t = build_method(make_config(**cfg_kw, **_knobs_for("trades", multi_kw), method="trades"))
        methods.append(("trades (reference formulation)", TRADESReference(t.threat.eps, t.alpha, t.steps, t.beta)))
    state = {}
    for name, method in methods:
        set_seed(seed)
        model = get_model(arch, dataset=info).to(device)
        if channels_last: model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        step_model = torch.compile(model) if compile else model
        batches = Batches(x, y, batch_size, shuffle=True, seed=seed, drop_last=True, device=device)
        amp_ctx = (lambda: _autocast(device, amp)) if amp != "off" else None
        composed_step(step_model, method, opt, _stream(batches, channels_last), autocast=amp_ctx)  # warm-up (and compile)
        state[name] = (method, step_model, opt, batches, [])
    for r in range(repeats):  # interleaved, so that a load change on the machine hits every method alike
        for name, (method, model, opt, batches, times) in state.items():
            sec, n = time_epoch(method, model, opt, batches, device, amp, channels_last)
            times.append(sec)
            print(f"  round {r + 1}: {setting:32s} {name:32s} {sec:8.2f} s  {n / sec:9.1f} img/s", flush=True)
    rows = []
    for name, (method, model, opt, batches, times) in state.items():
        n = len(batches) * batch_size
        rows.append(dict(setting=setting, method=name, grad_evals=method.grad_evals, epoch_s=min(times),
                         epoch_s_all=times, images=n, images_per_s=n / min(times)))
    base = {r["method"]: r["epoch_s"] for r in rows}
    bare = next((r["images_per_s"] for r in rows if r["method"] == "standard"), None)  # one forward+backward per image
    for r in rows:
        r["time_vs_standard"] = r["epoch_s"] / base["standard"] if "standard" in base else None
        r["fraction_of_bare_fwd_bwd"] = r["images_per_s"] * r["grad_evals"] / bare if bare else None
        if r["method"] == "trades (reference formulation)" and "trades" in base:
            r["reference_over_robustnb"] = r["epoch_s"] / base["trades"]
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2048, help="MNIST training images for the CPU setting")
    p.add_argument("--methods", default=",".join(METHODS.names()), help="comma-separated method names")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="inner steps of the multi-step methods (PGD-AT, TRADES); the "
                   "others run with their own defaults (BS: 2 inner steps, Fast AT/TRADES: 1)")
    p.add_argument("--root", default=None, help="data root (default $ROBUSTNB_DATA); digits is used without MNIST")
    p.add_argument("--gpu-n", type=int, default=10240, help="CIFAR-shaped images for the GPU setting")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the fastest epoch of each method is kept")
    p.add_argument("--gpu-settings", type=int, default=4, help="how many of fp32, bf16, bf16+channels_last, +compile")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "methods.json"))
    p.add_argument("--cpu-only", action="store_true", help="skip the GPU settings even when CUDA is there")
    a = p.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    names = [m.strip() for m in a.methods.split(",") if m.strip()]
    for n in names: METHODS.get(n)

    rows = []
    try:
        data, dataset = get_data("mnist", root=a.root), "mnist"
    except FileNotFoundError:
        data, dataset = get_data("digits"), "digits"
    cpu = torch.device("cpu")
    x, y = data.x_train[:a.n], data.y_train[:a.n]
    print(f"CPU: {dataset} SmallCNN, {len(y)} images, batch {a.batch_size}, {torch.get_num_threads()} threads")
    kw = dict(dataset=dataset, arch="smallcnn", eps=0.3, device="cpu")
    multi = dict(steps=a.steps, alpha=0.01 * 40 / a.steps)
    rows += bench(f"cpu {dataset} smallcnn fp32", names, x, y, "smallcnn", data.info, kw, multi, cpu, "off", False,
                  a.batch_size, a.seed, a.repeats)
    if torch.cuda.is_available() and not a.cpu_only:
        dev = get_device("cuda")
        g = torch.Generator().manual_seed(a.seed)
        xc = torch.randint(0, 256, (a.gpu_n, 3, 32, 32), dtype=torch.uint8, generator=g).to(dev)
        yc = torch.randint(0, 10, (a.gpu_n,), generator=g).to(dev)
        from robustnb.data import dataset_info
        kw = dict(dataset="cifar10", arch="preactresnet18", eps=8 / 255, device="cuda")
        multi = dict(steps=a.steps, alpha=2 / 255)
        print(f"GPU: {torch.cuda.get_device_name(dev)}, CIFAR-shaped PreAct-RN18, {a.gpu_n} images")
        for label, amp, cl, comp in [("fp32", "off", False, False), ("bf16", "bf16", False, False),
                                     ("bf16 channels_last", "bf16", True, False),
                                     ("bf16 channels_last compile", "bf16", True, True)][:a.gpu_settings]:
            rows += bench(f"gpu cifar-shaped preactrn18 {label}", names, xc, yc, "preactresnet18", dataset_info("cifar10"),
                          kw, multi, dev, amp, cl, a.batch_size, a.seed, a.repeats, compile=comp)

    print("\n| setting | method | grad evals/sample | epoch (s) | images/s | time vs standard | of bare fwd+bwd |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        rel = f"{r['time_vs_standard']:.2f}" if r["time_vs_standard"] else "-"
        frac = f"{r['fraction_of_bare_fwd_bwd']:.2f}" if r["fraction_of_bare_fwd_bwd"] else "-"
        print(f"| {r['setting']} | {r['method']} | {r['grad_evals']} | {r['epoch_s']:.2f} | {r['images_per_s']:.0f} | {rel} "
              f"| {frac} |")
    for r in rows:
        if "reference_over_robustnb" in r:
            print(f"\n{r['setting']}: the reference TRADES formulation takes {r['reference_over_robustnb']:.2f}x "
                  f"the time of robustnb's TRADES per epoch")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    meta = dict(torch=torch.__version__, python=platform.python_version(), machine=platform.machine(),
                cpu_threads=torch.get_num_threads(), n=a.n, batch_size=a.batch_size, steps=a.steps,
                repeats=a.repeats)
    Path(a.out).write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))


if __name__ == "__main__":
    main()
