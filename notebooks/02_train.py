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
# # 02 · Train: the record run's loop
#
# The record trains an 11-layer, 512-wide GPT (U-Net skips, SmearGate, BigramHash, XSA on the last
# 4 layers, partial RoPE, relu² MLP) for 600 s on 8×H100 with Muon on the matrices and AdamW on the
# rest. This notebook launches `python -m dyneval train`:
#
# - on GPUs, as `torchrun` over **every visible GPU**; gradient accumulation is 8 / GPUs, so one GPU
#   does the same math as eight (use `record_1gpu`, which stops at the step count instead of the
#   600 s wall clock);
# - on the CPU, `smoke`: a 4-layer model on the embedded corpus in about two minutes.
#
# The log streams into the cell. Checkpoints are written every `checkpoint_every` steps; if the kernel
# dies, running this cell again resumes from the last one.

# %% tags=["parameters"]
profile: str = "smoke"  # record, record_1gpu, smoke or gpu_smoke
seed: int = 42  # RNG seed of the run
run_dir: str = "runs/notebook/seed42"  # where this seed's files go
overrides: str = ""  # comma-separated config overrides (README: Overrides)
data_root: str = "data"  # datasets/ and tokenizers/ live under it

# %%
from dyneval import notebook

run = notebook.setup(profile=profile, seed=seed, run_dir=run_dir, overrides=overrides, data_root=data_root)
cfg = run.cfg  # relative paths resolve from the project root, in JupyterLab and papermill alike
print(f"{notebook.num_processes(cfg)} process(es); {cfg.train.iterations} steps of {cfg.train.train_batch_tokens:,} tokens")
meta = notebook.train_stage(cfg, run.run_dir)

# %% [markdown]
# ## Training curves
# Train loss per step, and the non-overlapping validation bpb at the periodic evaluations. The final
# weights are the EMA of every step's weights. Late QAT's flag is set once the learning-rate scale falls
# below 0.1 and, as in the run, never cleared; as in the run's compiled training graph, the steps after
# it do not fake-quantize (`train.qat_trains=1` makes them).
#
# For the record profiles (`record`, `record_1gpu`) the run's published curves (its three seeds on
# 8×H100) are drawn beneath in grey, step for step: a reproduction of the run lies on them. The
# smoke profiles train other models or batches, so nothing published is shown for them.

# %%
import matplotlib.pyplot as plt

from dyneval import report

fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
note = report.plot_training_curves(a, b, {seed: meta})
fig.tight_layout()
plt.show()
print(note)
print(f"{meta['steps']} steps in {meta['train_seconds']:.1f} s; EMA weights: val bpb {meta['final_ema']['bpb']:.4f}")
