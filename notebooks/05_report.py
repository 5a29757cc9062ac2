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
# # 05 · Report: all seeds, with statistics
#
# One number per variant is not a result. For every variant: the mean ± std of bpb over seeds, the
# **paired** difference to `sliding` on the same checkpoint, a one-sided t-test over seeds, and the
# challenge's bar for a new record (0.005 nats better at p < 0.01). Failed seeds are listed, not
# dropped silently. Tables go to Markdown and CSV, figures to PNG and SVG.

# %% tags=["parameters"]
runs_root: str = "runs/reproduce/smoke"  # folder holding seed<N>/ run folders
figures_dir: str = ""  # where tables and figures are written; empty: <runs_root>/figures (`figures` refreshes the committed ones)

# %%
from pathlib import Path

from IPython.display import Image, Markdown, display

from dyneval import notebook, report

runs_root = notebook.resolve(runs_root)
figures_dir = notebook.resolve(figures_dir) if figures_dir else runs_root / "figures"
r = report.build_report(runs_root, figures_dir)
display(Markdown(Path(figures_dir, "ablation.md").read_text()))

# %% [markdown]
# ## Cumulative bpb over the validation stream (first seed)

# %%
display(Image(str(Path(figures_dir, "cumulative_bpb.png"))))

# %% [markdown]
# ## Δbpb vs sliding per chunk of the stream (mean over seeds)
# Below zero: the variant scores that part of the stream better than plain sliding windows.

# %%
display(Image(str(Path(figures_dir, "delta_per_chunk.png"))))

# %% [markdown]
# ## Per-document gains
# Each point is one document of one seed: how much a variant changed its bpb against sliding.

# %%
display(Image(str(Path(figures_dir, "per_document_gain.png"))))

# %% [markdown]
# ## What each second of evaluation buys
# Every variant's Δbpb vs sliding (mean ± std over seeds) against its evaluation seconds, legal
# variants as circles and not-legal ones as red crosses; the step line is the legal Pareto front, the
# best Δ each budget buys. The seconds are labelled with the hardware they were measured on; the
# challenge's 600 s line appears only for seconds measured on 8 real GPUs (otherwise the figure says why).

# %%
display(Image(str(Path(figures_dir, "eval_budget.png"))))

# %% [markdown]
# ## Training curves

# %%
display(Image(str(Path(figures_dir, "training_curves.png"))))
