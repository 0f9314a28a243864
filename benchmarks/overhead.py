"""Per-step overhead of robustnb's trainer over a bare training loop of the same method, on the CPU.

The trainer's epoch (`robustnb.train.train_epoch`: the composed step, the loss statistics kept on the device, the
non-finite check, the pass counter's hooks, the progress bar, the learning-rate schedule) against the loop a user would
write by hand (zero_grad, the method's loss, backward, step), on the same model, data, batches and method, in
interleaved rounds so both see the same machine load; the fastest epoch of each is kept.

    python benchmarks/overhead.py --root ../shared/data --threads 2
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def bare_epoch(model, method, opt, batches, epoch):
    "The loop a user would write."
    batches.set_epoch(epoch)
    model.train()
    t0 = time.perf_counter()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        method(model, x, y).loss.backward()
        opt.step()
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=os.environ.get("ROBUSTNB_DATA", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--n", type=int, default=2048, help="training images")
    p.add_argument("--methods", default="standard,pgd_at,trades")
    p.add_argument("--steps", type=int, default=3, help="inner steps of pgd_at and trades")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    import tempfile
    import robustnb.train as T
    rows = []
    for name in a.methods.split(","):
        knobs = dict(steps=a.steps) if name != "standard" else {}
        with tempfile.TemporaryDirectory() as tmp:
            cfg = T.make_config(method=name, dataset=a.dataset, root=a.root, max_train_samples=a.n, epochs=10 ** 6,
                                device="cpu", eval_suite="none", out_dir=tmp, **knobs)
            st = T.setup(cfg, progress=False)
            try:
                bare, trainer = [], []
                for r in range(a.rounds):  # interleaved: the same load for both
                    trainer.append(T.train_epoch(st, 2 * r)["epoch_time_s"])
                    bare.append(bare_epoch(st.model, st.method, st.opt, st.batches, 2 * r + 1))
            finally: st.lock.release()
        b, t = min(bare), min(trainer)
        rows.append(dict(method=name, batches=len(st.batches), bare_s=b, trainer_s=t, overhead=t / b - 1))
        print(f"{name:10s} {len(st.batches)} steps: bare {b:.3f} s, trainer {t:.3f} s, overhead {100 * (t / b - 1):+.2f} %",
              file=sys.stderr)
    print("| method | steps / epoch | bare loop (s) | trainer (s) | overhead |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['batches']} | {r['bare_s']:.3f} | {r['trainer_s']:.3f} | {100 * r['overhead']:+.2f} % |")
    if a.json: Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
