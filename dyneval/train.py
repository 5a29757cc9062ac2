"""Training: the record run's loop, under torchrun on 8 GPUs, one GPU, or the CPU.

Owns `train(cfg, out_dir)`: gradient accumulation 8/world (any GPU count does the same math),
compile-priming warm-up steps after which weights, optimizer states and loader are restored, the
wall-clock cap with its time-based warmdown, Muon momentum warm-up, gradient clipping, EMA every
step, late QAT below the lr-scale threshold, periodic validation, the run's log lines, atomic
checkpoints of the full state (every N steps and on interruption) and `--resume`. At the end: EMA
applied, `final_model.pt`, the int6 artifact with its size report, and `meta.json`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import data, distributed as dist_utils, files, quant
from .config import RunConfig
from .evaluate import evaluate_nonoverlap, require_finite
from .model import GPT, CastedLinear, CausalSelfAttention, apply_dtype_policy, load_weights, set_qat
from .optim import build_optimizers, lr_scale, muon_momentum

CHECKPOINT = "checkpoint.pt"


def git_info() -> dict:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {"commit": commit or None, "dirty": dirty}


def environment_info(device: torch.device) -> dict:
    info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
            "platform": platform.platform(), "device": str(device), "world_size": dist_utils.world_size(),
            **git_info()}
    if device.type == "cuda":
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


class Logger:
    """Rank-0 log to stdout and `train.log` in the run folder, flushed line by line."""

    def __init__(self, path: Path | None, enabled: bool):
        self.enabled = enabled
        self.f = open(path, "a") if (enabled and path) else None

    def __call__(self, msg: str) -> None:
        if not self.enabled:
            return
        print(msg, flush=True)
        if self.f:
            self.f.write(msg + "\n")
            self.f.flush()


def save_atomic(obj, path: Path) -> None:
    with files.atomic_open(path) as f:
        torch.save(obj, f)


def build_model(cfg: RunConfig, device: torch.device) -> GPT:
    torch.manual_seed(cfg.train.seed)
    model = GPT(cfg.model).to(device)
    if device.type == "cuda":
        apply_dtype_policy(model)
    return model


def accumulate(model, next_batch, grad_accum: int, world_size: int, autocast: bool) -> torch.Tensor:
    """One step's micro-batches: loss/accum backward each, DDP's gradient sync on the last only.

    Returns the step's mean training loss over every rank's tokens.
    """
    total = None
    for micro in range(grad_accum):
        if world_size > 1:
            model.require_backward_grad_sync = micro == grad_accum - 1
        x, y = next_batch()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = model(x, y)
        (loss / grad_accum).backward()
        total = loss.detach() if total is None else total + loss.detach()
    return dist_utils.all_reduce_(total / grad_accum, average=True)


def train(cfg: RunConfig, out_dir: str | Path, resume: bool = False, device: str | None = None,
          stop_after: int | None = None) -> dict:
    """Run the training stage into `out_dir`; return the summary written to meta.json (rank 0).

    `stop_after`: end the loop after this many steps as if interrupted (checkpoint written, no
    export), as a kill at that step would; the resume test uses it.
    """
    ctx = dist_utils.setup(device)
    tc = cfg.train
    out = Path(out_dir)
    if ctx.is_main:
        files.output_folder(out)  # issue 13: a file or a read-only folder is a one-line error
    dist_utils.barrier()
    log = Logger(out / "train.log", ctx.is_main)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    grad_accum = tc.grad_accum_steps(ctx.world_size)
    local_tokens = tc.local_batch_tokens(ctx.world_size)
    if local_tokens % tc.train_seq_len:
        raise ValueError(f"train_batch_tokens={tc.train_batch_tokens} gives {local_tokens} tokens per rank and "
                         f"micro-step, not a multiple of train_seq_len={tc.train_seq_len}")
    cuda = ctx.device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.enable_cudnn_sdp(tc.cudnn_attention)  # the run disables cuDNN attention
        CausalSelfAttention.expand_kv = tc.cudnn_attention

    loader = data.DistributedTokenLoader(data.train_pattern(tc.data_path), ctx.rank, ctx.world_size, ctx.device,
                                         cfg.model.vocab_size)
    data.check_tokenizer(tc.tokenizer_path, tc.data_path)  # issue 13: refuse a tokenizer other than the data's
    lut = data.build_byte_lut(tc.tokenizer_path, cfg.model.vocab_size).to(ctx.device)
    val_tokens = data.load_validation_tokens(data.val_pattern(tc.data_path), tc.train_seq_len,
                                             tc.max_val_tokens, cfg.model.vocab_size).to(ctx.device)
    base = build_model(cfg, ctx.device)
    set_qat(False)
    opts = build_optimizers(base, cfg.optim, cfg.model.tie_embeddings)
    model = torch.compile(base, dynamic=False) if (cuda and tc.compile) else base
    if ctx.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[ctx.local_rank] if cuda else None, broadcast_buffers=False)
    val_batch_seqs = max(1, tc.val_batch_size_tokens // (ctx.world_size * grad_accum * tc.train_seq_len))
    autocast = cuda

    def micro_steps() -> torch.Tensor:
        return accumulate(model, lambda: loader.next_batch(local_tokens, tc.train_seq_len), grad_accum,
                          ctx.world_size, autocast)

    def validate() -> tuple[float, float]:
        r = evaluate_nonoverlap(base, val_tokens, lut, tc.train_seq_len, val_batch_seqs, ctx.rank, ctx.world_size,
                                autocast=autocast)
        base.train()
        return r.loss, r.bpb

    ema = {k: v.detach().float().clone() for k, v in base.state_dict().items()} if tc.ema_decay else None
    step, train_ms, history = 0, 0.0, {"train": [], "val": []}
    ckpt_path = out / CHECKPOINT
    if resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=ctx.device, weights_only=False)
        load_weights(base, state["model"], str(ckpt_path))
        opts.load_state_dict(state["optimizers"])
        loader.stream.load_state(state["loader"])
        ema = state["ema"]
        step, train_ms, history = state["step"], state["train_ms"], state["history"]
        set_qat(state["qat"])
        log(f"resumed from {ckpt_path} at step {step}")
    else:
        if resume:
            log(f"no checkpoint at {ckpt_path}: starting fresh")
        log(json.dumps({"config": cfg.to_dict(), "env": environment_info(ctx.device)}))
        if tc.warmup_steps:
            # Prime compilation and kernels, then restore the initial weights, optimizer states and data.
            init_model = copy.deepcopy(base.state_dict())
            init_opt = copy.deepcopy(opts.state_dict())
            base.train()
            for _ in range(tc.warmup_steps):
                opts.zero_grad()
                micro_steps()
                opts.step()
            load_weights(base, init_model, "initial weights")
            opts.load_state_dict(init_opt)
            loader = data.DistributedTokenLoader(data.train_pattern(tc.data_path), ctx.rank, ctx.world_size,
                                                 ctx.device, cfg.model.vocab_size)
            log(f"warmup: {tc.warmup_steps} steps done, weights/optimizer/loader restored")

    def checkpoint(reason: str) -> None:
        if ctx.is_main:
            save_atomic({"model": base.state_dict(), "optimizers": opts.state_dict(), "loader": loader.stream.state(),
                         "ema": ema, "step": step, "train_ms": train_ms, "history": history,
                         "qat": CastedLinear.qat_enabled, "config": cfg.to_dict()}, ckpt_path)
            log(f"checkpoint: step {step} ({reason}) -> {ckpt_path}")
        dist_utils.barrier()

    interrupted = {"flag": False}
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: interrupted.__setitem__("flag", True))
    cap_ms = 1000.0 * tc.max_wallclock_seconds
    base.train()
    try:
        while True:
            last = step >= tc.iterations or (cap_ms and train_ms >= cap_ms)
            due = (tc.val_loss_every and step % tc.val_loss_every == 0) or step == 0 or last
            if due and not (history["val"] and history["val"][-1]["step"] == step):  # not twice after a resume
                vl, vb = validate()
                history["val"].append({"step": step, "val_loss": vl, "val_bpb": vb, "train_ms": train_ms})
                log(f"step:{step}/{tc.iterations} val_loss:{vl:.4f} val_bpb:{vb:.4f} "
                    f"train_time:{train_ms:.0f}ms step_avg:{train_ms / max(step, 1):.2f}ms")
            if last:
                break
            if stop_after is not None and step >= stop_after:
                checkpoint("stop_after")
                return {"stopped_at": step}
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            mul = lr_scale(step, train_ms, tc.iterations, tc.warmdown_iters, cap_ms)
            if tc.late_qat_threshold and mul < tc.late_qat_threshold and not CastedLinear.qat_enabled:
                set_qat(True)
                log(f"late_qat: enabled at step {step} (lr scale {mul:.4f})")
            opts.set_lr_scale(mul)
            opts.set_muon_momentum(muon_momentum(cfg.optim, step))
            opts.zero_grad()
            loss = micro_steps()
            if cfg.optim.grad_clip_norm:
                torch.nn.utils.clip_grad_norm_(base.parameters(), cfg.optim.grad_clip_norm)
            opts.step()
            if ema is not None:
                with torch.no_grad():
                    for k, v in base.state_dict().items():
                        ema[k].mul_(tc.ema_decay).add_(v.detach().float(), alpha=1 - tc.ema_decay)
            if cuda:
                torch.cuda.synchronize()
            train_ms += 1000.0 * (time.perf_counter() - t0)
            if cap_ms:
                train_ms = dist_utils.max_over_ranks(train_ms)
            step += 1
            loss_v = loss.item()
            history["train"].append({"step": step, "train_loss": loss_v, "train_ms": train_ms, "lr_scale": mul})
            if step % tc.train_log_every == 0 or step <= 10:
                log(f"step:{step}/{tc.iterations} train_loss:{loss_v:.4f} train_time:{train_ms:.0f}ms "
                    f"step_avg:{train_ms / step:.2f}ms")
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training diverged at step {step} (loss {loss_v}): lower the learning rates")
            if tc.checkpoint_every and step % tc.checkpoint_every == 0:
                checkpoint("periodic")
            if dist_utils.max_over_ranks(float(interrupted["flag"])):
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        checkpoint("interrupted")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)

    summary = finish_training(cfg, base, ema, out, ctx, log, history, step, train_ms, val_tokens, lut,
                              val_batch_seqs, autocast)
    return summary


def finish_training(cfg, base: GPT, ema, out: Path, ctx, log, history, step, train_ms, val_tokens, lut,
                    val_batch_seqs, autocast) -> dict:
    """Apply the EMA, write final_model.pt, the artifact and its size report, meta.json; score both."""
    tc = cfg.train
    if ema is not None:
        load_weights(base, {k: v for k, v in ema.items()}, "EMA")
    state = {k: v.detach().cpu() for k, v in base.state_dict().items()}
    ema_val = evaluate_nonoverlap(base, val_tokens, lut, tc.train_seq_len, val_batch_seqs, ctx.rank,
                                  ctx.world_size, autocast=autocast)
    artifact = out / "final_model.int6.ptz"
    if ctx.is_main:
        save_atomic(state, out / "final_model.pt")
        quant.write_artifact(artifact, state)
        files.write_json(out / "size_report.json", quant.size_report(artifact))
    dist_utils.barrier()
    deq = quant.load_artifact(artifact, base.state_dict())
    rt = copy.deepcopy(base)
    load_weights(rt, deq, str(artifact))
    rt_val = evaluate_nonoverlap(rt, val_tokens, lut, tc.train_seq_len, val_batch_seqs, ctx.rank, ctx.world_size,
                                 autocast=autocast)
    size = quant.size_report(artifact)
    require_finite(str(out), ema_val, rt_val)  # issue 13: no NaN score with exit 0
    log(f"final_ema val_loss:{ema_val.loss:.4f} val_bpb:{ema_val.bpb:.4f}")
    log(f"final_int6_roundtrip val_loss:{rt_val.loss:.4f} val_bpb:{rt_val.bpb:.4f}")
    log(f"artifact: {size['model_bytes']:,} bytes + code {size['code_bytes']:,} = {size['total_bytes']:,} "
        f"(cap {size['cap_bytes']:,}: {'under' if size['under_cap'] else 'OVER'})")
    meta = {"config": cfg.to_dict(), "env": environment_info(ctx.device), "steps": step,
            "train_seconds": train_ms / 1000.0, "qat_enabled_at_end": CastedLinear.qat_enabled,
            "final_ema": ema_val.summary(), "final_int6_roundtrip": rt_val.summary(), "size": size,
            "history": history, "tokenizer_sha256": files.sha256_file(tc.tokenizer_path),  # issue 13
            "artifact_sha256": files.sha256_file(artifact)}
    if ctx.is_main:
        files.write_json(out / "meta.json", meta)
        ck = out / CHECKPOINT
        if ck.is_file():
            ck.unlink()
    return meta


def main(args) -> int:
    from .config import from_env, load

    cfg = load(args.profile, list(args.set or []), args.config)
    env = from_env(os.environ)
    if env:
        cfg = cfg.with_overrides(env)
        cfg = cfg.with_overrides(list(args.set or []))  # explicit --set wins over the environment
    try:
        with files.lock_folder(args.out) if os.environ.get("RANK", "0") == "0" else contextlib.nullcontext():  # issue 13
            train(cfg, args.out, resume=args.resume, device=args.device)
    except KeyboardInterrupt:
        print(f"interrupted: resume with the same command plus --resume (state in {Path(args.out) / CHECKPOINT})",
              file=sys.stderr)
        return 130
    finally:
        dist_utils.teardown()
    return 0
