#!/usr/bin/env bash
# Does a change keep the numbers? Trains a tiny model and scores every variant three ways -- eager,
# compiled (torch.compile with backend aot_eager: dynamo's capture, guards and recompiles on the CPU) and
# under the GPU dtype policy on the CPU (bf16 tables and linears, bf16 autocast; the eager run's weights
# re-exported) -- once with the code of REV and once with the working tree, and compares: the sha256 of
# final_model.pt and of the artifact, the export round trip, every variant's nats/bpb/bytes/tokens, and
# the graphs each compiled region made. Exit 0 when all are equal, 1 when any differs.
#
# Usage, from the repo root:  bash scripts/bitwise_check.sh REV [OUT]     (e.g. REV = main, HEAD~3)
# About 4 minutes per side on a 2-core CPU; OUT (default /tmp/bitwise_check) keeps both sides' runs.
# The smoke profile's own check is `python -m dyneval reproduce --profile smoke --seeds 42` on both sides.
set -euo pipefail
REV=${1:?usage: bash scripts/bitwise_check.sh REV [OUT]}
OUT=$(realpath -m "${2:-/tmp/bitwise_check}")
HERE=$(pwd)
OLD="$OUT/code_$(git rev-parse --short "$REV")"
mkdir -p "$OUT"
rm -rf "$OLD" && mkdir -p "$OLD" && git archive "$REV" | tar -x -C "$OLD"
DATA="$OUT/data"
if [ ! -d "$DATA/datasets" ]; then
  PYTHONPATH="$HERE" python -c "from dyneval import corpus; from pathlib import Path; corpus.build_embedded(Path('$DATA'), log=lambda *_: None)"
fi
TINY="model.num_layers=3 model.model_dim=64 model.num_heads=2 model.num_kv_heads=1 model.bigram_vocab_size=64
model.bigram_dim=16 model.xsa_last_n=1 model.rope_dims=8 train.train_batch_tokens=1024 train.train_seq_len=128
train.iterations=5 train.warmup_steps=1 train.val_loss_every=0 train.val_batch_size_tokens=1024
train.max_val_tokens=2049 train.grad_accum_total=2 train.checkpoint_every=0 train.train_log_every=1
train.warmdown_iters=2 optim.muon_momentum_warmup_steps=3 train.ema_decay=0.5 train.late_qat_threshold=0.6
train.qat_trains=1 eval.eval_seq_len=128 eval.eval_stride=32 eval.eval_batch_seqs=4 eval.max_val_tokens=2049
eval.ttt_batch_seqs=2 eval.ttt_chunk_tokens=512 eval.ttt_epochs=1 eval.krause_batches=2
train.data_path=$DATA/datasets/embedded_sp1024 train.tokenizer_path=$DATA/tokenizers/embedded_1024_bpe.model"
COMPILED="train.compile=1 train.compile_backend=aot_eager eval.compile=1 eval.compile_backend=aot_eager eval.compile_dynamic=1"
sets() { for s in "$@"; do printf -- "--set %s " "$s"; done; }
evalsets() { for s in "$@"; do case $s in eval.*) printf -- "--set %s " "$s";; esac; done; }

side() {  # side CODE_DIR RUN_DIR: the three modes with one side's code
  local code=$1 runs=$2
  rm -rf "$runs"; mkdir -p "$runs"
  (cd "$code" && export PYTHONPATH="$code" OMP_NUM_THREADS=1
   python -m dyneval train --profile smoke --out "$runs/eager" --device cpu $(sets $TINY) > "$runs/eager.log" 2>&1
   python -m dyneval evaluate --run-dir "$runs/eager" --variants all --device cpu --out "$runs/eager/eval" \
     $(evalsets $TINY) >> "$runs/eager.log" 2>&1
   python -m dyneval train --profile smoke --out "$runs/compiled" --device cpu $(sets $TINY $COMPILED) \
     > "$runs/compiled.log" 2>&1
   python -m dyneval evaluate --run-dir "$runs/compiled" --variants all --device cpu --out "$runs/compiled/eval" \
     $(evalsets $TINY $COMPILED) >> "$runs/compiled.log" 2>&1
   # train.gpu_dtypes=1 does not train on the CPU (CUDA autocast): the eager run re-exported under the policy
   mkdir -p "$runs/bf16" && cp "$runs/eager/final_model.pt" "$runs/eager/meta.json" "$runs/bf16/"
   python -c "import json,sys; p=sys.argv[1]; m=json.load(open(p)); m['config']['train']['gpu_dtypes']='1'; json.dump(m, open(p, 'w'))" "$runs/bf16/meta.json"
   python -m dyneval export "$runs/bf16" --device cpu > "$runs/bf16.log" 2>&1
   python -m dyneval evaluate --run-dir "$runs/bf16" --variants all --device cpu --out "$runs/bf16/eval" \
     $(evalsets $TINY eval.gpu_dtypes=1) >> "$runs/bf16.log" 2>&1) || { echo "$runs: a run failed (see its logs)"; exit 2; }
}

echo "bitwise_check: $REV ($OLD) against the working tree ($HERE), runs in $OUT"
side "$OLD" "$OUT/old"
side "$HERE" "$OUT/new"
python - "$OUT/old" "$OUT/new" <<'PY'
import hashlib, json, sys
from pathlib import Path

def summary(root: Path) -> dict:
    s = {}
    for mode in ("eager", "compiled", "bf16"):
        d = root / mode
        for f in ("final_model.pt", "final_model.int6.ptz"):
            s[f"{mode}/{f}"] = hashlib.sha256((d / f).read_bytes()).hexdigest()
        if (d / "export.json").is_file():
            rt = json.loads((d / "export.json").read_text()).get("roundtrip") or {}
            s[f"{mode}/export_roundtrip"] = [rt.get(k) for k in ("nats", "bpb", "bytes", "tokens")]
        for name, r in json.loads((d / "eval" / "results.json").read_text()).items():
            s[f"{mode}/{name}"] = [r.get(k) for k in ("nats", "bpb", "bytes", "tokens")]
            s[f"{mode}/{name}/graphs"] = {k: v.get("graphs") for k, v in (r.get("graphs") or {}).items()}
    return s

old, new = (summary(Path(p)) for p in sys.argv[1:3])
differ = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
for k in differ:
    print(f"DIFF {k}: {old.get(k)} != {new.get(k)}")
print(f"bitwise_check: {len(old)} entries, {len(differ)} differ; e.g. eager sliding bpb {old.get('eager/sliding', [0, None])[1]!r}")
sys.exit(1 if differ else 0)
PY
