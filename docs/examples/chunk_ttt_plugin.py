"""A plugin for `python -m dyneval legality --plugin`: two chunked test-time trainings, one line apart.

A plugin is a Python file with a module-level `VARIANTS`: a list of the registry's `Variant` records
(`dyneval/variants.py`), each with the function that runs it on a `Job` (fresh weights from the
artifact, `job.scorer`: the stream, its byte LUT, windows and ranks, the config) and returns (EvalResult,
settings).

Both variants cut the stream into chunks of `eval.ttt_chunk_tokens` targets (a sliding window belongs
to the chunk of its first scored target) and take one SGD step per chunk on the chunk's tokens, as
`eval_seq_len` sequences:

- `chunk_score_then_train` scores a chunk, then trains on it: legal.
- `chunk_train_then_score` trains on a chunk, then scores it: it peeks only inside its own chunk, so
  a prefix P on a chunk boundary cannot see it (every peek before P stays before P). It is marked
  legal here, as its author might believe; the default prefixes, never on a chunk boundary, catch it
  and `legality` exits with status 1.

One process only (the plugin ignores ranks: `rank_local=False`).
"""

import time

import numpy as np
import torch

from dyneval.evaluate import Scorer, Windows, reduce_result, score_windows
from dyneval.variants import LEGAL, Variant

LR = 0.01  # one plain SGD step per chunk: enough to move every later score of a small model


def train_on(model, opt, sc: Scorer, lo: int, hi: int) -> None:
    """One SGD step on the whole sc.plan.seq_len sequences of targets [lo, hi) (tokens lo .. hi at most)."""
    seq_len = sc.plan.seq_len
    n = (hi - lo) // seq_len
    if n <= 0:
        return
    seqs = Windows(lo + np.arange(n, dtype=np.int64) * seq_len, np.full(n, seq_len, dtype=np.int64),
                   np.zeros(n, dtype=np.int64), seq_len)
    x, y, _ = sc.batch(seqs, sc.tokens.device)
    model.train()
    loss = model(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def chunked(train_first: bool, name: str):
    def run(job):
        t0 = time.perf_counter()
        sc, chunk = job.scorer, job.cfg.eval.ttt_chunk_tokens
        model = job.model()
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        windows = sc.sliding()
        chunk_of = (windows.starts + windows.score_from) // chunk
        parts = []
        for c in range(int(chunk_of.max()) + 1):
            idx = np.nonzero(chunk_of == c)[0]
            if not len(idx):
                continue
            lo, hi = c * chunk, min((c + 1) * chunk, sc.num_targets)
            if train_first:  # NOT legal: the step sees this chunk's targets before they are scored
                train_on(model, opt, sc, lo, hi)
            model.eval()
            parts.append(score_windows(sc, model, windows.slice(int(idx[0]), int(idx[-1]) + 1)))
            if not train_first:  # legal: every target it trains on is scored already
                train_on(model, opt, sc, lo, hi)
        return reduce_result(name, parts, time.perf_counter() - t0), {"lr": LR, "chunk_tokens": chunk}
    return run


VARIANTS = [
    Variant("chunk_score_then_train", True, LEGAL, False, False,
            "per chunk: score it, then one SGD step on it", chunked(False, "chunk_score_then_train")),
    Variant("chunk_train_then_score", True, "its author believes it legal (it is not)", False, False,
            "per chunk: one SGD step on it, then score it", chunked(True, "chunk_train_then_score")),
]
