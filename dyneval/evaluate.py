"""Evaluation: the run's scoring passes as pure functions sharing one result type.

Owns the window plans (non-overlapping and sliding, docs/NUMERICS.md 'Scoring'), batched scoring with
vectorised byte accounting, the per-window stream, and the reduction of sums across ranks. Every pass
takes one `Scorer` (what is scored -- the stream and its byte LUT --, in which windows, on which ranks,
under which autocast), and every pass splits its windows over ranks in one loop (`score_copies`). The
adaptation passes (`adapt.py`, `doc_ttt.py`) reuse the Scorer's batches and scoring so that every variant
scores the same tokens with the same arithmetic.

Token conventions: `tokens` is the trimmed validation stream of N+1 tokens; target i is tokens[i+1]
predicted from tokens[: i+1]. A window starting at `start` with length `wlen` feeds inputs
tokens[start : start+wlen] and scores targets start+s .. start+wlen-1 (s = its first scored offset).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import distributed as dist_utils, files
from .config import Scoring
from .data import ByteLUT
from .distributed import SINGLE, Ranks
from .model import bf16_autocast

STREAM_FIELDS = ("window_start", "first_scored", "num_scored", "nats", "bytes", "rank")


@dataclass
class EvalResult:
    """Sums of a scoring pass (reduced over ranks) and its per-window stream."""

    name: str
    nats: float
    tokens: float
    bytes: float
    seconds: float
    stream: dict = field(default_factory=dict)  # STREAM_FIELDS -> np.ndarray, one row per scored window
    notes: dict = field(default_factory=dict)  # what the pass reports beside its sums (e.g. doc_lora_ttt's phases)

    @property
    def loss(self) -> float:
        """Mean NLL per token, nats."""
        return self.nats / self.tokens

    @property
    def bpb(self) -> float:
        """Bits per byte: loss / ln 2 * tokens / bytes."""
        return self.nats / math.log(2) / self.bytes

    def summary(self) -> dict:
        return {"loss": self.loss, "bpb": self.bpb, "nats": self.nats, "tokens": self.tokens,
                "bytes": self.bytes, "seconds": self.seconds, "windows": int(len(self.stream.get("nats", [])))}

    def save_stream(self, path: str | Path) -> None:
        with files.atomic_open(path) as f:
            np.savez(f, **self.stream)


def require_finite(source: str, *results: EvalResult) -> None:
    """Refuse to report a non-finite score: a NaN bpb with exit status 0 looks like a result."""
    for r in results:
        if not (math.isfinite(r.nats) and math.isfinite(r.bytes) and r.tokens > 0 and r.bytes > 0):
            raise ValueError(f"{source}: {r.name} scored a non-finite loss/bpb (nats {r.nats}, bytes {r.bytes}): "
                             f"the weights or the adaptation diverged")


def load_stream(path: str | Path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


# ----------------------------------------------------------------------------------------------
# Window plans: (starts, lengths, first scored offsets), int64 arrays

@dataclass(frozen=True)
class Windows:
    starts: np.ndarray
    lengths: np.ndarray
    score_from: np.ndarray
    seq_len: int

    def __len__(self) -> int:
        return len(self.starts)

    def slice(self, lo: int, hi: int) -> "Windows":
        return Windows(self.starts[lo:hi], self.lengths[lo:hi], self.score_from[lo:hi], self.seq_len)

    def for_rank(self, rank: int, world_size: int) -> "Windows":
        """Rank r takes windows [n*r/W, n*(r+1)/W): contiguous slices, as the run splits them."""
        n = len(self)
        return self.slice(n * rank // world_size, n * (rank + 1) // world_size)


def nonoverlap_windows(num_targets: int, seq_len: int) -> Windows:
    """Sequences [k*L, (k+1)*L) for k < N // L, every target scored once."""
    n = num_targets // seq_len
    starts = np.arange(n, dtype=np.int64) * seq_len
    return Windows(starts, np.full(n, seq_len, dtype=np.int64), np.zeros(n, dtype=np.int64), seq_len)


def sliding_windows(num_targets: int, seq_len: int, stride: int) -> Windows:
    """Starts 0, S, 2S, ... < N; length min(L, N - start); the first scores all, the others the last S.

    Quirk kept: every window that reaches the end of the stream scores the same final targets, so
    those are counted several times (by up to L/S windows), as in the run.
    """
    starts = np.arange(0, num_targets, stride, dtype=np.int64)
    lengths = np.minimum(seq_len, num_targets - starts)
    score_from = np.where(starts == 0, 0, np.maximum(lengths - stride, 0))
    return Windows(starts, lengths, score_from, seq_len)


# ----------------------------------------------------------------------------------------------
# Batched scoring

def window_batch(tokens: torch.Tensor, w: Windows, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x, y (B, L) zero-padded, and the mask (B, L) of scored targets, built on the tokens' device."""
    L = w.seq_len
    dev = tokens.device
    offs = torch.arange(L, device=dev)
    starts = torch.as_tensor(w.starts, device=dev)[:, None]
    valid = offs[None, :] < torch.as_tensor(w.lengths, device=dev)[:, None]  # (B, L)
    idx = (starts + offs[None, :]).clamp_max(tokens.numel() - 2)
    x = torch.where(valid, tokens[idx], 0)
    y = torch.where(valid, tokens[idx + 1], 0)
    mask = valid & (offs[None, :] >= torch.as_tensor(w.score_from, device=dev)[:, None])
    return x.to(device), y.to(device), mask.to(device)


def score_batch(model, x, y, mask, lut: ByteLUT, autocast: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-window scored nats and bytes (float64, (B,)). Gradients follow the caller's grad mode."""
    with bf16_autocast(x, autocast):
        nll = model(x, y, reduction="none")  # (B, L) float32; `model` may be a compiled wrapper
    nats = (nll.double() * mask).sum(dim=1)
    nbytes = (lut.target_bytes(x, y) * mask).sum(dim=1)
    return nats, nbytes


def stream_rows(w: Windows, nats, nbytes, rank: int) -> dict:
    """The stream rows of windows `w` (STREAM_FIELDS) from their scored nats and bytes (numpy)."""
    return {"window_start": w.starts.copy(), "first_scored": w.starts + w.score_from,
            "num_scored": w.lengths - w.score_from, "nats": nats, "bytes": nbytes,
            "rank": np.full(len(w), rank, dtype=np.int64)}


def concat_streams(parts: list[dict]) -> dict:
    parts = [p for p in parts if p]
    if not parts:
        return {k: np.zeros(0) for k in STREAM_FIELDS}
    return {k: np.concatenate([p[k] for p in parts]) for k in STREAM_FIELDS}


def reduce_result(name: str, parts: list[dict], seconds: float) -> EvalResult:
    """Reduce the local stream rows to global sums (and the whole stream) across ranks."""
    local = concat_streams(parts)
    stream = concat_streams(dist_utils.all_gather_objects(local))
    order = np.lexsort((stream["window_start"], stream["rank"]))
    stream = {k: v[order] for k, v in stream.items()}
    nats, toks, nbytes = dist_utils.all_reduce_sums([float(np.sum(local["nats"])),
                                                    float(np.sum(local["num_scored"])),
                                                    float(np.sum(local["bytes"]))])
    return EvalResult(name, nats, toks, nbytes, dist_utils.max_over_ranks(seconds), stream)


def compiled(model, enabled):
    """The scoring forward, sharing the model's parameters: through `enabled` when it is a compiled
    region (`graphs.Region`, which counts its graphs), `torch.compile(model)` when it is True, else the model."""
    if hasattr(enabled, "forward"):
        return enabled.forward(model)
    return torch.compile(model, dynamic=False) if enabled else model


@dataclass(frozen=True, eq=False)  # holds tensors: compared by identity
class Scorer:
    """What is scored, how, and on which ranks: the one argument every scoring and adaptation pass shares.

    `tokens`: the stream of N+1 ids (N targets), a 1-D integer tensor on the scoring device
    (`data.load_validation_tokens`); `lut`: its byte accounting (`data.build_byte_lut`); `plan`: the
    windows' length, stride and windows per forward batch; `ranks`: the real processes and the virtual
    ranks that split it; `autocast`: bf16 autocast on every forward (the GPU dtype policy). The model and
    its (possibly compiled) forward are not part of it: adaptation passes score with copies of the weights
    that change as they go. A plan or stream that cannot be scored is refused here, in one line (a stride
    above the window length would silently leave targets unscored).
    """

    tokens: torch.Tensor
    lut: ByteLUT
    plan: Scoring
    ranks: Ranks = SINGLE
    autocast: bool = False

    def __post_init__(self):
        t, p = self.tokens, self.plan
        if not (isinstance(t, torch.Tensor) and t.dim() == 1 and not t.is_floating_point() and t.numel() >= 2):
            raise ValueError(f"Scorer: tokens must be a 1-D integer tensor of at least 2 ids (one target), not "
                             f"{type(t).__name__} {tuple(getattr(t, 'shape', ()))} {getattr(t, 'dtype', '')}")
        for name in ("seq_len", "stride", "batch_seqs"):
            if not (isinstance(getattr(p, name), int) and getattr(p, name) > 0):
                raise ValueError(f"Scorer: plan.{name}={getattr(p, name)!r} must be a positive integer")
        if p.stride > p.seq_len:
            raise ValueError(f"Scorer: plan.stride={p.stride} exceeds plan.seq_len={p.seq_len}: targets between "
                             f"windows would go unscored")

    @property
    def num_targets(self) -> int:
        return self.tokens.numel() - 1

    def sliding(self) -> Windows:
        return sliding_windows(self.num_targets, self.plan.seq_len, self.plan.stride)

    def nonoverlap(self) -> Windows:
        return nonoverlap_windows(self.num_targets, self.plan.seq_len)

    def batch(self, w: Windows, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x, y and the scored mask of windows `w` (`window_batch`) on `device`."""
        return window_batch(self.tokens, w, device)

    def score(self, forward, x, y, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-window scored nats and bytes of one batch (`score_batch`)."""
        return score_batch(forward, x, y, mask, self.lut, self.autocast)


def score_windows(sc: Scorer, model, windows: Windows, rank: int = 0, after_batch=None, forward=None) -> dict:
    """Score `windows` of `sc` in batches of `sc.plan.batch_seqs` without gradients; return their stream rows.

    `after_batch(b, x, y)` runs after batch b is scored (the hook the dynamic evals adapt in), so an
    update can only ever use targets that are already scored. `forward` replaces `model` for the
    scoring forward (e.g. a compiled copy sharing its parameters); `rank` labels the rows.
    """
    device = next(model.parameters()).device
    scorer = model if forward is None else forward
    nats, nbytes = [], []
    for b, lo in enumerate(range(0, len(windows), sc.plan.batch_seqs)):
        x, y, mask = sc.batch(windows.slice(lo, lo + sc.plan.batch_seqs), device)
        with torch.no_grad():
            bn, bb = sc.score(scorer, x, y, mask)
        nats.append(bn)
        nbytes.append(bb)
        if after_batch is not None:
            after_batch(b, x, y)
    if not nats:
        return {}
    # one transfer at the end: no device sync per batch on the hot path
    return stream_rows(windows, torch.cat(nats).cpu().numpy(), torch.cat(nbytes).cpu().numpy(), rank)


@contextlib.contextmanager
def model_mode(model, training: bool):
    """`model` in train (`training`) or eval mode inside the block; the mode it had is restored however the
    block ends (an exception included)."""
    was = model.training
    model.train(training)
    try:
        yield model
    finally:
        model.train(was)


def score_copies(sc: Scorer, copies, windows: Windows, prepare) -> list[dict]:
    """The per-rank scoring loop of every pass: each (rank id, model) of `copies` scores its contiguous
    slice of `windows` (`Windows.for_rank` over `sc.ranks.total`); returns the stream rows, copy by copy.

    `prepare(model, slice)` is a context manager that readies one copy (its mode, its optimizer) and
    yields `(forward, after_batch)` for `score_windows`; what it sets up it undoes on the way out.
    """
    parts = []
    for v, m in copies:
        mine = windows.for_rank(v, sc.ranks.total)
        with prepare(m, mine) as (forward, after_batch):
            parts.append(score_windows(sc, m, mine, v, after_batch, forward))
    return parts


def score_per_rank(name: str, sc: Scorer, copies, windows: Windows, prepare) -> EvalResult:
    """`score_copies`, reduced over ranks into the result `name`."""
    t0 = time.perf_counter()
    parts = score_copies(sc, copies, windows, prepare)
    return reduce_result(name, parts, time.perf_counter() - t0)


def evaluate_windows(name: str, model, sc: Scorer, windows: Windows, forward=None) -> EvalResult:
    """Score `windows` in eval mode without adaptation, split across the real ranks, and reduce the sums."""
    @contextlib.contextmanager
    def eval_mode(m, _):
        with model_mode(m, training=False):
            yield forward, None

    # No rank-local state here, so virtual ranks would only change the batch composition: real ranks only.
    real = dataclasses.replace(sc, ranks=sc.ranks.real())
    return score_per_rank(name, real, [(real.ranks.rank, model)], windows, eval_mode)


def evaluate_nonoverlap(model, sc: Scorer, forward=None) -> EvalResult:
    """Non-overlapping eval (the run's `eval_val`): sequence k scores targets [kL, (k+1)L) with only its
    own L tokens of context, so early targets of each sequence see little context (`sc.plan.stride` unused).

    Rank r takes sequences [n*r/W, n*(r+1)/W). Model in eval mode; no adaptation.
    """
    return evaluate_windows("nonoverlap", model, sc, sc.nonoverlap(), forward)


def evaluate_sliding(model, sc: Scorer, forward=None) -> EvalResult:
    """Sliding-window eval (the run's `eval_val_sliding`): each target after the first window sees
    L-S..L-1 tokens of context -- worth about -0.024 bpb over non-overlapping on the record model.

    Windows start every `stride` tokens; the first scores all its targets, later ones their last
    `stride`. Rank r takes a contiguous slice of windows. Eval mode; no adaptation.
    """
    return evaluate_windows("sliding", model, sc, sc.sliding(), forward)
