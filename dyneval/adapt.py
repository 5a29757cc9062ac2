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

import contextlib
import copy
import itertools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import distributed as dist_utils
from .config import DynamicSettings, KrauseSettings, ScoreFirstSettings, TailSettings, TTTSettings
from .distributed import Ranks
from .evaluate import EvalResult, Scorer, Windows, compiled, model_mode, reduce_result, score_copies, score_per_rank
from .model import GPT, bf16_autocast


class DivergedError(FloatingPointError):
    """An adaptation step produced a non-finite loss (reported as one line: lower the variant's lr)."""


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


def rank_copies(model: GPT, ranks: Ranks) -> list[tuple[int, GPT]]:
    """(rank id, model) for every rank this process handles: the model itself without virtual ranks,
    else one deep copy per virtual rank, since each emulated GPU adapts its own weights."""
    if not ranks.virtual:
        return [(ranks.rank, model)]
    return [(v, copy.deepcopy(model)) for v in ranks.mine()]


# ----------------------------------------------------------------------------------------------
# The run's dynamic eval

class DynamicStep:
    """The run's dynamic-eval update, called after every scored batch b: when b % adapt_every == 0, one plain
    SGD step (no momentum, no weight decay) on every parameter, on the mean CE of the batch's first window as
    padded. `forward` runs in the model's mode (train mode: fake quant if its switch is on)."""

    def __init__(self, forward, params, dyn: DynamicSettings, autocast: bool, name: str):
        self.forward, self.every, self.autocast, self.name = forward, dyn.adapt_every, autocast, name
        self.opt = torch.optim.SGD(params, lr=dyn.lr)

    def __call__(self, b: int, x, y) -> None:
        if b % self.every:
            return
        with bf16_autocast(x, self.autocast):
            loss = self.forward(x[:1], y[:1])
        check_finite(loss, self.name, b)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def dynamic_hook(dyn: DynamicSettings, autocast: bool, name: str):
    """`DynamicStep` as a per-batch hook while `score_first_ttt` scores: there the model scores in eval
    mode, so the step switches it to train mode and back. One step (one SGD optimizer) per model copy, kept
    across chunks (each rank's chain of steps is its own, as on the run's GPUs)."""
    steps: dict[int, DynamicStep] = {}

    def hook(b, x, y, model):
        if id(model) not in steps:
            steps[id(model)] = DynamicStep(model, model.parameters(), dyn, autocast, name)
        with model_mode(model, training=True):
            steps[id(model)](b, x, y)

    return hook


def adapt_dynamic(model: GPT, sc: Scorer, dyn: DynamicSettings, *, compile=False, name: str = "dynamic") -> EvalResult:
    """The run's dynamic eval: sliding windows scored in train mode, SGD on one window every few batches.

    Scored tokens and contexts are exactly those of `evaluate_sliding`. Each rank (or virtual rank)
    takes a contiguous slice of the windows and adapts its own copy of the weights: after scoring
    its batch b (0-based), when b % adapt_every == 0, one plain SGD step (`DynamicStep`) on every
    parameter, on the mean CE of that batch's first window as padded (padding targets, id 0, included
    -- the run's loss call does not mask them). The step can only have seen targets the rank has
    already scored, so the pass is legal; but it trains on a window scored up to 4 batches earlier and
    on 1/128 of the scored windows, which is why its gain is small.
    The model runs in train mode, so late-QAT fake quantization applies when its switch is on (the
    run's quirk: its class-wide flag stayed on after training).
    `compile` (True, or a `graphs.Region` that counts its graphs): the scoring forward and the step run
    through torch.compile -- the run scored uncompiled; the math is the same, only the kernels are fused.
    Without virtual ranks `model` itself is the copy: it is adapted in place (give each pass fresh weights).
    """
    @contextlib.contextmanager
    def train_mode(m, _):
        with model_mode(m, training=True):  # the run never called eval() before its dynamic eval
            fwd = compiled(m, compile)
            yield fwd, DynamicStep(fwd, m.parameters(), dyn, sc.autocast, name)

    return score_per_rank(name, sc, rank_copies(model, sc.ranks), sc.sliding(), train_mode)


# ----------------------------------------------------------------------------------------------
# The run's pre-eval TTT (not valid)

@dataclass
class Learner:
    """One model copy's trainable tensors and its optimizer (TTT)."""

    params: list
    opt: torch.optim.Optimizer


def _lockstep_sgd_epochs(pairs: list[tuple[GPT, Windows]], sc: Scorer, learners: dict[int, Learner],
                         ttt: TTTSettings, name: str) -> None:
    """`ttt.epochs` of SGD over each (model, slice) pair of `sc.tokens`, one pair per rank this process
    handles, with the gradient averaged over all `sc.ranks.total` ranks as the run's all-reduce does.

    At step i, rank k contributes the mean CE of its i-th batch of sequences; every rank then applies
    the same averaged gradient. When ranks share one model (their weights are identical anyway), the
    emulated ranks' gradients accumulate into its buffers; when each rank has its own copy (a dynamic
    eval ran between the steps), the copies' gradients are summed in rank order -- the same float
    additions -- and the average is given to every copy, each stepping its own optimizer.
    `learners` maps id(model) to its Learner; `ttt` gives the epochs, batch size and clip.
    """
    models = list({id(m): m for m, _ in pairs}.values())
    device = learners[id(models[0])].params[0].device
    steps = max((len(w) + ttt.batch_seqs - 1) // ttt.batch_seqs for _, w in pairs) if pairs else 0
    steps = int(dist_utils.max_over_ranks(steps))  # every process takes the same number of steps
    with _train_mode(models):
        for epoch, i in itertools.product(range(ttt.epochs), range(steps)):
            for m in models:
                _zero_grads(learners[id(m)])
            for m, w in pairs:
                w = w.slice(i * ttt.batch_seqs, (i + 1) * ttt.batch_seqs)
                if not len(w):
                    continue  # a shorter slice contributes zeros to the average, as an idle rank does
                x, y, _ = sc.batch(w, device)
                with bf16_autocast(x, sc.autocast):
                    loss = m(x, y)
                check_finite(loss, name, epoch * steps + i)
                loss.backward()
            _average_grads([learners[id(m)].params for m in models], sc.ranks.total)
            for m in models:
                if ttt.grad_clip:
                    torch.nn.utils.clip_grad_norm_(learners[id(m)].params, ttt.grad_clip)
                learners[id(m)].opt.step()


@contextlib.contextmanager
def _train_mode(models: list[GPT]):
    """Every model in train mode inside the block; each back in its own mode after it."""
    with contextlib.ExitStack() as stack:
        for m in models:
            stack.enter_context(model_mode(m, training=True))
        yield


def _zero_grads(learner: Learner) -> None:
    """Zeroed gradient buffers (not None), so a rank with nothing to train on adds zeros to the average."""
    learner.opt.zero_grad(set_to_none=False)
    for p in learner.params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)


def _average_grads(param_lists: list[list], num_ranks: int) -> None:
    """The copies' gradients summed in order into the first's, all-reduced and divided by the rank count,
    then given back to every copy (the run's all-reduce average)."""
    first = param_lists[0]
    for other in param_lists[1:]:
        for p, q in zip(first, other):
            p.grad.add_(q.grad)
    for p in first:
        dist_utils.all_reduce_(p.grad)
        p.grad.div_(num_ranks)
    for other in param_lists[1:]:
        for p, q in zip(first, other):
            q.grad.copy_(p.grad)


def pre_eval_ttt(model: GPT, sc: Scorer, ttt: TTTSettings) -> float:
    """The run's pre-eval TTT -- NOT VALID: it trains on validation tokens before scoring them.

    Freezes the first `freeze_blocks` blocks; SGD with momentum (torch's SGD: no Nesterov, dampening
    or weight decay) on the rest; `epochs` passes over the validation stream as non-overlapping
    `sc.plan.seq_len` sequences, rank r taking sequences [n*r/W, n*(r+1)/W), `batch_seqs` per step; mean
    CE, gradients averaged across ranks, trainable gradients clipped to norm `grad_clip`. Train mode
    (QAT fake quantization applies when its switch is on). Afterwards every parameter is trainable.
    Every rank holds the same weights throughout, so virtual ranks share one model. Returns seconds.
    """
    t0 = time.perf_counter()
    frozen = {id(p) for blk in model.blocks[:ttt.freeze_blocks] for p in blk.parameters()}
    params = [p for p in model.parameters() if id(p) not in frozen]
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)
    seqs = sc.nonoverlap()
    opt = torch.optim.SGD(params, lr=ttt.lr, momentum=ttt.momentum)
    try:
        _lockstep_sgd_epochs([(model, seqs.for_rank(v, sc.ranks.total)) for v in sc.ranks.mine()], sc,
                             {id(model): Learner(params, opt)}, ttt, "pre_eval_ttt")
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
            p.grad = None
    return dist_utils.max_over_ranks(time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------
# Legal: the merged records' score-first TTT

def score_first_ttt(model: GPT, sc: Scorer, sf: ScoreFirstSettings, *, dynamic: DynamicSettings | None = None,
                    name: str = "score_first_ttt") -> EvalResult:
    """Score-first TTT (legal): for each chunk, score its windows, then train on its scored targets.

    The stream is cut into `chunk_tokens`-target chunks; a sliding window belongs to the chunk of its
    first scored target. Chunk c's windows are scored (eval mode, split across ranks, no gradients);
    then, except after the last chunk, `epochs` of SGD with momentum on the targets scored so far in
    chunk c (never past the scored prefix), as `seq_len` sequences split across ranks, gradients
    averaged so every rank applies the same update, lr = lr * cosine decay over chunks, clip `grad_clip`.
    `dynamic`: also take the run's dynamic-eval step while scoring (legal). Those steps are
    rank-local, so then every rank keeps its own copy of the weights (one per virtual rank), as
    the GPUs of a real run would; without it all ranks hold the same weights and share one model.
    """
    t0 = time.perf_counter()
    ttt = sf.ttt
    windows = sc.sliding()
    num_chunks = max(1, math.ceil(sc.num_targets / sf.chunk_tokens))
    chunk_of = np.minimum((windows.starts + windows.score_from) // sf.chunk_tokens, num_chunks - 1)
    copies = rank_copies(model, sc.ranks) if dynamic else [(v, model) for v in sc.ranks.mine()]
    models = list({id(m): m for _, m in copies}.values())
    learners = {id(m): Learner(list(m.parameters()), torch.optim.SGD(m.parameters(), lr=ttt.lr, momentum=ttt.momentum))
                for m in models}
    hook = dynamic_hook(dynamic, sc.autocast, name) if dynamic else None

    @contextlib.contextmanager
    def eval_mode(m, _):
        with model_mode(m, training=False):
            yield None, (lambda b, x, y: hook(b, x, y, m)) if hook else None

    scored_end, parts = 0, []
    for c in range(num_chunks):
        idx = np.nonzero(chunk_of == c)[0]
        if not len(idx):
            continue
        cw = windows.slice(int(idx[0]), int(idx[-1]) + 1)
        parts += score_copies(sc, copies, cw, eval_mode)  # score first: no update has seen this chunk yet
        scored_end = max(scored_end, int((cw.starts + cw.lengths).max()))
        seqs = _chunk_sequences(c, sf.chunk_tokens, scored_end, sc.plan.seq_len)
        if c == num_chunks - 1 or not ttt.epochs or seqs is None:
            continue  # nothing is left to score with what the last chunk would teach
        for learner in learners.values():  # the merged records' cosine decay of the TTT lr over chunks
            for g in learner.opt.param_groups:
                g["lr"] = ttt.lr * 0.5 * (1 + math.cos(math.pi * c / max(num_chunks - 1, 1)))
        _lockstep_sgd_epochs([(m, seqs.for_rank(v, sc.ranks.total)) for v, m in copies], sc, learners, ttt, name)
    for m in models:
        for p in m.parameters():
            p.grad = None
    return reduce_result(name, parts, time.perf_counter() - t0)


def _chunk_sequences(c: int, chunk_tokens: int, scored_end: int, seq_len: int) -> Windows | None:
    """The `seq_len` sequences score-first TTT trains on after chunk c: chunk c's targets, up to the end of
    what is scored; None when not one whole sequence fits."""
    lo, hi = c * chunk_tokens, min((c + 1) * chunk_tokens, scored_end)
    n_seq = (hi - lo) // seq_len
    if n_seq <= 0:
        return None
    return Windows(lo + np.arange(n_seq, dtype=np.int64) * seq_len, np.full(n_seq, seq_len, dtype=np.int64),
                   np.zeros(n_seq, dtype=np.int64), seq_len)


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
        with bf16_autocast(x, autocast):
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


KRAUSE_EPS = 1e-5  # ε of Krause et al.'s lr·g/(MS+ε): keeps parameters with no gradient signal finite


class TailUpdate:
    """The update `adapt_dynamic_tail` makes on one model copy: fp32 master copies of the adapted tensors
    (`subset`), stepped by plain SGD or Krause's rule, written back in the model's own dtype."""

    def __init__(self, m: GPT, tail: TailSettings | KrauseSettings, rms_stats: dict | None, name: str):
        krause = isinstance(tail, KrauseSettings)
        if krause and tail.subset == "lora":
            raise ValueError(f"{name}: Krause statistics do not cover low-rank adapters: use plain SGD with lora")
        if krause != (rms_stats is not None):
            raise ValueError(f"{name}: Krause's update needs the gradient statistics (rms_stats), plain SGD none")
        self.lr = tail.lr
        self.decay = tail.decay if krause else 0.0
        keep = PARAM_SUBSETS[tail.subset]
        if tail.subset == "lora":
            add_low_rank_adapters(m, tail.lora_rank)
        self.named = [(n, p) for n, p in m.named_parameters() if keep(n)]
        for n, p in m.named_parameters():
            p.requires_grad_(keep(n))
        self.master = [p.detach().float().clone() for _, p in self.named]
        self.origin = [t.clone() for t in self.master]
        self.scale = []  # per tensor (1 / (MS + ε), d): Krause's normalisation and decay weights
        if rms_stats is not None:
            mean_ms = torch.cat([rms_stats[n].flatten() for n, _ in self.named]).mean()
            for n, p in self.named:
                ms = rms_stats[n].to(p.device)
                d = (ms / mean_ms).clamp_max(1.0 / self.decay) if self.decay > 0 else torch.zeros_like(ms)
                self.scale.append((1.0 / (ms + KRAUSE_EPS), d))

    @property
    def params(self) -> list:
        return [p for _, p in self.named]

    @torch.no_grad()
    def apply(self, grads) -> None:
        for i, ((_, p), g) in enumerate(zip(self.named, grads)):
            if g is None:
                continue
            if self.scale:
                inv, d = self.scale[i]
                self.master[i].add_(g.float() * inv, alpha=-self.lr)
                self.master[i].add_(d * self.decay * (self.origin[i] - self.master[i]))
            else:
                self.master[i].add_(g.float(), alpha=-self.lr)
            p.copy_(self.master[i])


def adapt_dynamic_tail(model: GPT, sc: Scorer, tail: TailSettings | KrauseSettings, *, rms_stats: dict | None = None,
                       compile=False, name: str = "dynamic_tail") -> EvalResult:
    """Improved dynamic eval (legal): after every batch, one step on exactly the targets it just scored.

    Scoring is `evaluate_sliding`'s (eval mode: no fake quantization). Batch b scores a contiguous
    span of targets [lo, hi); the update is the mean CE over that span, computed on windows ending
    at hi, hi-L, ... (each target with up to L tokens of context), so every scored target is trained
    on exactly once, only after it was scored, at about S*B/L extra windows per batch (the run's
    dynamic eval trains on one window per 4 batches, mostly on targets scored long before).

    The update runs on fp32 master copies of the adapted tensors (`subset`), written back in the
    model's own dtype, so bf16 tables do not swallow small steps. `subset="lora"` adapts only
    rank-`lora_rank` adapters attached to every block linear (plain SGD only). `TailSettings`: plain
    SGD. `KrauseSettings` (with `rms_stats`): Krause et al.'s rule θ ← θ − lr·g/(MS+eps) +
    decay·d·(θ0 − θ), d = MS/mean(MS) clipped at 1/decay, with MS the per-parameter gradient RMS
    measured on training batches -- the update normalised per parameter, pulled back toward the
    trained weights so that a long stream does not drift.
    Without virtual ranks `model` itself is the copy: it is adapted in place, and with `subset="lora"` its
    adapters stay attached (give each pass fresh weights).
    """
    @contextlib.contextmanager
    def tail_steps(m, mine: Windows):
        with model_mode(m, training=False):
            update = TailUpdate(m, tail, rms_stats, name)
            fwd = compiled(m, compile)
            spans = [mine.slice(lo, lo + sc.plan.batch_seqs) for lo in range(0, len(mine), sc.plan.batch_seqs)]
            try:
                yield fwd, lambda b, x, y: _tail_step(sc, fwd, update, spans[b], x.device, (name, b))
            finally:
                for p in m.parameters():
                    p.requires_grad_(True)

    return score_per_rank(name, sc, rank_copies(model, sc.ranks), sc.sliding(), tail_steps)


def _tail_step(sc: Scorer, fwd, update: TailUpdate, w: Windows, device, where: tuple[str, int]) -> None:
    """One `adapt_dynamic_tail` step after the batch of windows `w`: the mean CE over the targets it scored,
    [lo, hi), on `tail_windows` (each with up to L of context); `where` = (variant, batch) for errors."""
    lo, hi = int((w.starts + w.score_from).min()), int((w.starts + w.lengths).max())
    tx, ty, mask = sc.batch(tail_windows(lo, hi, sc.plan.seq_len), device)
    with bf16_autocast(tx, sc.autocast):
        nll = fwd(tx, ty, reduction="none")
    loss = (nll * mask).sum() / mask.sum().clamp_min(1)
    check_finite(loss, *where)
    update.apply(torch.autograd.grad(loss, update.params, allow_unused=True))
