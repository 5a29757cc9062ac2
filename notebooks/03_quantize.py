# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Quantize: the int6 artifact under 16 MB
#
# The submission is code + `zstd -22` of `torch.save({"w", "m"})`: attention and MLP matrices as
# per-row **int6** (fp16 scales), the token table as per-row **int8** with a 99.99984th-percentile
# clip, tensors of at most 65,536 values passed through as fp16. Training wrote the artifact; here we
# look at what it holds, check it against the 16,000,000-byte cap, and measure what the rounding costs.
# Every later score is computed from these bytes.

# %% tags=["parameters"]
profile: str = "smoke"  # record, record_1gpu, smoke or gpu_smoke
seed: int = 42  # RNG seed of the run
run_dir: str = "runs/notebook/seed42"  # where this seed's files go
overrides: str = ""  # comma-separated config overrides (README: Overrides)
data_root: str = "data"  # datasets/ and tokenizers/ live under it

# %%
import json
from collections import Counter
from pathlib import Path

from dyneval import notebook, quant

params = notebook.check_parameters(dict(profile=profile, seed=seed, run_dir=run_dir, overrides=overrides,
                                        data_root=data_root))
run_dir, data_root = params["run_dir"], params["data_root"]  # relative paths resolve from the project root
run = Path(run_dir)
meta = json.loads((run / "meta.json").read_text())
size = quant.size_report(run / "final_model.int6.ptz")
print(f"model {size['model_bytes']:,} + code {size['code_bytes']:,} = {size['total_bytes']:,} bytes "
      f"({'under' if size['under_cap'] else 'OVER'} the {size['cap_bytes']:,} cap, headroom {size['headroom_bytes']:,})")
print(size["code_definition"])

# %% [markdown]
# ## What each tensor became
# The artifact is read with `weights_only=True`: it can hold tensors and plain containers, never code.

# %%
tensors, qmeta = quant.read_artifact(run / "final_model.int6.ptz")
kinds = Counter(m if isinstance(m, str) else m["type"] for m in qmeta.values())
print(dict(kinds))
for name, m in list(qmeta.items())[:12]:
    print(f"  {name:32s} {m if isinstance(m, str) else m['type']}")

# %% [markdown]
# ## What the rounding costs
# The EMA weights before export, and the same weights after int6/int8 and back, scored the same way
# (non-overlapping windows, as the run's training log does).

# %%
e, r = meta["final_ema"], meta["final_int6_roundtrip"]
print(f"before export: val_bpb {e['bpb']:.4f}   after int6 round trip: {r['bpb']:.4f}   "
      f"(cost {r['bpb'] - e['bpb']:+.4f} bpb)")
