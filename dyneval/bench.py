"""Benchmarks that print figures (never timed tests): training step time and scoring windows/s.

Owns `python -m dyneval bench train` (ms per 786,432-token step and tokens/s per GPU after
compilation, on random tokens, the way the reference rates were measured) and `bench eval`
(windows/s of the scoring and adaptation passes). Run them on the GPU they describe; each prints the
device, torch version and settings with its numbers.
"""

from __future__ import annotations

import json
import time

import torch

from . import adapt, distributed as dist_utils
from .config import load
from .data import ByteLUT
from .evaluate import evaluate_sliding, sliding_windows
from .model import CausalSelfAttention, set_qat
from .optim import build_optimizers
from .train import accumulate, build_model


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _header(ctx) -> dict:
    return {"device": torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "cpu",
            "torch": torch.__version__, "world_size": ctx.world_size}


def bench_train(cfg, steps: int, device: str | None) -> dict:
    ctx = dist_utils.setup(device)
    tc = cfg.train
    cuda = ctx.device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cuda.enable_cudnn_sdp(tc.cudnn_attention)
        CausalSelfAttention.expand_kv = tc.cudnn_attention
    base = build_model(cfg, ctx.device)
    opts = build_optimizers(base, cfg.optim, cfg.model.tie_embeddings)
    model = torch.compile(base, dynamic=False) if (cuda and tc.compile) else base
    if ctx.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[ctx.local_rank] if cuda else None, broadcast_buffers=False)
    accum = tc.grad_accum_steps(ctx.world_size)
    local = tc.local_batch_tokens(ctx.world_size)
    g = torch.Generator(device=ctx.device).manual_seed(0)

    def batch():
        t = torch.randint(0, cfg.model.vocab_size, (local + 1,), device=ctx.device, generator=g)
        return t[:-1].view(-1, tc.train_seq_len), t[1:].view(-1, tc.train_seq_len)

    def step():
        opts.zero_grad()
        accumulate(model, batch, accum, ctx.world_size, cuda)
        torch.nn.utils.clip_grad_norm_(base.parameters(), cfg.optim.grad_clip_norm)
        opts.step()

    t0 = time.perf_counter()
    for _ in range(3):  # compilation and autotuning
        step()
    _sync(ctx.device)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(ctx.device)
    ms = 1000 * (time.perf_counter() - t0) / steps
    tokens_per_gpu = tc.train_batch_tokens / ctx.world_size / (ms / 1000)
    out = {**_header(ctx), "bench": "train", "ms_per_step": ms, "tokens_per_step": tc.train_batch_tokens,
           "tokens_per_s_per_gpu": tokens_per_gpu, "steps_timed": steps, "compile_s": compile_s,
           "cudnn_attention": tc.cudnn_attention, "compile": tc.compile,
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}
    return out


def bench_eval(cfg, variants: list[str], num_windows: int, device: str | None) -> list[dict]:
    """Scoring passes on random tokens: windows/s on this device (one rank)."""
    ctx = dist_utils.setup(device)
    e = cfg.eval
    cuda = ctx.device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cuda.enable_cudnn_sdp(cfg.train.cudnn_attention)
        CausalSelfAttention.expand_kv = cfg.train.cudnn_attention
    V = cfg.model.vocab_size
    n_tokens = num_windows * e.eval_stride + e.eval_seq_len + 1
    tokens = torch.randint(4, V, (n_tokens,), device=ctx.device, generator=torch.Generator(device=ctx.device).manual_seed(0))
    lut = ByteLUT(torch.ones(V, dtype=torch.long, device=ctx.device), torch.zeros(V, dtype=torch.bool, device=ctx.device),
                  torch.zeros(V, dtype=torch.bool, device=ctx.device))
    n_win = len(sliding_windows(n_tokens - 1, e.eval_seq_len, e.eval_stride))
    results = []
    for name in variants:
        model = build_model(cfg, ctx.device)
        comp = cuda and e.compile
        scorer = torch.compile(model, dynamic=False) if comp else None
        kw = dict(seq_len=e.eval_seq_len, stride=e.eval_stride, batch_seqs=e.eval_batch_seqs)
        set_qat(name == "dynamic")  # the run's dynamic eval adapts with the QAT flag on

        def run():
            if name == "sliding":
                return evaluate_sliding(model, tokens, lut, e.eval_seq_len, e.eval_stride, e.eval_batch_seqs,
                                        autocast=cuda, forward=scorer)
            if name == "dynamic":
                return adapt.adapt_dynamic(model, tokens, lut, lr=e.dyneval_lr, adapt_every=e.adapt_every,
                                           autocast=cuda, compile=comp, **kw)
            if name == "dynamic_tail":
                return adapt.adapt_dynamic_tail(model, tokens, lut, lr=e.tail_lr, autocast=cuda, compile=comp, **kw)
            raise ValueError(f"bench eval: unknown variant {name!r}: sliding, dynamic or dynamic_tail")

        # warm-up on a short prefix compiles every shape the pass uses
        full = tokens
        tokens = full[: 4 * e.eval_batch_seqs * e.eval_stride + e.eval_seq_len + 1]
        run()
        tokens = full
        _sync(ctx.device)
        t0 = time.perf_counter()
        r = run()
        _sync(ctx.device)
        s = time.perf_counter() - t0
        set_qat(False)
        results.append({**_header(ctx), "bench": "eval", "variant": name, "windows": n_win,
                        "seconds": s, "windows_per_s": n_win / s, "seq_len": e.eval_seq_len,
                        "stride": e.eval_stride, "batch_seqs": e.eval_batch_seqs, "compiled": comp,
                        "cudnn_attention": cfg.train.cudnn_attention, "bpb_random_tokens": r.bpb})
    return results


def main(args) -> int:
    cfg = load(args.profile, list(args.set or []), args.config)
    if args.what == "train":
        rows = [bench_train(cfg, args.steps, args.device)]
    else:
        rows = bench_eval(cfg, [v.strip() for v in args.variants.split(",")], args.windows, args.device)
    for r in rows:
        print(json.dumps(r))
    return 0
