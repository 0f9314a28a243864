#!/usr/bin/env bash
# robustnb's checks that need a GPU, in one go (about 6-8 minutes on one H100/H200):
#   1. the notebook cells flagged `cuda` (nbdev_test --flags cuda runs them, with every other cell),
#   2. the CUDA tests of tests/ (the ones skipped on a CPU),
#   3. the GPU halves of the benchmarks: images/s of every training method on CIFAR-shaped PreAct-ResNet-18 in fp32,
#      bf16, bf16 + channels_last and + torch.compile, with the fraction of the bare forward+backward throughput each
#      reaches (benchmarks/methods.py), and the attacks' throughput (benchmarks/attacks.py).
# Usage:  bash benchmarks/device.sh          # on a machine with a GPU
#         bash benchmarks/device.sh --cpu    # the same steps at toy sizes on the CPU (CI runs this to keep it working)
# Results: $OUT (default benchmarks/results/device), one log and one JSON per step.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/device}
mkdir -p "$OUT"
cpu=0
if [ "${1:-}" = "--cpu" ] || ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then cpu=1; fi
t0=$(date +%s)
step() { printf '\n=== %s (t=%ss)\n' "$1" "$(( $(date +%s) - t0 ))"; }

if [ "$cpu" = 0 ]; then
  python -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| cuda', torch.version.cuda)" | tee "$OUT/device.txt"
  step "notebook cells flagged cuda"
  (cd nbs && nbdev_test --flags cuda --n_workers 8) 2>&1 | tail -20 | tee "$OUT/nbdev_cuda.log"
  step "CUDA tests"
  python -m pytest -q tests -k "cuda" 2>&1 | tail -20 | tee "$OUT/pytest_cuda.log"
  step "methods on the GPU (fp32, bf16, channels_last, compile)"
  python benchmarks/methods.py --n 512 --gpu-n 8192 --steps 10 --repeats 2 --batch-size 256 \
      --out "$OUT/methods.json" 2>&1 | tee "$OUT/methods.log" | grep "^|"
  step "attacks on the GPU"
  python benchmarks/attacks.py --n 256 --gpu-n 1024 --repeats 2 --out "$OUT/attacks.json" 2>&1 | tee "$OUT/attacks.log" | grep "^|"
else
  echo "device: cpu (toy sizes: this only checks that the script and the benchmarks run)" | tee "$OUT/device.txt"
  step "methods on the CPU"
  python benchmarks/methods.py --n 256 --methods standard,trades,bs --steps 2 --repeats 1 --cpu-only \
      --out "$OUT/methods.json" 2>&1 | tee "$OUT/methods.log" | grep "^|"
  step "trainer overhead on the CPU"
  python benchmarks/overhead.py --dataset digits --n 512 --methods standard,trades --steps 2 --rounds 1 --threads 1 \
      --json "$OUT/overhead.json" 2>&1 | tee "$OUT/overhead.log" | grep "^|"
fi
step "done"
