#!/usr/bin/env bash
# One prepared GPU session: benchmarks first (they are what the issues report), then the CUDA tests.
# Usage (on a machine with one GPU, from the repo root): OUT=results_dir bash scripts/gpu_check.sh
# Each step writes its own file under $OUT as it finishes, so a cut-off run still returns what it did.
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
run() { local name=$1 limit=$2; shift 2; echo "== $name"; timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"; }
run bench_train_flash 200 python3 -m dyneval bench train --profile record_1gpu --steps 8
run bench_eval 220 python3 -m dyneval bench eval --profile record --variants sliding,dynamic,dynamic_tail --windows 4096
run bench_train_cudnn 120 python3 -m dyneval bench train --profile record_1gpu --steps 8 --set train.cudnn_attention=1
run cuda_tests 150 python3 -m pytest -q -x tests/test_cuda.py
grep -h '^{' "$OUT"/bench_*.log > "$OUT/bench.jsonl" || true
