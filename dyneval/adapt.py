"""Evaluation-time adaptation: the run's TTT and dynamic eval exactly as it did them, and legal variants.

Owns every pass that changes weights while the validation stream is scored:

- `adapt_dynamic`: the run's dynamic eval (legal: it only trains on windows it has scored).
- `pre_eval_ttt`: the run's pre-eval TTT. NOT VALID under the challenge's rule: it trains on the
  validation tokens before they are scored. Kept to reproduce the run, labelled everywhere.
- `score_first_ttt`: the merged records' legal TTT (score a chunk, then train on it).
- `adapt_dynamic_tail`: an improved dynamic eval: one step after every batch on all of that
  batch's scored targets, with optional Krause RMS-normalised updates that decay toward the trained
  weights, fp32 master weights, and a parameter subset.

Faithful behaviour is the default for the run's variants; each quirk is a switch in `Quirks`.
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from . import distributed as dist_utils
from .evaluate import (EvalResult, Windows, compiled, finish, nonoverlap_windows, score_windows, sliding_windows,
                       window_batch)
from .model import GPT, CastedLinear, set_qat


class DivergedError(RuntimeError):
    """An adaptation step produced a non-finite loss."""


@dataclass(frozen=True, kw_only=True)
class Quirks:
    """The run's behaviours that weaken its adaptation; all on reproduces the run."""

    qat_on: bool = True  # late QAT's class-wide switch stays on after training: train-mode passes adapt through int6 fake quantization
    bf16_tables: bool = True  # token and bigram tables are bf16 parameters on GPU (SGD steps of 1e-3 round away)
    rank_local: bool = True  # each rank adapts its own copy on a contiguous slice: the result depends on the GPU count


def check_finite(loss: torch.Tensor, variant: str, step: int) -> None:
    if not torch.isfinite(loss).all():
        raise DivergedError(f"{variant}: adaptation diverged at step {step} (loss {loss.item()}): "
                            f"lower its learning rate")


def virtual_slices(num_virtual: int | None) -> tuple[list[int], int]:
    """The (virtual) rank ids this process handles, and the total number of ranks emulated.

    Without virtual ranks each process is one rank. With K virtual ranks, process r of W handles
    virtual ranks v with v % W == r, each starting from its own copy of the weights.
    """
    W, r = dist_utils.world_size(), dist_utils.rank()
    if not num_virtual:
        return [r], W
    return [v for v in range(num_virtual) if v % W == r], num_virtual


# ----------------------------------------------------------------------------------------------
# The run's dynamic eval

def dynamic_step(fwd, opt, x, y, b: int, adapt_every: int, autocast: bool, name: str) -> None:
    """The run's dynamic-eval update after batch b: when b % adapt_every == 0, one SGD step on the
    mean CE of the batch's first window as padded. `fwd` runs in train mode (fake quant if on)."""
    if b % adapt_every:
        return
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss = fwd(x[:1], y[:1])
    check_finite(loss, name, b)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def dynamic_hook(lr: float, adapt_every: int, autocast: bool, name: str):
    """`dynamic_step` as a `score_first_ttt(then_dynamic=...)` hook: the model scores in eval mode there,
    so the step switches it to train mode and back."""
    opts: dict[int, torch.optim.Optimizer] = {}

    def hook(b, x, y, model):
        opt = opts.setdefault(id(model), torch.optim.SGD(model.parameters(), lr=lr))
        was = model.training
        model.train()
        dynamic_step(model, opt, x, y, b, adapt_every, autocast, name)
        model.train(was)

    return hook


def adapt_dynamic(model: GPT, tokens, lut, *, seq_len: int, stride: int, batch_seqs: int, lr: float,
                  adapt_every: int, virtual_ranks: int | None = None, autocast: bool = False,
                  compile: bool = False, name: str = "dynamic") -> EvalResult:
    """The run's dynamic eval: sliding windows scored in train mode, SGD on one window every few batches.

    Scored tokens and contexts are exactly those of `evaluate_sliding`. Each rank (or virtual rank)
    takes a contiguous slice of the windows and adapts its own copy of the weights: after scoring
    its batch b (0-based), when b % adapt_every == 0, one plain SGD step (no momentum, no weight
    decay) on every parameter, on the mean CE of that batch's first window as padded (padding
    targets, id 0, included). The step can only have seen targets the rank has already scored.
    The model runs in train mode, so late-QAT fake quantization applies when its flag is on.
    `compile` (CUDA): the scoring forward and the step run through torch.compile -- the run scored
    uncompiled; the math is the same, only the kernels are fused.
    """
    t0 = time.perf_counter()
    windows = sliding_windows(tokens.numel() - 1, seq_len, stride)
    mine, total = virtual_slices(virtual_ranks)
    parts = []
    for v in mine:
        m = copy.deepcopy(model) if virtual_ranks else model
        m.train()
        fwd = compiled(m, compile)
        opt = torch.optim.SGD(m.parameters(), lr=lr)

        def step(b, x, y, fwd=fwd, opt=opt):
            dynamic_step(fwd, opt, x, y, b, adapt_every, autocast, name)

        parts.append(score_windows(m, tokens, lut, windows.for_rank(v, total), batch_seqs, v, step, autocast, fwd))
    return finish(name, parts, time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------
# The run's pre-eval TTT (not valid)

def _lockstep_sgd_epochs(model: GPT, tokens: torch.Tensor, slices: list[Windows], num_ranks: int, *,
                         params: list, lr: float, momentum: float, epochs: int, batch_seqs: int,
                         grad_clip: float, autocast: bool, name: str, opt=None):
    """Epochs of SGD over `slices` (one per rank this process handles), gradients averaged over ranks.

    Every rank holds the same weights; at each step rank k contributes the mean CE of its next batch
    of sequences, and the update uses the average over all `num_ranks` ranks, as the run's
    all-reduce does. Emulated ranks are computed one after another into the same gradient buffers.
    """
    device = next(model.parameters()).device
    opt = opt or torch.optim.SGD(params, lr=lr, momentum=momentum)
    steps = max((len(s) + batch_seqs - 1) // batch_seqs for s in slices) if slices else 0
    steps = int(dist_utils.max_over_ranks(steps))
    model.train()
    for epoch in range(epochs):
        for i in range(steps):
            opt.zero_grad(set_to_none=False)
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            for s in slices:
                w = s.slice(i * batch_seqs, (i + 1) * batch_seqs)
                if not len(w):
                    continue
                x, y, _ = window_batch(tokens, w, device)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                    loss = model(x, y)
                check_finite(loss, name, epoch * steps + i)
                loss.backward()
            for p in params:
                dist_utils.all_reduce_(p.grad)
                p.grad.div_(num_ranks)
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
    return opt


def pre_eval_ttt(model: GPT, tokens, *, seq_len: int, lr: float, momentum: float, epochs: int, batch_seqs: int,
                 freeze_blocks: int, grad_clip: float = 1.0, virtual_ranks: int | None = None,
                 autocast: bool = False) -> float:
    """The run's pre-eval TTT -- NOT VALID: it trains on validation tokens before scoring them.

    Freezes the first `freeze_blocks` blocks; SGD with momentum (no Nesterov, dampening or weight
    decay) on the rest; `epochs` passes over the validation stream as non-overlapping `seq_len`
    sequences, rank r taking sequences [n*r/W, n*(r+1)/W), `batch_seqs` per step; mean CE,
    gradients averaged across ranks, trainable gradients clipped to norm `grad_clip`. Train mode
    (QAT fake quantization applies when its flag is on). Afterwards every parameter is trainable.
    Returns the seconds it took.
    """
    t0 = time.perf_counter()
    frozen = {id(p) for blk in model.blocks[:freeze_blocks] for p in blk.parameters()}
    params = [p for p in model.parameters() if id(p) not in frozen]
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)
    seqs = nonoverlap_windows(tokens.numel() - 1, seq_len)
    mine, total = virtual_slices(virtual_ranks)
    try:
        _lockstep_sgd_epochs(model, tokens, [seqs.for_rank(v, total) for v in mine], total, params=params, lr=lr,
                             momentum=momentum, epochs=epochs, batch_seqs=batch_seqs, grad_clip=grad_clip,
                             autocast=autocast, name="pre_eval_ttt")
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
            p.grad = None
    return dist_utils.max_over_ranks(time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------
# Legal: the merged records' score-first TTT

def score_first_ttt(model: GPT, tokens, lut, *, seq_len: int, stride: int, batch_seqs: int, chunk_tokens: int,
                    lr: float, momentum: float, epochs: int, train_batch_seqs: int, grad_clip: float = 1.0,
                    virtual_ranks: int | None = None, autocast: bool = False, then_dynamic=None,
                    name: str = "score_first_ttt") -> EvalResult:
    """Score-first TTT (legal): for each chunk, score its windows, then train on its scored targets.

    The stream is cut into `chunk_tokens`-target chunks; a sliding window belongs to the chunk of its
    first scored target. Chunk c's windows are scored (eval mode, split across ranks, no gradients);
    then, except after the last chunk, `epochs` of SGD with momentum on the targets scored so far in
    chunk c (never past the scored prefix), as `seq_len` sequences split across ranks, gradients
    averaged so every rank holds the same weights, lr = lr * cosine decay over chunks, clip 1.0.
    `then_dynamic(b, x, y, model)`: optional per-batch dynamic-eval hook while scoring (legal).
    """
    t0 = time.perf_counter()
    N = tokens.numel() - 1
    windows = sliding_windows(N, seq_len, stride)
    first = windows.starts + windows.score_from
    num_chunks = max(1, math.ceil(N / chunk_tokens))
    chunk_of = np.minimum(first // chunk_tokens, num_chunks - 1)
    mine, total = virtual_slices(virtual_ranks)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    scored_end = 0
    parts = []
    for c in range(num_chunks):
        idx = np.nonzero(chunk_of == c)[0]
        if not len(idx):
            continue
        cw = windows.slice(int(idx[0]), int(idx[-1]) + 1)
        model.eval()
        for v in mine:
            hook = (lambda b, x, y: then_dynamic(b, x, y, model)) if then_dynamic else None
            parts.append(score_windows(model, tokens, lut, cw.for_rank(v, total), batch_seqs, v, hook, autocast))
        scored_end = max(scored_end, int((cw.starts + cw.lengths).max()))
        if c == num_chunks - 1 or not epochs:
            continue
        lo, hi = c * chunk_tokens, min((c + 1) * chunk_tokens, scored_end)
        n_seq = (hi - lo) // seq_len
        if n_seq <= 0:
            continue
        seqs = Windows(lo + np.arange(n_seq, dtype=np.int64) * seq_len, np.full(n_seq, seq_len, dtype=np.int64),
                       np.zeros(n_seq, dtype=np.int64), seq_len)
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * c / max(num_chunks - 1, 1)))
        _lockstep_sgd_epochs(model, tokens, [seqs.for_rank(v, total) for v in mine], total, params=params, lr=lr,
                             momentum=momentum, epochs=epochs, batch_seqs=train_batch_seqs, grad_clip=grad_clip,
                             autocast=autocast, name=name, opt=opt)
    for p in params:
        p.grad = None
    return finish(name, parts, time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------
# Legal: improved dynamic eval

class LowRankDelta(torch.nn.Module):
    """A low-rank adapter as a weight parametrization: W + B A, B zero-initialised, fp32."""

    def __init__(self, weight: torch.Tensor, rank: int, generator: torch.Generator):
        super().__init__()
        out_f, in_f = weight.shape
        a = torch.randn(rank, in_f, generator=generator) / in_f ** 0.5
        self.A = torch.nn.Parameter(a.to(weight.device))
        self.B = torch.nn.Parameter(torch.zeros(out_f, rank, device=weight.device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.B @ self.A).to(weight.dtype)


def add_low_rank_adapters(model: GPT, rank: int, seed: int = 0) -> None:
    """Attach a rank-`rank` adapter to every block linear; only the adapters are then adapted (subset "lora")."""
    from torch.nn.utils import parametrize

    g = torch.Generator().manual_seed(seed)
    for module in model.blocks.modules():
        if isinstance(module, torch.nn.Linear):
            parametrize.register_parametrization(module, "weight", LowRankDelta(module.weight, rank, g))


PARAM_SUBSETS = {
    "lora": lambda n: ".parametrizations.weight.0." in n,
    "all": lambda n: True,
    "mlp": lambda n: ".mlp." in n,
    "attn": lambda n: ".attn." in n,
    "blocks": lambda n: n.startswith("blocks."),
    "tables": lambda n: "tok_emb" in n or "bigram" in n,
    "no_tables": lambda n: "tok_emb" not in n and "bigram" not in n,
}


def gradient_rms(model: GPT, batches, autocast: bool = False) -> dict[str, torch.Tensor]:
    """Per-parameter RMS of gradients over a few training batches (Krause et al.'s MS statistic)."""
    model.train()
    sq = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in model.named_parameters()}
    count = 0
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = model(x, y)
        loss.backward()
        for n, p in model.named_parameters():
            if p.grad is not None:
                sq[n] += p.grad.float().square()
        count += 1
    model.zero_grad(set_to_none=True)
    sq = {n: dist_utils.all_reduce_(s) for n, s in sq.items()}
    count = dist_utils.all_reduce_sums([count])[0]
    return {n: (s / max(count, 1)).sqrt() for n, s in sq.items()}


def tail_windows(lo: int, hi: int, seq_len: int) -> Windows:
    """Windows ending at hi, hi-L, ... that together score targets [lo, hi) once, each with up to L of context."""
    ends = np.arange(hi, lo, -seq_len, dtype=np.int64)[::-1]
    starts = np.maximum(ends - seq_len, 0)
    return Windows(starts, ends - starts, np.maximum(lo, starts) - starts, seq_len)


def adapt_dynamic_tail(model: GPT, tokens, lut, *, seq_len: int, stride: int, batch_seqs: int, lr: float,
                       subset: str = "all", rms_stats: dict | None = None, decay: float = 0.0, eps: float = 1e-5,
                       lora_rank: int = 8,
                       virtual_ranks: int | None = None, autocast: bool = False, compile: bool = False,
                       name: str = "dynamic_tail") -> EvalResult:
    """Improved dynamic eval (legal): after every batch, one step on exactly the targets it just scored.

    Scoring is `evaluate_sliding`'s (eval mode: no fake quantization). Batch b scores a contiguous
    span of targets [lo, hi); the update is the mean CE over that span, computed on windows ending
    at hi, hi-L, ... (each target with up to L tokens of context), so every scored target is trained
    on exactly once, only after it was scored, at about S*B/L extra windows per batch (the run's
    dynamic eval trains on one window per 4 batches, mostly on targets scored long before).

    The update runs on fp32 master copies of the adapted tensors (`subset`), written back in the
    model's own dtype, so bf16 tables do not swallow small steps. `subset="lora"` adapts only
    rank-`lora_rank` adapters attached to every block linear (plain SGD only). Plain SGD when `rms_stats` is None;
    otherwise Krause et al.'s rule θ ← θ − lr·g/(MS+eps) + decay·d·(θ0 − θ), d = MS/mean(MS) clipped
    at 1/decay, with MS the per-parameter gradient RMS measured on training batches.
    """
    t0 = time.perf_counter()
    windows = sliding_windows(tokens.numel() - 1, seq_len, stride)
    mine, total = virtual_slices(virtual_ranks)
    keep = PARAM_SUBSETS[subset]
    parts = []
    for v in mine:
        m = copy.deepcopy(model) if virtual_ranks else model
        m.eval()
        if subset == "lora":
            if rms_stats is not None:
                raise ValueError(f"{name}: Krause statistics do not cover low-rank adapters: use plain SGD with lora")
            add_low_rank_adapters(m, lora_rank)
        named = [(n, p) for n, p in m.named_parameters() if keep(n)]
        for n, p in m.named_parameters():
            p.requires_grad_(keep(n))
        master = [p.detach().float().clone() for _, p in named]
        origin = [t.clone() for t in master]
        scale = []
        if rms_stats is not None:
            mean_ms = torch.cat([rms_stats[n].flatten() for n, _ in named]).mean()
            for n, p in named:
                ms = rms_stats[n].to(p.device)
                d = (ms / mean_ms).clamp_max(1.0 / decay) if decay > 0 else torch.zeros_like(ms)
                scale.append((1.0 / (ms + eps), d))
        fwd = compiled(m, compile)
        mw = windows.for_rank(v, total)
        spans = [mw.slice(lo, lo + batch_seqs) for lo in range(0, len(mw), batch_seqs)]

        def step(b, x, y, fwd=fwd, named=named, master=master, origin=origin, scale=scale, spans=spans):
            w = spans[b]
            lo, hi = int((w.starts + w.score_from).min()), int((w.starts + w.lengths).max())
            tx, ty, mask = window_batch(tokens, tail_windows(lo, hi, seq_len), x.device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                nll = fwd(tx, ty, reduction="none")
            loss = (nll * mask).sum() / mask.sum().clamp_min(1)
            check_finite(loss, name, b)
            grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
            with torch.no_grad():
                for i, ((_, p), g) in enumerate(zip(named, grads)):
                    if g is None:
                        continue
                    if scale:
                        inv, d = scale[i]
                        master[i].add_(g.float() * inv, alpha=-lr)
                        master[i].add_(d * decay * (origin[i] - master[i]))
                    else:
                        master[i].add_(g.float(), alpha=-lr)
                    p.copy_(master[i])

        try:
            parts.append(score_windows(m, tokens, lut, mw, batch_seqs, v, step, autocast, fwd))
        finally:
            for p in m.parameters():
                p.requires_grad_(True)
    return finish(name, parts, time.perf_counter() - t0)


@contextmanager
def run_with_qat(flag: bool):
    """Set late QAT's class-wide flag for the block, restoring it afterwards."""
    before = CastedLinear.qat_enabled
    set_qat(flag)
    try:
        yield
    finally:
        set_qat(before)
