"""Benchmarks that print figures (never timed tests): training step time and scoring windows/s.

Owns `python -m dyneval bench train` (ms per 786,432-token step and tokens/s per GPU after
compilation, on random tokens, the way the reference rates were measured) and `bench eval`
(windows/s of the scoring and adaptation passes), and `bench compare` (faithful vs fast side by side in
one process, as ratios). Run them on the GPU they describe; each prints the device, torch version and
settings with its numbers.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from . import distributed as dist_utils, graphs
from .adapt import Quirks
from .data import ByteLUT
from .distributed import Ranks
from .evaluate import sliding_windows
from .model import configure_backends, set_numerics
from .optim import build_optimizers, zeropower_via_newtonschulz5
from .train import accumulate, build_model
from .variants import VARIANTS, DequantizedArtifact, EvalInputs, job_for, parse_variants


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _header(ctx, backends: dict) -> dict:
    return {"device": torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "cpu",
            "torch": torch.__version__, "world_size": ctx.world_size, "backends": backends}


def bench_train(cfg, steps: int, device: str | None) -> dict:
    ctx = dist_utils.init_context(device)
    tc = cfg.train
    cuda = ctx.device.type == "cuda"
    backends = configure_backends(cfg, ctx.device)
    base = set_numerics(build_model(cfg, ctx.device), expand_kv=backends["expand_kv"])
    compiling = graphs.should_compile(tc.compile, ctx.device)
    ns = torch.compile(zeropower_via_newtonschulz5, backend=tc.compile_backend) if compiling else False
    opts = build_optimizers(base, cfg.optim, cfg.model.tie_embeddings, compile_ns=ns)
    model = torch.compile(base, dynamic=False, fullgraph=True, backend=tc.compile_backend) if compiling else base
    if ctx.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[ctx.local_rank] if cuda else None)  # no buffers to sync (as train.py)
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
    out = {**_header(ctx, backends), "bench": "train", "ms_per_step": ms, "tokens_per_step": tc.train_batch_tokens,
           "tokens_per_s_per_gpu": tokens_per_gpu, "steps_timed": steps, "compile_s": compile_s,
           "cudnn_attention": tc.cudnn_attention, "compile": tc.compile,
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}
    return out


def bench_eval(cfg, variants: list[str], num_windows: int, device: str | None, log=None) -> list[dict]:
    """Any variant of the registry on random tokens and a random model: windows/s on this device (one rank).

    The passes run exactly as `evaluate` runs them (same registry entry, same backends, same quirks:
    the run's own passes with the QAT flag on), after a warm-up on a short prefix that compiles every
    shape. dynamic_krause is left out: its statistics need the training data.
    """
    log = log or (lambda line: print(line, flush=True))  # a line per stage: never silent for minutes
    ctx = dist_utils.init_context(device)
    e = cfg.eval
    backends = configure_backends(cfg, ctx.device)
    V = cfg.model.vocab_size
    n_tokens = num_windows * e.eval_stride + e.eval_seq_len + 1
    gen = torch.Generator(device=ctx.device).manual_seed(0)
    tokens = torch.randint(4, V, (n_tokens,), device=ctx.device, generator=gen)
    lut = ByteLUT(torch.ones(V, dtype=torch.long, device=ctx.device), torch.zeros(V, dtype=torch.bool, device=ctx.device),
                  torch.zeros(V, dtype=torch.bool, device=ctx.device))
    n_win = len(sliding_windows(n_tokens - 1, e.eval_seq_len, e.eval_stride))
    ck = DequantizedArtifact.from_state(cfg, build_model(cfg, torch.device("cpu")).state_dict(), ctx.device)
    ranks = Ranks.current()
    prefix = tokens[: 4 * e.eval_batch_seqs * e.eval_stride + e.eval_seq_len + 1]
    results = []
    for name in parse_variants(",".join(variants)):
        if name == "dynamic_krause":
            raise ValueError("bench eval: dynamic_krause needs training batches for its statistics: not benchmarked")
        v = VARIANTS[name]
        log(f"bench eval: {name}: warm-up on a short prefix (compiles every shape) ...")
        t0 = time.perf_counter()
        v.run(job_for(v, cfg, EvalInputs(ck, prefix, lut, backends), Quirks(), ranks, {}))  # compile every shape first
        _sync(ctx.device)
        log(f"bench eval: {name}: warm-up done in {time.perf_counter() - t0:.1f} s; timing {n_win:,} windows ...")
        job = job_for(v, cfg, EvalInputs(ck, tokens, lut, backends), Quirks(), ranks, {})
        t0 = time.perf_counter()
        r, _ = v.run(job)
        _sync(ctx.device)
        s = time.perf_counter() - t0
        log(f"bench eval: {name}: {n_win:,} windows in {s:.1f} s")
        results.append({**_header(ctx, backends), "bench": "eval", "variant": name, "windows": n_win,
                        "seconds": s, "windows_per_s": n_win / s, "seq_len": e.eval_seq_len,
                        "stride": e.eval_stride, "batch_seqs": e.eval_batch_seqs, "compiled": job.compile,
                        "compiled_dynamic": job.compile_dynamic, "quirks": str(job.quirks), "bpb_random_tokens": r.bpb})
    return results


# ----------------------------------------------------------------------------------------------
# Faithful vs fast, side by side in one process on one card (issue 12): two configurations of the
# same registry entries.

# the fast mode: cuDNN attention with K/V expanded, and the run's dynamic eval compiled
FAST_OVERRIDES = ("train.cudnn_attention=1", "eval.compile_dynamic=auto")


def _ratio(fast: float, faithful: float) -> float:
    return fast / faithful if faithful else float("nan")


def dynamic_compiled_vs_eager(run_dir: str | Path, device: str | None = None, virtual_ranks: int | None = None,
                              where: str = "auto", backend: str | None = None) -> dict:
    """The run's dynamic eval on a training run's artifact, scored eagerly (as the run did) and compiled.

    Same checkpoint, same validation tokens, the registry's `dynamic` entry with the run's quirks; the
    bpb difference is what the faster compiled scoring changes in the number (bf16 kernels fuse
    differently). The run's attention backend, whatever a fast bench before this one left set. The
    compiled side compiles `where` says (`auto`: where the run's GPU would, so not on the CPU; `1`:
    any device) with `backend` (default: the run's `eval.compile_backend`).
    """
    from .config import run_config
    from .runfolder import RunFolder
    from .variants import default_ranks, evaluation_inputs

    ctx = dist_utils.init_context(device)
    run_dir = Path(run_dir)
    run = RunFolder(run_dir)
    cfg = run_config(run_dir)
    inputs = evaluation_inputs(cfg, run.latest_artifact(), ctx.device)
    tokens = inputs.tokens
    quirks = Quirks(qat_on=run.qat_flag_set())
    out = {"run": str(run_dir), "tokens": tokens.numel()}
    v = VARIANTS["dynamic"]
    for name, comp in (("eager", False), ("compiled", True)):
        c = cfg.with_overrides({"eval.compile_dynamic": where if comp else "0",
                                "eval.compile_backend": backend or cfg.eval.compile_backend})
        job = job_for(v, c, inputs, quirks, default_ranks(c, virtual_ranks), {})
        r, settings = v.run(job)
        out[name] = {"bpb": r.bpb, "loss": r.loss, "seconds": r.seconds, "compiled": job.compile_dynamic,
                     "ranks": job.ranks.describe()}
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
    out = {"bench": "compare", "fast_overrides": list(FAST_OVERRIDES)}
    log("train: faithful ...")
    a = bench_train(cfg, steps, device)
    log("train: fast ...")
    b = bench_train(fast, steps, device)
    out.update({k: a[k] for k in ("device", "torch", "world_size")})
    out["train"] = {"faithful": a, "fast": b,
                    "ratio_tokens_per_s": _ratio(b["tokens_per_s_per_gpu"], a["tokens_per_s_per_gpu"])}
    for label, (cfg_a, cfg_b, variant) in {"sliding": (cfg, fast, "sliding"),
                                           "dynamic": (cfg, fast, "dynamic")}.items():
        log(f"{label}: faithful ...")
        a = bench_eval(cfg_a, [variant], num_windows, device)[0]
        log(f"{label}: fast ...")
        b = bench_eval(cfg_b, [variant], num_windows, device)[0]
        out[label] = {"faithful": a, "fast": b, "ratio_windows_per_s": _ratio(b["windows_per_s"], a["windows_per_s"])}
    if run_dir is not None:
        log("dynamic eval on the checkpoint: eager and compiled ...")
        # compiled where the bench's eval.compile says (`--set eval.compile=1` on the CPU), with its backend
        out["dynamic_compiled_vs_eager"] = dynamic_compiled_vs_eager(run_dir, device, where=cfg.eval.compile,
                                                                     backend=cfg.eval.compile_backend)
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
