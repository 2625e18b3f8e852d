#!/usr/bin/env bash
# Two quick-profile runs (one epoch each) in turn in a 2-thread process each, against two
# 1-thread processes at once, for ce and for catkd (from TEACHER, any resnet20 state_dict for
# Fashion-MNIST: only the time counts). On a 2-core machine this says how a book's runs should
# share the cores.
#
#   bash scripts/parallel_runs.sh TEACHER
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
teacher=$1
run() {
    local method=$1 seed=$2 out=$3
    "$python" -m catkd train --config "configs/quick/$method.yaml" optim.epochs=1 seed="$seed" \
        out="$out" $([ "$method" = ce ] || echo teacher.checkpoint="$teacher") > /dev/null 2>&1
}
for method in ce catkd; do
    out=$(mktemp -d)
    start=$(date +%s.%N)
    OMP_NUM_THREADS=2 run "$method" 11 "$out/in_turn"
    OMP_NUM_THREADS=2 run "$method" 12 "$out/in_turn"
    middle=$(date +%s.%N)
    OMP_NUM_THREADS=1 run "$method" 11 "$out/at_once" &
    OMP_NUM_THREADS=1 run "$method" 12 "$out/at_once" &
    wait
    end=$(date +%s.%N)
    echo "$method: two runs in turn, 2 threads: $(echo "$middle - $start" | bc) s;" \
         "two 1-thread processes at once: $(echo "$end - $middle" | bc) s"
    rm -rf "$out"
done
