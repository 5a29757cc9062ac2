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
# score plus dynamic eval. Here every effect is measured on the same int6 artifact, one variant at a
# time. Legal means: a token is trained on only after it has been scored (the challenge's rule).

# %% tags=["parameters"]
profile: str = "smoke"  # record, record_1gpu, smoke or gpu_smoke
seed: int = 42  # RNG seed of the run
run_dir: str = "runs/notebook/seed42"  # where this seed's files go
overrides: str = ""  # comma-separated config overrides (README: Overrides)
data_root: str = "data"  # datasets/ and tokenizers/ live under it

# %% [markdown]
# ## The variants
# Each variant is one record of the registry (`dyneval/variants.py`): what it does, whether it is
# legal and why. The sizes it works with come from this run's config.

# %%
from IPython.display import Markdown, display

from dyneval import notebook
from dyneval.variants import VARIANTS, EvalOptions

run = notebook.setup(profile=profile, seed=seed, run_dir=run_dir, overrides=overrides, data_root=data_root)
run_dir = run.run_dir  # relative paths resolve from the project root, in JupyterLab and papermill alike
e = run.cfg.eval
display(Markdown("| variant | what it does | legal | why |\n|---|---|---|---|\n" + "\n".join(
    f"| `{v.name}` | {v.description} | {'yes' if v.legal else '**no**'} | {v.reason} |" for v in VARIANTS.values())))
print(f"this run: windows of L = {e.eval_seq_len} tokens, stride S = {e.eval_stride}; score-first TTT chunks of "
      f"{e.ttt_chunk_tokens:,} tokens, {e.ttt_epochs} epoch(s); dynamic eval every {e.adapt_every} batch(es) "
      f"of {e.eval_batch_seqs} windows")

# %% [markdown]
# ## Scoring every variant
# The evaluate stage runs as its own process (torchrun on GPUs) and writes `eval/results.json`, one
# stream per variant and the table below.

# %%
results = notebook.evaluate_stage(run.cfg, run_dir, "all")
display(Markdown((run_dir / "eval" / "ablation.md").read_text()))

# %% [markdown]
# How to read the table: every Δ is against `sliding` on the same artifact, so it measures the
# variant alone. On the smoke and record profiles `nonoverlap` sits above `sliding` (the first tokens
# of each of its windows see little context; on a tiny undertrained model the difference can go either
# way); the `pre_eval_ttt` rows sit below it but are **not legal** (they trained on the tokens they
# then score); among the legal rows, compare `dynamic` (the run's own dynamic eval, faithful to
# its quirks) with `dynamic_tail` and `dynamic_krause`: a negative Δ there is what adaptation buys
# within the rules. The seconds column is the price. One seed says nothing about significance:
# notebook 05 puts the seeds together with paired t-tests.
#
# ## The published run beside this one
# For the record profiles (`record`, `record_1gpu`): the run's published final numbers for this seed
# (its logs, shipped with the package) beside the reproduced ones. The run's `final_int6_roundtrip`
# was scored after its pre-eval TTT, so it compares with `pre_eval_ttt+nonoverlap`. The smoke
# profiles train other models, so nothing published is shown for them.

# %%
from dyneval import report
from dyneval.runfolder import RunFolder

folder = RunFolder(run_dir)
meta = folder.read_meta()
display(Markdown(report.published_markdown(meta, results)))

# %% [markdown]
# On a record profile, the difference column is the reproduction's error: steps and bytes should be
# within a few parts per thousand, the bpb within about 0.001 (other kernels, another seed's data
# order). On the smoke profile the line above says why there is nothing to compare.
#
# ## Where the bits go along the stream
# Cumulative bpb as the stream is scored (`stats.cumulative_bpb` of each variant's stream, drawn by
# `figures.plot_cumulative`, as in the report's `cumulative_bpb.png`).

# %%
import matplotlib.pyplot as plt

from dyneval import figures, stats

streams = report.eval_streams(folder.eval_dir, results)
curves = {v: (stats.scored_end(s), stats.cumulative_bpb(s)) for v, s in streams.items() if v in figures.FIGURE_VARIANTS}
fig, ax = plt.subplots(figsize=(7, 4))
figures.plot_cumulative(ax, curves, {v: r.get("legal", False) for v, r in results.items()}, seed)
ax.set_ylim(min(r["bpb"] for r in results.values() if "bpb" in r) - 0.15, None)
plt.show()

# %% [markdown]
# Look at the right end of each curve (it is the variant's bpb) and at where the curves part. The
# first windows are noisy for every variant. A legal adaptation starts on `sliding`'s curve and bends
# below it as it reads on, because it can only learn from text it has already scored; the run's
# pre-eval TTT (dashed, not legal) is below from the first token, because it trained on the whole
# stream before scoring any of it. A curve that bends *above* `sliding` is adaptation that hurts.
#
# ## Is it legal? The prefix check on a short stream
# The check behind the legal column, run here on the first few windows only (cheap on a CPU): each
# variant scores the stream and a copy whose tokens after a position P are replaced by random pieces;
# a legal variant gives every window that lies wholly before P bitwise the same score on both.
# `python -m dyneval legality --run-dir RUN` runs it on the whole stream at three prefixes.

# %%
import dataclasses

from dyneval import legality
from dyneval.runfolder import RunFolder

short = 8 * e.eval_seq_len + 1  # eight windows' worth of tokens
if e.max_val_tokens:
    short = min(short, e.max_val_tokens)
short_cfg = dataclasses.replace(run.cfg, eval=dataclasses.replace(e, max_val_tokens=short))
prefix = legality.default_prefixes(short - 1, short_cfg.eval, fractions=(0.5,))
checked = [VARIANTS[n] for n in ("sliding", "pre_eval_ttt", "score_first_ttt", "dynamic_krause")]
verdicts = legality.check_checkpoint(short_cfg, RunFolder(run_dir).latest_artifact(), checked, prefix,
                                     EvalOptions(qat_flag_set=meta.get("late_qat_step") is not None), log=print)

# %% [markdown]
# Read one line per variant. `sliding` is prefix-invariant trivially (it never adapts). `pre_eval_ttt`
# is caught: its first differing window is window 0, because its weights were trained on tokens after P
# before anything was scored; that is why its rows are marked **no** above, whatever their bpb.
# `score_first_ttt` and `dynamic_krause` adapt too, yet every window before P scores bitwise the same:
# they only learn from tokens already scored. A variant marked legal that is *not* shown prefix-invariant
# here is a bug (or a leak) in that variant: the command line exits 1 on it.
