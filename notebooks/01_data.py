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
# # 01 · Data: shards, tokenizer and byte accounting
#
# The challenge scores **bits per byte** on a fixed validation stream. Everything starts from token
# shards in its format (a 256-word int32 header — magic 20240520, version 1, token count — then uint16
# tokens, every document opened by BOS = 1) and from the SentencePiece model that says how many UTF-8
# bytes each token stands for.
#
# - `profile="smoke"` and `"gpu_smoke"` build the **embedded default corpus**: the English
#   documentation text every CPython ships (pydoc topics and the standard library's docstrings), a
#   1024-piece BPE trained with the challenge's settings, train/val shards. Nothing is downloaded.
# - `profile="record"` / `"record_1gpu"` fetch the challenge's **FineWeb export** from the Hugging Face
#   Hub (`willdepueoai/parameter-golf`): manifest, tokenizer, all val shards, 80 train shards.
#
# Both are cached: a second run reuses what is on disk when it verifies.

# %% tags=["parameters"]
profile: str = "smoke"  # record, record_1gpu, smoke or gpu_smoke
seed: int = 42  # RNG seed of the run
run_dir: str = "runs/notebook/seed42"  # where this seed's files go
overrides: str = ""  # comma-separated config overrides (README: Overrides)
data_root: str = "data"  # datasets/ and tokenizers/ live under it

# %%
import torch

from dyneval import data, notebook

run = notebook.setup(profile=profile, seed=seed, run_dir=run_dir, overrides=overrides, data_root=data_root)
cfg = run.cfg  # relative paths resolve from the project root, in JupyterLab and papermill alike
manifest = notebook.prepare_data(run.profile, run.data_root)

# %% [markdown]
# ## What is on disk
# Every shard's header is checked against its size before anything reads it.

# %%
val_files = data.shard_files(data.val_pattern(cfg.train.data_path))
train_files = data.shard_files(data.train_pattern(cfg.train.data_path))
for f in val_files + train_files[:4]:
    print(f"{f.name}: {data.read_header(f):,} tokens")
print(f"{len(train_files)} train shard(s) in all")

# %% [markdown]
# Every shard listed has a token count its size agrees with (a truncated download would have been
# refused before this cell printed). The validation shards are the whole scoring stream: every
# variant in 04 scores these same tokens, capped by `eval.max_val_tokens` on the CPU profiles.

# %% [markdown]
# ## Byte accounting
# A target token's bytes are the UTF-8 length of its piece without the leading "▁" (byte-fallback
# pieces count 1; control/unknown/unused 0), plus one for the space that "▁" stands for unless the
# previous token is a control token. bpb = (nats / ln 2) / bytes: the tokenizer cannot game it.

# %%
lut = data.build_byte_lut(cfg.train.tokenizer_path, cfg.model.vocab_size)
val = data.load_validation_tokens(data.val_pattern(cfg.train.data_path), cfg.eval.eval_seq_len,
                                  cfg.eval.max_val_tokens)
nbytes = data.count_bytes(val, lut)
docs = int((val == data.BOS_ID).sum())
print(f"validation: {val.numel():,} tokens, {docs} documents, {nbytes:,.0f} bytes, "
      f"{nbytes / (val.numel() - 1):.3f} bytes per token")

# %% [markdown]
# Bytes per token is the exchange rate between the model's loss and the score: bpb = loss / ln 2 /
# (bytes per token). A 1024-piece vocabulary gives a little over two bytes per token on English text
# (the record's FineWeb export: about 2.4), so a loss of 1.9 nats is near 1.1 bpb there. Below, the
# first document's first pieces with the bytes each is credited with: "▁" (a word start) adds the
# space byte, control pieces add none.

# %%
sp = data.load_tokenizer(cfg.train.tokenizer_path)
first_doc = val[: int(torch.nonzero(val[1:] == data.BOS_ID)[0]) + 1] if docs > 1 else val[:200]
pieces = [sp.id_to_piece(int(t)) for t in first_doc[1:40]]
counts = lut.target_bytes(first_doc[:39], first_doc[1:40]).long().tolist()
print(" ".join(f"{p}:{c}" for p, c in zip(pieces, counts)))
print("\n" + sp.decode(first_doc[1:].tolist())[:600])

# %% [markdown]
# Check that the byte counts read as the text does: a word-start piece counts its letters plus one,
# a piece inside a word its letters only. A tokenizer that counted bytes differently would shift every
# bpb in this project by the same factor, which is why the byte table is built from the tokenizer file
# itself and checked against the data's.

