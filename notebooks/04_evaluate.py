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
# # 04 · Evaluate: every scoring and adaptation variant on one checkpoint
#
# The run's headline (1.1364) compared its *non-overlapping* score after TTT with a *sliding-window*
# score plus dynamic eval. Here every effect is measured on the same int6 artifact:
#
# | variant | what it does | legal? |
# |---|---|---|
# | `nonoverlap` | independent L-token sequences | yes |
# | `sliding` | windows every S tokens, each scores its last S: the baseline of every Δ | yes |
# | `pre_eval_ttt` (+`nonoverlap`, +`dynamic`) | the run's TTT: 3 epochs of SGD on the val tokens **before** scoring them | **no** |
# | `dynamic` | the run's dynamic eval: one SGD step per 4 batches on that batch's first window, through int6 fake quantization | yes |
# | `score_first_ttt` (+`dynamic`) | the merged records' legal TTT: score a 32k-token chunk, then train on it | yes |
# | `dynamic_tail`, `_mlp`, `dynamic_krause` | improved: a step after every batch on exactly the targets it scored, fp32 master weights, optional Krause RMS normalisation with decay | yes |
#
# Legal means: a token is trained on only after it has been scored. The test suite checks this for
# every variant marked legal (two streams equal up to token P give bitwise equal scores up to P).

# %% tags=["parameters"]
profile: str = "smoke"  # record, record_1gpu, smoke or gpu_smoke
seed: int = 42  # RNG seed of the run
run_dir: str = "runs/notebook/seed42"  # where this seed's files go
overrides: str = ""  # comma-separated config overrides (README: Overrides)
data_root: str = "data"  # datasets/ and tokenizers/ live under it

# %%
from pathlib import Path

from IPython.display import Markdown, display

from dyneval import notebook

run = notebook.setup(profile=profile, seed=seed, run_dir=run_dir, overrides=overrides, data_root=data_root)
run_dir = run.run_dir  # relative paths resolve from the project root, in JupyterLab and papermill alike
results = notebook.evaluate_stage(run.cfg, run_dir, "all")
display(Markdown((run_dir / "eval" / "ablation.md").read_text()))

# %% [markdown]
# ## The published run beside this one
# For the record profiles (`record`, `record_1gpu`): the run's published final numbers for this seed
# (its logs, shipped with the package) beside the reproduced ones. The run's `final_int6_roundtrip`
# was scored after its pre-eval TTT, so it compares with `pre_eval_ttt+nonoverlap`. The smoke
# profiles train other models, so nothing published is shown for them.

# %%
import json

from dyneval import report

meta = json.loads((Path(run_dir) / "meta.json").read_text())
display(Markdown(report.published_markdown(meta, results)))

# %% [markdown]
# ## Where the bits go along the stream
# Cumulative bpb as the stream is scored: adaptation that helps pulls its curve below `sliding` as
# it sees more of the text; the run's pre-eval TTT starts below because it has already trained on
# the whole stream (not legal).

# %%
import matplotlib.pyplot as plt
import numpy as np

fig, ax = plt.subplots(figsize=(7, 4))
for v in report.FIGURE_VARIANTS:
    p = run_dir / "eval" / f"{v}.npz"
    if p.is_file():
        s = report.ordered_stream(p)
        ax.plot(s["first_scored"] + s["num_scored"], np.cumsum(s["nats"]) / np.log(2) / np.cumsum(s["bytes"]),
                label=v, lw=1, ls="-" if results[v]["legal"] else "--")
ax.set(xlabel="position in the validation stream (tokens)", ylabel="cumulative bpb", title=f"seed {seed}")
ax.set_ylim(min(r["bpb"] for r in results.values() if "bpb" in r) - 0.15, None)
ax.legend(fontsize=7)
plt.show()
