"""The field's later legal adaptations (April 2026 records) on this project's model: per-document scoring.

Owns what `../shared/FIELD_TTT.md` sets down, written anew for this model:

- `documents`: the validation stream cut at every BOS (a document runs from its BOS up to and including
  the next BOS, which is its last target; the last runs to the stream's end).
- `evaluate_doc_score`: every document scored alone (sliding windows inside it), no adaptation.
- `doc_lora_ttt`: per-document batched LoRA TTT (PR #1530): chunks of `chunk` targets, score a chunk
  then one AdamW step of that document's own low-rank adapters on the chunk's loss; adapters reset per
  document.
- `phased_ttt`: phased global SGD (PR #1610): a prefix of documents is scored with `doc_lora_ttt`, and
  at each phase boundary the base weights take SGD on the documents already scored; the rest is then
  scored on the adapted base. `order="stream"` takes the prefix in stream order (prefix-invariant);
  `order="field"` in the records' order (length-sorted batches, longest first: it reads the lengths of
  documents not yet scored, so it meets score-before-update but not strict prefix invariance).

Document isolation on this model. A document is always fed as its own sequence (a window never holds a
token of another document), so attention cannot cross the boundary. The two previous-token features
read position t-1 of the *sequence*: SmearGate pads position 0 with zeros and the bigram table gives
position 0 its own bucket (Vb-1), so the BOS at position 0 of a document's first window sees no
predecessor. Windows that start inside a long document see only that document's earlier tokens.

Why every batch has one fixed shape. The prefix-invariance check (legality.py) asks for bitwise equal
scores whatever follows P; a document's batch mates change when the tail of the stream changes. Every
forward here is (doc_batch, eval_seq_len): missing documents are zero rows, windows are zero-padded
and masked. A document's row then goes through the same kernels with the same shapes whatever its
mates, and per-document adapters (a batch dimension, `torch.bmm`) and AdamW (elementwise) keep the
rows apart, so a document's scores do not depend on its batch (tests/test_doc_ttt.py). It also keeps
compiled graphs to one shape.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import distributed as dist_utils
from .adapt import DivergedError
from .config import DocLoRASettings, GlobalSGDSettings
from .data import BOS_ID
from .evaluate import (EvalResult, Scorer, Windows, concat_streams, evaluate_windows, model_mode, reduce_result,
                       stream_rows)
from .model import GPT, bf16_autocast


ORDERS = ("stream", "field")  # `batches_in_order`: stream order (prefix-invariant), or the records' length order


@dataclass(frozen=True)
class DocTTT:
    """What a per-document TTT pass does: the documents' adapters, the phased global SGD (None: no phases), and
    the `order` its batches are processed in ("stream" or "field", see `batches_in_order`)."""

    lora: DocLoRASettings
    phases: GlobalSGDSettings | None = None
    order: str = "stream"

    def __post_init__(self):
        if self.order not in ORDERS:
            raise ValueError(f"DocTTT: order={self.order!r} must be one of {', '.join(ORDERS)}")


# ----------------------------------------------------------------------------------------------
# Documents

def documents(tokens: torch.Tensor) -> np.ndarray:
    """Target spans (D, 2) int64 of the documents: document k scores targets [s_k, s_{k+1}).

    s_k are the positions of the BOS tokens (and 0, when the stream does not open with one); target i
    is tokens[i+1], so document k's last target is the next document's BOS, as in the records.
    """
    n = tokens.numel() - 1
    bos = torch.nonzero(tokens[:-1] == BOS_ID).flatten().cpu().numpy()
    starts = np.unique(np.concatenate([[0], bos])).astype(np.int64)
    return np.stack([starts, np.append(starts[1:], n)], axis=1)


def doc_windows(lo: int, hi: int, seq_len: int, stride: int) -> Windows:
    """Windows over targets [lo, hi) of one document that score each target once: the first window
    scores its first min(L, n) targets from the document's start, each later one the next `stride`
    (fewer at the end) with up to L - stride targets of in-document context before them."""
    n = hi - lo
    first = min(seq_len, n)
    ends = np.concatenate([[lo + first], np.arange(lo + first + stride, hi + stride, stride)]).astype(np.int64)
    ends = np.minimum(ends, hi)
    ends = ends[np.concatenate([[True], ends[1:] > ends[:-1]])]
    starts = np.maximum(ends - seq_len, lo)
    prev = np.concatenate([[lo], ends[:-1]])
    return Windows(starts, ends - starts, prev - starts, seq_len)


def evaluate_doc_score(model: GPT, sc: Scorer, forward=None) -> EvalResult:
    """Every document scored alone from its BOS, with sliding windows (stride `sc.plan.stride`) inside
    documents longer than `sc.plan.seq_len`; no adaptation, eval mode. Each target is scored once, with the
    context of its own document only (at most seq_len - 1 tokens). Rank r takes a contiguous slice of the
    windows."""
    plans = [doc_windows(int(a), int(b), sc.plan.seq_len, sc.plan.stride) for a, b in documents(sc.tokens)]
    w = Windows(*(np.concatenate([getattr(p, k) for p in plans]) for k in ("starts", "lengths", "score_from")),
                sc.plan.seq_len)
    return evaluate_windows("doc_score", model, sc, w, forward)


# ----------------------------------------------------------------------------------------------
# Batched LoRA

ADAPTED = ("q", "k", "v", "o", "mlp")  # per block, as the records' defaults (TTT_K_LORA, TTT_O_LORA, TTT_MLP_LORA on)


class BatchedLoRA:
    """One adapter set per document row: for each adapted map, A (B, r, in) and B (B, out, r); delta = x Aᵀ Bᵀ.

    A ~ U(±1/√in), drawn per document from a generator seeded with (seed, the document's first target
    position), so a document's adapters are the same in any batch and on any rank; B = 0, so a fresh set
    leaves the model unchanged. Fp32 parameters (the records' adapters are fp32 under bf16 autocast).
    """

    def __init__(self, model: GPT, keys: list[int | None], rank: int, seed: int):
        cfg = model.cfg
        D, kv = cfg.model_dim, cfg.num_kv_heads * cfg.head_dim
        shapes = {"q": (D, cfg.num_heads * cfg.head_dim), "k": (D, kv), "v": (D, kv), "o": (D, D), "mlp": (D, D)}
        self.maps = [(i, k, *shapes[k]) for i in range(len(model.blocks)) for k in ADAPTED]
        self.maps.append((None, "head", D, cfg.vocab_size))
        dev = next(model.parameters()).device
        nb = len(keys)
        self.A, self.B = {}, {}
        for i, k, fan_in, fan_out in self.maps:
            self.A[(i, k)] = torch.zeros(nb, rank, fan_in)
            self.B[(i, k)] = torch.zeros(nb, fan_out, rank, device=dev, requires_grad=True)
        for row, key in enumerate(keys):
            if key is None:
                continue  # an empty row: its adapters stay zero
            g = torch.Generator().manual_seed(seed * 1_000_003 + int(key))
            for i, k, fan_in, _ in self.maps:
                bound = 1.0 / math.sqrt(fan_in)
                self.A[(i, k)][row] = torch.rand(rank, fan_in, generator=g) * (2 * bound) - bound
        self.A = {key: a.to(dev).requires_grad_(True) for key, a in self.A.items()}

    def parameters(self) -> list[torch.Tensor]:
        return [t for key in self.A for t in (self.A[key], self.B[key])]

    def __call__(self, layer: int | None, site: str, x: torch.Tensor) -> torch.Tensor:
        """The adapter of `GPT.logits`: site `site` of block `layer` (None: the head), x (B, T, in) -> (B, T, out)."""
        a, b = self.A[(layer, site)], self.B[(layer, site)]
        return torch.bmm(torch.bmm(x, a.transpose(1, 2).to(x.dtype)), b.transpose(1, 2).to(x.dtype))


# ----------------------------------------------------------------------------------------------
# Per-document LoRA TTT

def _chunk_rows(docs: list[tuple[int, int] | None], c: int, chunk: int, seq_len: int):
    """Windows (one per row) scoring chunk c of each document: the chunk's targets plus up to
    seq_len - its length tokens of that document before it. Rows without a chunk c: length 0."""
    nb = len(docs)
    starts, lengths, score_from = (np.zeros(nb, dtype=np.int64) for _ in range(3))
    has_next = np.zeros(nb, dtype=bool)
    for r, d in enumerate(docs):
        if d is None:
            continue
        lo, hi = d
        a = lo + c * chunk
        if a >= hi:
            continue
        b = min(a + chunk, hi)
        s = max(lo, b - seq_len)
        starts[r], lengths[r], score_from[r] = s, b - s, a - s
        has_next[r] = b < hi
    return Windows(starts, lengths, score_from, seq_len), has_next


def lora_batch(model: GPT, sc: Scorer, docs: list[tuple[int, int] | None], s: DocLoRASettings, rank_id: int,
               forward=None) -> dict:
    """Per-document LoRA TTT over one batch of documents of `sc.tokens` (rows; None = an empty row): stream
    rows, one per (document, chunk).

    For chunk index c = 0, 1, ...: one forward of every row (documents without a chunk c are masked);
    chunk c's per-token losses are recorded (scored before any step has seen them); then, if some
    document has a chunk after c, one AdamW step (β = (beta1, beta2), eps 1e-10, decoupled weight decay)
    on Σ over those documents of the mean loss over chunk c's targets. A document's last chunk is never
    trained on. Fresh adapters and optimizer state per batch; base weights frozen.
    `forward` (default the model) runs the forward: a compiled region takes one graph for every batch
    and chunk (one shape, (doc_batch, seq_len); the adapter tensors are arguments, not attributes), and
    its backward is the adapter step's.
    """
    device = next(model.parameters()).device
    docs = list(docs) + [None] * (s.doc_batch - len(docs))
    lora = BatchedLoRA(model, [None if d is None else d[0] for d in docs], s.rank, s.seed)
    fwd = model if forward is None else forward
    opt = torch.optim.AdamW(lora.parameters(), lr=s.lr, betas=(s.beta1, s.beta2), eps=1e-10,
                            weight_decay=s.weight_decay, foreach=False)
    num_chunks = max((-(-(hi - lo) // s.chunk) for d in docs if d is not None for lo, hi in [d]), default=0)
    parts = []
    for c in range(num_chunks):
        w, has_next = _chunk_rows(docs, c, s.chunk, sc.plan.seq_len)
        x, y, mask = sc.batch(w, device)
        with bf16_autocast(x, sc.autocast):
            nll = fwd(x, y, reduction="none", adapter=lora)  # (B, L): the scores, and the step's loss
        with torch.no_grad():
            nats = (nll.double() * mask).sum(dim=1).cpu().numpy()
            nbytes = (sc.lut.target_bytes(x, y) * mask).sum(dim=1).cpu().numpy()
        rows = np.nonzero(w.lengths > 0)[0]
        parts.append(stream_rows(Windows(w.starts[rows], w.lengths[rows], w.score_from[rows], w.seq_len),
                                 nats[rows], nbytes[rows], rank_id))
        if not has_next.any():
            continue
        train = mask & torch.as_tensor(has_next, device=device)[:, None]
        loss = ((nll * train).sum(dim=1) / train.sum(dim=1).clamp_min(1)).sum()  # Σ of per-document means
        if not torch.isfinite(loss):
            raise DivergedError(f"doc_lora_ttt: adaptation diverged at chunk {c}: lower eval.doc_lora_lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return concat_streams(parts)


def batches_in_order(spans: np.ndarray, doc_batch: int, order: str) -> list[list[int]]:
    """Document indices per batch, in processing order. `stream`: consecutive documents, first first.
    `field` (the records'): documents sorted by length (ascending, stable), cut into batches of
    `doc_batch`, the batches processed longest first."""
    n = len(spans)
    if order not in ORDERS:
        raise ValueError(f"order={order!r} must be one of {', '.join(ORDERS)}")
    if order == "stream":
        return [list(range(i, min(i + doc_batch, n))) for i in range(0, n, doc_batch)]
    lengths = spans[:, 1] - spans[:, 0]
    asc = np.argsort(lengths, kind="stable")
    batches = [asc[i:i + doc_batch].tolist() for i in range(0, n, doc_batch)]
    return batches[::-1]  # each batch's longest is longer than the previous batch's: descending by longest


# ----------------------------------------------------------------------------------------------
# Phased global SGD

def _sgd_sequences(spans: np.ndarray, chunk_tokens: int, seq_len: int) -> list[Windows]:
    """The scored documents' targets concatenated (in the given order) and cut into chunks of
    `chunk_tokens`; each chunk's part of each document cut into sequences of at most seq_len targets
    (so no sequence crosses a document boundary); per chunk, the sequences as Windows scoring all."""
    pieces = []  # (stream start, length, position in the concatenation)
    pos = 0
    for lo, hi in spans:
        pieces.append((int(lo), int(hi - lo), pos))
        pos += int(hi - lo)
    chunks = []
    for c0 in range(0, pos, chunk_tokens):
        c1 = min(c0 + chunk_tokens, pos)
        st, ln = [], []
        for lo, n, p in pieces:
            a, b = max(c0, p), min(c1, p + n)
            for q in range(a, b, seq_len):
                st.append(lo + q - p)
                ln.append(min(seq_len, b - q))
        k = len(st)
        chunks.append(Windows(np.asarray(st, dtype=np.int64), np.asarray(ln, dtype=np.int64),
                              np.zeros(k, dtype=np.int64), seq_len))
    return chunks


def global_sgd(model: GPT, sc: Scorer, spans: np.ndarray, g: GlobalSGDSettings, name: str = "phased_ttt",
               forward=None) -> int:
    """SGD with momentum (a fresh optimizer) on every base parameter over the concatenation of `spans`
    (already scored documents of `sc.tokens`): one step per chunk of `chunk_tokens` targets, the last chunk
    skipped (as the records), lr on a cosine from `lr` at the first chunk toward 0, `epochs` passes; the loss
    is the mean token NLL over the chunk; its `sc.plan.seq_len` sequences are split contiguously over
    `sc.ranks`, their gradients summed in rank order (virtual ranks) and over processes (all-reduce), clipped
    to `grad_clip`. Train mode (no fake quantization: the switch is off for these variants). `forward`
    (default the model) runs the forward; its batch size is the number of a chunk's sequences on a rank,
    which varies, so a compiled one should be dynamic in it. Returns the steps taken."""
    chunks = _sgd_sequences(spans, g.chunk_tokens, sc.plan.seq_len)[:-1]
    if not chunks:
        return 0
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=g.lr, momentum=g.momentum)
    steps = 0
    with model_mode(model, training=True):
        for _ in range(g.epochs):
            for c, w in enumerate(chunks):
                for group in opt.param_groups:
                    group["lr"] = g.lr * 0.5 * (1 + math.cos(math.pi * c / len(chunks)))
                grads = _chunk_gradients(model if forward is None else forward, params, sc, w, (name, c))
                for p, a in zip(params, grads):
                    p.grad = dist_utils.all_reduce_(a)
                if g.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, g.grad_clip)
                opt.step()
                steps += 1
    for p in params:
        p.grad = None
    return steps


def _chunk_gradients(fwd, params: list, sc: Scorer, w: Windows, where: tuple[str, int]) -> list[torch.Tensor]:
    """This process's gradient of one global-SGD chunk: the sum over its (virtual) ranks' slices of `w` of
    the gradient of their NLL sum divided by the chunk's token count; `where` = (variant, chunk) for errors."""
    total = float(w.lengths.sum())
    acc = [torch.zeros_like(p) for p in params]
    for v in sc.ranks.mine():
        part = w.for_rank(v, sc.ranks.total)
        if not len(part):
            continue
        x, y, mask = sc.batch(part, params[0].device)
        with bf16_autocast(x, sc.autocast):
            nll = fwd(x, y, reduction="none")
        loss = (nll * mask).sum() / total
        if not torch.isfinite(loss):
            raise DivergedError(f"{where[0]}: global SGD diverged at chunk {where[1]}: lower eval.global_lr")
        for a, gr in zip(acc, torch.autograd.grad(loss, params, allow_unused=True)):
            if gr is not None:
                a.add_(gr)
    return acc


def doc_lora_ttt(model: GPT, sc: Scorer, ttt: DocTTT, *, name: str = "doc_lora_ttt", forward=None,
                 sgd_forward=None) -> EvalResult:
    """Per-document LoRA TTT over every document of `sc.tokens`, batches in `ttt.order`; with `ttt.phases`,
    phased global SGD. The result's `notes` hold the documents, steps and weight change of each phase.

    Batches are dealt to ranks in rounds: in round k, (virtual) rank v takes batch k·W + v of the
    processing order (the records let ranks claim batches from a shared counter, so which rank scores
    what depends on timing; a fixed deal makes every rank count give the same documents the same base).
    Phases: boundaries b_i = prefix_docs·(i+1)/num_phases documents of the processing order; after the
    round in which the count of scored documents reaches b_i, the scored documents, sorted by their
    batch's index in ascending-length order (stream order for `stream`), cut to the first b_i, train the
    base weights (`global_sgd`, cumulative over phases); every later batch is scored on that base, with
    fresh adapters. Every base step uses documents already scored; every adapter step a chunk already
    scored. `forward`: the forward of the adapter batches (`lora_batch`), `sgd_forward`: of the global SGD
    (`global_sgd`); default the model.
    """
    t0 = time.perf_counter()
    spans = documents(sc.tokens)
    batches = batches_in_order(spans, ttt.lora.doc_batch, ttt.order)
    # the records sort the scored documents by their batch's index in ascending-length order
    rank_of_batch = list(range(len(batches)))[::-1] if ttt.order == "field" else list(range(len(batches)))
    g = ttt.phases
    bounds = [g.prefix_docs * (i + 1) // g.num_phases for i in range(g.num_phases)] if g else []
    parts, scored, log = [], [], []
    with _requires_grad(model, False), model_mode(model, training=False):
        for k in range(0, len(batches), sc.ranks.total):
            for v, b in enumerate(range(k, min(k + sc.ranks.total, len(batches)))):
                if v in sc.ranks.mine():
                    docs = [tuple(int(t) for t in spans[d]) for d in batches[b]]
                    parts.append(lora_batch(model, sc, docs, ttt.lora, v, forward))
                scored += [(rank_of_batch[b], j, d) for j, d in enumerate(batches[b])]
            while len(log) < len(bounds) and len(scored) >= bounds[len(log)]:
                chosen = [d for _, _, d in sorted(scored)][: bounds[len(log)]]
                before = [p.detach().clone() for p in model.parameters()]
                with _requires_grad(model, True):
                    steps = global_sgd(model, sc, spans[chosen], g, name, sgd_forward)
                change = math.sqrt(sum(float((p.detach().float() - b.float()).square().sum())
                                       for p, b in zip(model.parameters(), before)))
                log.append({"documents": len(chosen), "steps": steps, "weight_change": change})
    res = reduce_result(name, parts, time.perf_counter() - t0)
    res.notes = {"phases": log} if log else {}
    return res


@contextlib.contextmanager
def _requires_grad(model: GPT, on: bool):
    """Every base weight's `requires_grad` is `on` inside the block and `not on` after it, however it ends:
    frozen while adapters train (then trainable again), trainable for a phase's global SGD (then frozen)."""
    for p in model.parameters():
        p.requires_grad_(on)
    try:
        yield
    finally:
        for p in model.parameters():
            p.requires_grad_(not on)
