#!/usr/bin/env bash
# One prepared GPU run (issue 12), under 10 minutes of wall time on one H100, in these steps:
#   1. the CUDA tests (tests/test_cuda.py: compiled forward and scoring, and a short training run whose
#      artifact is written on the GPU, loaded back and scored), then the GPU halves of the CPU tests of the
#      compiled and multi-rank paths (tests/test_gpu_path.py: graph counts with inductor, 2-rank resume);
#   2. `python -m dyneval reproduce --profile gpu_smoke --seeds 42` (notebooks 01-05 through papermill);
#   3. `python -m dyneval bench compare`: faithful vs fast in one process on this card, as ratios, and the
#      compiled-vs-eager dynamic-eval bpb on step 2's checkpoint.
# Each step writes its results under $OUT as soon as it finishes, so a cut-off run still returns what it
# did. At most 8 files come back from $OUT, so there are exactly these 8:
#   summary.txt (card, torch, commit, each step's status and seconds), cuda_tests.log, gpu_path.log, reproduce.log,
#   ablation.md, reproduce.tar.gz (executed notebooks, tables, figures, meta/results), bench.log, bench.json
#
# Usage, from the repo root:  OUT=results bash scripts/gpu_check.sh [--dry-run]
#   --dry-run prints each step, its time budget and its command, and runs nothing.
#
# Wheels. The GPU machine (Python 3.12, no network) has torch, sentencepiece, matplotlib, scipy and pytest
# but not zstandard, papermill or the Jupyter kernel stack. Prepare them once, on a machine with network,
# into the git-ignored .whl/ (about 20 MiB; carry it along with the working tree):
#   grep -v '^#' scripts/gpu_wheels.txt | while read -r spec; do
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       --platform any -d .whl "$spec"; done
# (`--platform any` in the same command fetches the pure-Python ones.) This script installs them with
# `pip install --no-index --no-deps --target /tmp/site .whl/*.whl` and puts /tmp/site on PYTHONPATH.
set -u
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-gpu_out}
WORK=${WORK:-/tmp/gpu_check}  # data, runs and figures of step 2 (never the repo's figures/)
SITE=/tmp/site
RUN="$WORK/runs/seed42"

# name, budget in seconds, what it does, command: 30 + 100 + 80 + 290 + 90 = 590 s of the device's 600
# (gpu_path's 80 s and the trimmed budgets are estimates, not yet measured on a GPU)
STEPS=(
  "setup|30|install the wheels from .whl/ into $SITE|python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .whl/*.whl"
  "cuda_tests|100|the CUDA tests, end-to-end training included|python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py"
  "gpu_path|80|graph counts with inductor on CUDA; a 2-rank NCCL resume where 2 GPUs exist|python3 -m pytest -q -s -p no:cacheprovider tests/test_gpu_path.py"
  "reproduce|290|gpu_smoke, seed 42, notebooks 01-05 through papermill|python3 -m dyneval reproduce --profile gpu_smoke --seeds 42 --out $WORK/runs --figures $WORK/figures --data-root $WORK/data --timeout 280"
  "bench|90|faithful vs fast in one process; compiled vs eager dynamic eval on the checkpoint|python3 -m dyneval bench compare --profile gpu_smoke --steps 10 --windows 1024 --checkpoint-run $RUN"
)

if [ "$DRY" = 1 ]; then
  total=0
  for s in "${STEPS[@]}"; do
    IFS='|' read -r name budget what cmd <<<"$s"
    total=$((total + budget))
    printf '%-11s %4d s  %s\n    $ %s\n' "$name" "$budget" "$what" "$cmd"
  done
  printf 'total budget %d s (the device allows 600 s a command); results under %s\n' "$total" "$OUT"
  exit 0
fi

mkdir -p "$OUT" "$WORK"
OUT_ABS=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1 PYTHONPATH=$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}
{
  date -u '+%Y-%m-%d %H:%M UTC'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
} > "$OUT/summary.txt" 2>&1

for s in "${STEPS[@]}"; do
  IFS='|' read -r name budget what cmd <<<"$s"
  log="$OUT/$name.log"
  [ "$name" = setup ] && log="$OUT/summary.txt"
  if [ "$name" = bench ] && [ ! -f "$RUN/meta.json" ]; then
    cmd=${cmd% --checkpoint-run *}  # no checkpoint from step 2: benchmarks only
  fi
  echo "== $name (${budget} s): $what" | tee -a "$OUT/summary.txt"
  t0=$SECONDS
  timeout -k 5 "$budget" bash -c "$cmd" >>"$log" 2>&1
  rc=$?
  echo "$name: exit $rc$( [ $rc = 124 ] && echo ' (budget spent)') in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
  case $name in
    reproduce)  # what step 2 left, finished or not
      cp "$WORK/figures/ablation.md" "$OUT/" 2>/dev/null
      (cd "$WORK" && tar -czf "$OUT_ABS/reproduce.tar.gz" --ignore-failed-read figures runs/notebooks \
        runs/seed42/notebooks runs/seed42/meta.json runs/seed42/train.log runs/seed42/eval/results.json \
        runs/seed42/eval/ablation.md runs/seed42/FAILED.json 2>/dev/null) ;;
    bench)
      grep '^{' "$log" | tail -1 > "$OUT/bench.json"
      grep -E '^(train|sliding|dynamic)|torch ' "$log" | tee -a "$OUT/summary.txt" ;;
  esac
done
echo "done in $SECONDS s" | tee -a "$OUT/summary.txt"
