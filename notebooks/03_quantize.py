# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
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
# clip, tensors of at most 65,536 values passed through as fp16. This notebook runs the export stage
# on the trained run's `final_model.pt`: it writes the artifact, checks it against the 16,000,000-byte
# cap, and measures what the rounding costs. Every later score is computed from these bytes.
#
# The three quantization parameters below are the run's by default (then the artifact is the one
# training wrote, byte for byte, and the export is skipped); change them to re-quantize the run, e.g.
# `clip_quantile=0.999` clips each int8 row harder, `bits=5` uses a coarser grid for the matrices.

# %% tags=["parameters"]
profile: str = "smoke"  # record, record_1gpu, smoke or gpu_smoke
seed: int = 42  # RNG seed of the run
run_dir: str = "runs/notebook/seed42"  # where this seed's files go
overrides: str = ""  # comma-separated config overrides (README: Overrides)
data_root: str = "data"  # datasets/ and tokenizers/ live under it
bits: int = 6  # bits of the per-row grid of attention and MLP matrices (the run: 6)
clip_quantile: float = 0.9999984  # per-row clip of the int8 tensors (the run: 0.9999984)
passthrough_max_numel: int = 65536  # tensors this small are stored as fp16 as they are (the run: 65536)

# %%
from collections import Counter

from dyneval import notebook, quant
from dyneval.runfolder import RunFolder

run = notebook.setup(profile=profile, seed=seed, run_dir=run_dir, overrides=overrides, data_root=data_root,
                     bits=bits, clip_quantile=clip_quantile, passthrough_max_numel=passthrough_max_numel)
meta = RunFolder(run.run_dir).read_meta()  # what training's own export wrote
settings = quant.QuantSettings(**run.extra)
exported = notebook.export_stage(run.run_dir, settings)
size = exported["size"]
print(f"model {size['model_bytes']:,} + code {size['code_bytes']:,} = {size['total_bytes']:,} bytes "
      f"({'under' if size['under_cap'] else 'OVER'} the {size['cap_bytes']:,} cap, headroom {size['headroom_bytes']:,})")
print(size["code_definition"])

# %% [markdown]
# The line to look at is the headroom: what is left under the 16,000,000-byte cap for a bigger model.
# The model bytes are the compressed artifact, the code bytes the package's source; both count.

# %% [markdown]
# ## What each tensor became
# The artifact is read with `weights_only=True`: it can hold tensors and plain containers, never code.

# %%
tensors, qmeta = quant.read_artifact(RunFolder(run.run_dir).latest_artifact())  # final_model.int{bits}.ptz
kinds = Counter(m if isinstance(m, str) else m["type"] for m in qmeta.values())
print(dict(kinds))
for name, m in list(qmeta.items())[:12]:
    print(f"  {name:32s} {m if isinstance(m, str) else m['type']}")

# %% [markdown]
# The counts say where the bytes go: the attention and MLP matrices are the int6 (or `bits`) entries,
# the token table the int8 one, and everything of at most `passthrough_max_numel` values stays fp16.
# On the smoke profile many tensors are small enough to pass through; on the record nearly all the
# parameters are in the int6 matrices.

# %% [markdown]
# ## What the rounding costs
# The EMA weights before export, the artifact training wrote with the run's settings, and this
# notebook's export, all scored the same way (non-overlapping windows, as the run's training log does;
# before any adaptation).

# %%
e, t, r = meta["final_ema"], meta["int6_roundtrip"], exported.get("roundtrip", exported.get("int6_roundtrip"))
print(f"before export:                        val_bpb {e['bpb']:.4f}")
print(f"training's export (the run's settings): val_bpb {t['bpb']:.4f}  ({t['bpb'] - e['bpb']:+.4f})  "
      f"{meta['size']['model_bytes']:,} bytes")
print(f"this export {exported['settings']}: val_bpb {r['bpb']:.4f}  ({r['bpb'] - e['bpb']:+.4f})  "
      f"{size['model_bytes']:,} bytes ({size['model_bytes'] - meta['size']['model_bytes']:+,})")

# %% [markdown]
# The rounding's cost is the difference to "before export" (in brackets). Hold it against the Δs of 04:
# a rounding cost as large as an adaptation's gain would decide which variant wins. A re-export with
# fewer bits or a harder clip trades bytes (the last number) for bpb (the one before it); every variant
# in 04 is scored on the artifact this notebook leaves behind.
