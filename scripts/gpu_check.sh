#!/usr/bin/env bash
# The GPU checks of the performance work, as one prepared command for a machine with one CUDA GPU
# and PyTorch but no network (e.g. an H100 or H200; on an H200 the bench part took 3 minutes).
#
#   bash scripts/gpu_check.sh [OUT [PART ...]]   results in OUT (default $OUT, else
#                                                 runs/gpu_check); PARTs: bench engine
#                                                 methods (default: bench engine)
#
# bench: 1. python -m catkd bench --device cuda: the authors' way (8 DataLoader workers, as the
#           CRD / CAT-KD code loads CIFAR) against the fast path, every method's step with its
#           GFLOP/s beside the card's measured bf16 peak, and one CIFAR-100-sized epoch
#           (50000 + 10000 images) projected to the paper's 240 epochs;
#        2. the same with --compile reduce-overhead (torch.compile with CUDA graphs: batch 64 is
#           bound by kernel launches, which the graphs replay at once), kd and catkd only;
#        3. the same with --compile in torch's default mode (kd and catkd).
# engine: the training engine end to end on the GPU, on Fashion-MNIST read from
#         data/fashion-mnist (copy Debian's four .gz files there first and carry
#         data/fashion-mnist): the quick profile's teacher and CAT-KD student; the same student
#         with runtime.compile=reduce-overhead from the same teacher; then the methods part.
#         (DDP is tested on the CPU: one GPU cannot hold two NCCL ranks.)
# methods: every method of the comparison for one epoch on a tenth of Fashion-MNIST with
#         runtime.compile=reduce-overhead (CUDA graphs), from the quick teacher (trained first,
#         eager), the feature-based methods first.
# A step that fails is reported and the next one runs; everything goes to OUT (log.txt and the
# bench's JSON files).
set -uo pipefail
out=${1:-${OUT:-runs/gpu_check}}
parts=("${@:2}")
[ ${#parts[@]} -gt 0 ] || parts=(bench engine)
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec > >(tee -a "$out/log.txt") 2>&1
step() { echo "== $(date +%T) $*"; "$@" || echo "== failed (exit $?): $*"; }

bench() {
    step python3 -m catkd bench --device cuda --workers 8 --epoch-images 50000 \
        --out "$out/bench.json"
    step python3 -m catkd bench --device cuda --workers 8 --compile reduce-overhead \
        --step-methods kd catkd --epoch-images 50000 --out "$out/bench_reduce_overhead.json"
    step python3 -m catkd bench --device cuda --workers 8 --compile --step-methods kd catkd \
        --epoch-images 50000 --out "$out/bench_compile.json"
}

engine() {
    local runs teacher method
    runs=$(mktemp -d)
    step python3 -m catkd train --config configs/quick/catkd.yaml runtime.device=cuda \
        out="$runs/eager"
    teacher=$(ls "$runs"/eager/ce_*/best.pt)
    step python3 -m catkd train --config configs/quick/catkd.yaml runtime.device=cuda \
        runtime.compile=reduce-overhead teacher.checkpoint="$teacher" out="$runs/graphs"
    methods_with "$teacher" "$runs"
}

methods() {
    local runs
    runs=$(mktemp -d)
    step python3 -m catkd train --config configs/quick/teacher.yaml runtime.device=cuda \
        out="$runs/teacher"
    methods_with "$(ls "$runs"/teacher/ce_*/best.pt)" "$runs"
}

methods_with() {  # TEACHER_CHECKPOINT RUNS
    local method summary
    for method in fitnet rkd ofd crd reviewkd cat ce kd dkd at catkd; do
        step python3 -m catkd train --config "configs/quick/$method.yaml" runtime.device=cuda \
            runtime.compile=reduce-overhead optim.epochs=1 data.fraction=0.1 \
            $([ "$method" = ce ] || echo teacher.checkpoint="$1") out="$2/methods"
    done
    for summary in "$2"/*/*/summary.json; do
        python3 -c 'import json, sys; s = json.load(open(sys.argv[1]));
print(sys.argv[1].split("/")[-3:-1], {k: s[k] for k in ("best_acc", "epochs", "seconds")})' \
            "$summary"
    done
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'
for part in "${parts[@]}"; do "$part"; done
echo "== $(date +%T) done"
