#!/usr/bin/env bash
# The GPU checks of the performance work, as one prepared command for a machine with one CUDA GPU
# and PyTorch but no network (e.g. the device tool's H100: about 8 minutes there, estimated).
#
#   bash scripts/gpu_check.sh [OUT]      results in OUT (default $OUT, else runs/gpu_check)
#
# 1. python -m catkd bench --device cuda: the authors' way (8 DataLoader workers, as the CRD /
#    CAT-KD code loads CIFAR) against the fast path, every method's step, and one CIFAR-100-sized
#    epoch (50000 + 10000 images) projected to the paper's 240 epochs;
# 2. the engine end to end on the GPU: the quick profile's teacher and CAT-KD student on
#    Fashion-MNIST, read from data/fashion-mnist (copy Debian's four .gz files there first and
#    carry data/fashion-mnist). (DDP is tested on the CPU: one GPU cannot hold two NCCL ranks.)
# 3. last, as the slowest (each compilation costs about a minute), the bench with --compile,
#    timing only ce, kd and catkd. What the earlier steps wrote is kept if a time limit stops it.
set -euo pipefail
out=${1:-${OUT:-runs/gpu_check}}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec > >(tee "$out/log.txt") 2>&1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'
python3 -m catkd bench --device cuda --workers 8 --epoch-images 50000 --out "$out/bench.json"

runs=$(mktemp -d)
python3 -m catkd train --config configs/quick/catkd.yaml runtime.device=cuda out="$runs"
for summary in "$runs"/*/summary.json; do
    echo "$summary"; python3 -c 'import json, sys; s = json.load(open(sys.argv[1]));
print({k: s[k] for k in ("best_acc", "last_acc", "epochs", "seconds")})' "$summary"
done

python3 -m catkd bench --device cuda --workers 8 --compile --step-methods ce kd catkd \
    --epoch-images 50000 --out "$out/bench_compile.json"
