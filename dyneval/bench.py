"""Benchmarks that print figures (never timed tests): training step time and scoring windows/s.

Owns `python -m dyneval bench train` (ms per 786,432-token step and tokens/s per GPU after
compilation, on random tokens, the way the reference rates were measured) and `bench eval`
(windows/s of the scoring and adaptation passes), and `bench compare` (faithful vs fast side by side in
one process, as ratios). Run them on the GPU they describe; each prints the device, torch version and
settings with its numbers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

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


# ----------------------------------------------------------------------------------------------
# Faithful vs fast, side by side in one process on one card (issue 12).
# Kept apart from bench_train/bench_eval and their dispatch on purpose: it only calls them with two
# configurations. When the variants move to a registry, rewire `FAST_OVERRIDES` and the three
# (config, variant) pairs in `bench_compare` onto it; the JSON it prints can stay as it is.

FAST_OVERRIDES = ("train.cudnn_attention=1",)  # the fast mode today: cuDNN attention with K/V expanded


def _ratio(fast: float, faithful: float) -> float:
    return fast / faithful if faithful else float("nan")


def dynamic_compiled_vs_eager(run_dir: str | Path, device: str | None = None,
                              virtual_ranks: int | None = None) -> dict:
    """The run's dynamic eval on a training run's artifact, scored eagerly (as the run did) and compiled.

    Same checkpoint, same validation tokens, QAT flag on as after the run's training; the bpb
    difference is what the faster compiled scoring changes in the number (bf16 kernels fuse differently).
    """
    from .ablation import Checkpoint
    from .config import RunConfig
    from .data import build_byte_lut, load_validation_tokens, val_pattern

    ctx = dist_utils.setup(device)
    run_dir = Path(run_dir)
    cfg = RunConfig.from_dict(json.loads((run_dir / "meta.json").read_text())["config"])
    e, cuda = cfg.eval, ctx.device.type == "cuda"
    if cuda:  # the run's attention backend, whatever a fast bench before this one left set
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cuda.enable_cudnn_sdp(cfg.train.cudnn_attention)
        CausalSelfAttention.expand_kv = cfg.train.cudnn_attention
    lut = build_byte_lut(cfg.train.tokenizer_path, cfg.model.vocab_size).to(ctx.device)
    tokens = load_validation_tokens(val_pattern(cfg.train.data_path), e.eval_seq_len, e.max_val_tokens).to(ctx.device)
    ck = Checkpoint(cfg, run_dir / "final_model.int6.ptz", ctx.device)
    out = {"run": str(run_dir), "tokens": tokens.numel(), "virtual_ranks": virtual_ranks}
    for name, comp in (("eager", False), ("compiled", cuda)):
        set_qat(True)
        try:
            r = adapt.adapt_dynamic(ck.model(), tokens, lut, seq_len=e.eval_seq_len, stride=e.eval_stride,
                                    batch_seqs=e.eval_batch_seqs, lr=e.dyneval_lr, adapt_every=e.adapt_every,
                                    virtual_ranks=virtual_ranks, autocast=cuda, compile=comp)
        finally:
            set_qat(False)
        out[name] = {"bpb": r.bpb, "loss": r.loss, "seconds": r.seconds, "compiled": comp}
    out["bpb_compiled_minus_eager"] = out["compiled"]["bpb"] - out["eager"]["bpb"]
    return out


def bench_compare(cfg, steps: int, num_windows: int, device: str | None = None, run_dir: str | Path | None = None,
                  log=print) -> dict:
    """Faithful (the run's settings) against fast, each measured in this process on this card.

    Training: `cfg` as given (flash attention, the run's compile) vs `cfg` + FAST_OVERRIDES.
    Sliding eval: compiled in both, flash vs fast. The run's dynamic eval: eager and flash, as the run
    scored it, vs compiled and fast. With `run_dir`, also the compiled-vs-eager bpb of the dynamic eval
    on that run's artifact. Every entry holds both absolute figures and fast / faithful.
    """
    fast = cfg.with_overrides(list(FAST_OVERRIDES))
    faithful_dyn = cfg.with_overrides(["eval.compile=0"])
    out = {"bench": "compare", "fast_overrides": list(FAST_OVERRIDES)}
    log("train: faithful ...")
    a = bench_train(cfg, steps, device)
    log("train: fast ...")
    b = bench_train(fast, steps, device)
    out.update({k: a[k] for k in ("device", "torch", "world_size")})
    out["train"] = {"faithful": a, "fast": b,
                    "ratio_tokens_per_s": _ratio(b["tokens_per_s_per_gpu"], a["tokens_per_s_per_gpu"])}
    for label, (cfg_a, cfg_b, variant) in {"sliding": (cfg, fast, "sliding"),
                                           "dynamic": (faithful_dyn, fast, "dynamic")}.items():
        log(f"{label}: faithful ...")
        a = bench_eval(cfg_a, [variant], num_windows, device)[0]
        log(f"{label}: fast ...")
        b = bench_eval(cfg_b, [variant], num_windows, device)[0]
        out[label] = {"faithful": a, "fast": b, "ratio_windows_per_s": _ratio(b["windows_per_s"], a["windows_per_s"])}
    if run_dir is not None:
        log("dynamic eval on the checkpoint: eager and compiled ...")
        out["dynamic_compiled_vs_eager"] = dynamic_compiled_vs_eager(run_dir, device)
    return out


def compare_lines(r: dict) -> list[str]:
    """The comparison as a few readable lines: fast / faithful with both absolute figures."""
    t, s, d = r["train"], r["sliding"], r["dynamic"]
    lines = [f"{r['device']}, torch {r['torch']}; fast = faithful + {', '.join(r['fast_overrides'])}",
             f"train tokens/s: {t['ratio_tokens_per_s']:.2f}x ({t['fast']['tokens_per_s_per_gpu']:,.0f} fast vs "
             f"{t['faithful']['tokens_per_s_per_gpu']:,.0f} faithful)",
             f"sliding windows/s: {s['ratio_windows_per_s']:.2f}x ({s['fast']['windows_per_s']:,.0f} vs "
             f"{s['faithful']['windows_per_s']:,.0f})",
             f"dynamic eval windows/s: {d['ratio_windows_per_s']:.2f}x ({d['fast']['windows_per_s']:,.0f} compiled+fast "
             f"vs {d['faithful']['windows_per_s']:,.0f} eager, as the run)"]
    c = r.get("dynamic_compiled_vs_eager")
    if c:
        lines.append(f"dynamic eval bpb on {c['run']}: compiled {c['compiled']['bpb']:.5f} - eager "
                     f"{c['eager']['bpb']:.5f} = {c['bpb_compiled_minus_eager']:+.5f}")
    return lines


def main_compare(args) -> int:
    cfg = load(args.profile, list(args.set or []), args.config)
    r = bench_compare(cfg, args.steps, args.windows, args.device, args.run, log=lambda m: print(m, flush=True))
    for line in compare_lines(r):
        print(line)
    print(json.dumps(r))
    return 0


def main(args) -> int:
    if args.what == "compare":
        return main_compare(args)
    cfg = load(args.profile, list(args.set or []), args.config)
    if args.what == "train":
        rows = [bench_train(cfg, args.steps, args.device)]
    else:
        rows = bench_eval(cfg, [v.strip() for v in args.variants.split(",")], args.windows, args.device)
    for r in rows:
        print(json.dumps(r))
    return 0
