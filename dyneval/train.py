"""Training: the record run's loop, under torchrun on 8 GPUs, one GPU, or the CPU.

Owns `train(cfg, out_dir)`: gradient accumulation 8/world (any GPU count does the same math),
compile-priming warm-up steps after which weights, optimizer states and loader are restored, the
wall-clock cap with its time-based warmdown, Muon momentum warm-up, gradient clipping, EMA every
step, late QAT below the lr-scale threshold, periodic validation, the run's log lines, and the
training state (`TrainState`) checkpointed atomically every N steps, at the end of training and on
SIGINT/SIGTERM (always between two steps, so a resume is bitwise the uninterrupted run), loaded with
`weights_only=True` (a checkpoint holds tensors and plain containers, never code). At the end: EMA
applied, `final_model.pt`, then the export stage (`export.export`) and `meta.json`.
"""

from __future__ import annotations

import copy
import json
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import cpu, data, distributed as dist_utils, files, graphs
from .config import RunConfig, Scoring, switch_on
from .distributed import Context, Ranks
from .evaluate import Scorer, evaluate_nonoverlap, require_finite
from .export import export
from .model import GPT, apply_dtype_policy, bf16_autocast, configure_backends, load_weights, set_numerics
from .optim import Optimizers, build_optimizers, lr_scale, muon_momentum, zeropower_via_newtonschulz5
from .runfolder import CHECKPOINT, EVAL_DIR, EXPORT, FINAL_WEIGHTS, META, SIZE_REPORT, TRAIN_LOG


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
            "cpu_threads": torch.get_num_threads(), "openmp": dict(cpu.decision) or None, **git_info()}
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

    def close(self) -> None:
        if self.f:
            self.f.close()


def save_atomic(obj, path: Path) -> None:
    with files.atomic_open(path) as f:
        torch.save(obj, f)


def build_model(cfg: RunConfig, device: torch.device) -> GPT:
    torch.manual_seed(cfg.train.seed)
    model = GPT(cfg.model).to(device)
    if switch_on(cfg.train.gpu_dtypes, device):  # CUDA, or any device when asked (the bf16 paths in CI)
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
        with bf16_autocast(x, autocast):
            loss = model(x, y)
        (loss / grad_accum).backward()
        total = loss.detach() if total is None else total + loss.detach()
    return dist_utils.all_reduce_(total / grad_accum, average=True)


# ----------------------------------------------------------------------------------------------
# The training state and its checkpoint

class TrainState:
    """Everything a step changes: weights, EMA, optimizer states, loader position, step, clock, history.

    `state_dict()` holds only tensors and plain containers, so a checkpoint loads with
    `weights_only=True`; `load_state_dict` restores all of it, so a resumed run continues bitwise.
    """

    def __init__(self, model: GPT, opts: Optimizers, loader: data.DistributedTokenLoader, ema_decay: float):
        self.model, self.opts, self.loader = model, opts, loader
        self.ema = {k: v.detach().float().clone() for k, v in model.state_dict().items()} if ema_decay else None
        self.step, self.train_ms = 0, 0.0
        self.history: dict = {"train": [], "val": []}
        self.qat_step: int | None = None  # the step before which late QAT's flag was set (None: not yet)

    def state_dict(self) -> dict:
        """Collective under torchrun (every rank calls it): it gathers every rank's Muon buffers."""
        return {"model": self.model.state_dict(), "optimizers": self.opts.state_dict(),
                "loader": self.loader.stream.state(), "ema": self.ema, "step": self.step, "train_ms": self.train_ms,
                "history": self.history, "qat_step": self.qat_step}

    def load_state_dict(self, state: dict, source: str) -> None:
        load_weights(self.model, state["model"], source)
        self.opts.load_state_dict(state["optimizers"])
        self.loader.stream.load_state(state["loader"])
        self.ema = state["ema"]
        self.step, self.train_ms, self.history = int(state["step"]), float(state["train_ms"]), state["history"]
        self.qat_step = state["qat_step"]


def read_checkpoint(path: Path, cfg: RunConfig, device) -> dict:
    """A checkpoint, read with `weights_only=True` and checked against the config of this run."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # an unpicklable or tampered file: never run what it carries
        raise ValueError(f"{path}: not a checkpoint of tensors and plain containers "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:100]}): remove it to start fresh") from None
    saved = state.get("config") if isinstance(state, dict) else None
    if saved != cfg.to_dict():
        diff = _first_difference(saved or {}, cfg.to_dict())
        raise ValueError(f"{path}: written by another config ({diff}): resume with the config it was written "
                         f"with, or remove the checkpoint to start fresh")
    return state


def _first_difference(a: dict, b: dict, prefix: str = "") -> str:
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            d = _first_difference(x, y, f"{prefix}{k}.")
            if d:
                return d
        elif x != y:
            return f"{prefix}{k}: checkpoint {x!r}, now {y!r}"
    return ""


class Interrupts:
    """SIGINT and SIGTERM set a flag; the loop checks it between steps and checkpoints there.

    A signal that raised wherever it landed could interrupt a half-applied optimizer or EMA update
    and save a loader position ahead of the step counter: a resume would then differ from the run.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.flag = False
        self.previous = {}

    def __enter__(self):
        try:
            for s in self.SIGNALS:
                self.previous[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread: no handlers, nothing to restore
            self.previous = {}
        return self

    def _handle(self, signum, frame):
        self.flag = True

    def __exit__(self, *exc):
        for s, h in self.previous.items():
            signal.signal(s, h)
        return False

    def any_rank(self) -> bool:
        return bool(dist_utils.max_over_ranks(float(self.flag)))


# ----------------------------------------------------------------------------------------------
# The stages of the loop

@dataclass
class Trainer:
    """What the loop runs on, built once by `build_trainer`."""

    cfg: RunConfig
    ctx: Context
    out: Path
    log: Logger
    model: torch.nn.Module  # compiled and/or DDP-wrapped: what the micro-steps call
    lut: data.ByteLUT
    val_tokens: torch.Tensor
    grad_accum: int
    local_tokens: int
    val_batch_seqs: int
    backends: dict
    tokenizer_sha256: str  # checked against the data's manifest at setup; recorded in meta.json
    regions: graphs.Regions  # the compiled functions (none when not compiling) and their graph counts
    graph_counts: dict = field(default_factory=dict)  # graphs made per phase: warm-up, qat switch, timed steps

    def count_graphs(self, phase: str, before: int) -> None:
        """Add the graphs made since `before` (a `total_graphs()` reading) to `phase`."""
        self.graph_counts[phase] = self.graph_counts.get(phase, 0) + self.total_graphs() - before

    def total_graphs(self) -> int:
        return sum(r.graphs for r in self.regions.by_name.values())

    @property
    def autocast(self) -> bool:
        """bf16 autocast: the GPU dtype policy's, on CUDA or wherever `train.gpu_dtypes=1` asks for it."""
        return switch_on(self.cfg.train.gpu_dtypes, self.ctx.device)


def build_trainer(cfg: RunConfig, out_dir: str | Path, device: str | None) -> tuple[Trainer, TrainState]:
    """Process group, backends, data, model, optimizers: the trainer and a fresh state."""
    ctx = dist_utils.init_context(device)
    tc = cfg.train
    out = Path(out_dir)
    if ctx.is_main:
        files.output_folder(out)  # a file or a read-only folder is a one-line error
    dist_utils.barrier()
    log = Logger(out / TRAIN_LOG, ctx.is_main)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    grad_accum = tc.grad_accum_steps(ctx.world_size)
    local_tokens = tc.local_batch_tokens(ctx.world_size)
    if local_tokens % tc.train_seq_len:
        raise ValueError(f"train_batch_tokens={tc.train_batch_tokens} gives {local_tokens} tokens per rank and "
                         f"micro-step, not a multiple of train_seq_len={tc.train_seq_len}")
    backends = configure_backends(cfg, ctx.device)
    data.check_tune_unread(data.train_pattern(tc.data_path), tc.iterations,
                           data.tokens_per_step(tc.train_batch_tokens, tc.grad_accum_total), tc.max_wallclock_seconds > 0, log)
    loader = data.DistributedTokenLoader(data.train_pattern(tc.data_path), ctx.rank, ctx.world_size, ctx.device,
                                         cfg.model.vocab_size)
    val = data.validation_inputs(tc, cfg.model.vocab_size, ctx.device, ctx.world_size)
    base = set_numerics(build_model(cfg, ctx.device), qat=False, expand_kv=backends["expand_kv"])
    regions = graphs.Regions(tc.compile_backend)
    compiling = graphs.should_compile(tc.compile, ctx.device)
    ns = regions.get("newton_schulz", fn=zeropower_via_newtonschulz5, dynamic=None) if compiling else None
    opts = build_optimizers(base, cfg.optim, cfg.model.tie_embeddings, compile_ns=ns)
    # fullgraph, as the run compiles: a graph break would be a silent slowdown and a numerics change
    model = regions.get("train_step", fn=base, fullgraph=True).compiled if compiling else base
    if ctx.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        # GPT has no buffers (tests/test_model.py), so DDP's buffer sync has nothing to do: no buffer argument
        model = DDP(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
    trainer = Trainer(cfg, ctx, out, log, model, val.lut, val.tokens, grad_accum, local_tokens, val.batch_seqs,
                      backends, val.tokenizer_sha256, regions)
    return trainer, TrainState(base, opts, loader, tc.ema_decay)


def micro_steps(tr: Trainer, st: TrainState) -> torch.Tensor:
    tc = tr.cfg.train
    return accumulate(tr.model, lambda: st.loader.next_batch(tr.local_tokens, tc.train_seq_len), tr.grad_accum,
                      tr.ctx.world_size, tr.autocast)


def warm_up(tr: Trainer, st: TrainState) -> None:
    """The run's compile-priming steps: take them, then restore weights, optimizer states and data."""
    tc = tr.cfg.train
    init_model = copy.deepcopy(st.model.state_dict())
    init_opt = copy.deepcopy(st.opts.state_dict())
    st.model.train()
    if tr.model is not st.model:  # compiled: the first step compiles, which takes minutes on a GPU
        tr.log(f"warmup: {tc.warmup_steps} steps; the first compiles the model (torch.compile, minutes) ...")
    t0 = time.perf_counter()
    before = tr.total_graphs()
    for _ in range(tc.warmup_steps):
        st.opts.zero_grad()
        micro_steps(tr, st)
        st.opts.step()
    tr.count_graphs("warmup", before)
    load_weights(st.model, init_model, "initial weights")
    st.opts.load_state_dict(init_opt)
    st.loader = data.DistributedTokenLoader(data.train_pattern(tc.data_path), tr.ctx.rank, tr.ctx.world_size,
                                            tr.ctx.device, tr.cfg.model.vocab_size)
    tr.log(f"warmup: {tc.warmup_steps} steps done in {time.perf_counter() - t0:.1f} s, weights/optimizer/loader restored")


def validate(tr: Trainer, st: TrainState, model: GPT | None = None):
    """Non-overlapping val score (the run's periodic `val_bpb`), reduced over ranks."""
    tc = tr.cfg.train
    m = model or st.model
    plan = Scoring(seq_len=tc.train_seq_len, stride=tc.train_seq_len, batch_seqs=tr.val_batch_seqs)
    r = evaluate_nonoverlap(m, Scorer(tr.val_tokens, tr.lut, plan, Ranks.current(), tr.autocast))
    st.model.train()
    return r


def late_qat(tr: Trainer, st: TrainState, mul: float) -> None:
    """Late QAT's switch, faithful to what the run's training did with it.

    The run sets a class-wide flag once the lr scale drops below the threshold; its model was compiled
    with fullgraph before that, the compiled graph kept the old constant, and step time did not change
    (107.08 ms before and after, no recompile pause): its training never fake-quantized. Faithful
    (`train.qat_trains=0`): the switch is logged and recorded -- the run's later train-mode passes
    (TTT, dynamic eval) see it, which the evaluate stage reproduces with its `qat_on` quirk -- and
    every step trains without fake quantization. `qat_trains=1` really trains through int6 rounding;
    on a compiled model the recompile is forced here, outside the timed step.
    """
    tc = tr.cfg.train
    if not tc.late_qat_threshold or mul >= tc.late_qat_threshold or st.qat_step is not None:
        return
    st.qat_step = st.step
    how = "training through int6 fake quantization" if tc.qat_trains else \
        "flag only: as in the run, the training graph does not fake-quantize"
    tr.log(f"late_qat:enabled step:{st.step} (lr scale {mul:.4f}; {how})")
    if tc.qat_trains:
        set_numerics(st.model, qat=True)
        prime_compiled(tr, st, "qat_switch")


def prime_compiled(tr: Trainer, st: TrainState, phase: str) -> None:
    """Compiled: make the graph the next steps need now, outside the clock, on a throwaway batch of the
    real micro-batch shape (a (1, L) batch under `dynamic=False` compiles a graph no step uses, and the
    first timed step then recompiles). Gradients are dropped; weights and optimizer states are untouched."""
    if tr.model is st.model:
        return
    before = tr.total_graphs()
    tc = tr.cfg.train
    x = torch.zeros(tr.local_tokens // tc.train_seq_len, tc.train_seq_len, dtype=torch.long, device=tr.ctx.device)
    with bf16_autocast(x, tr.autocast):
        tr.model(x, x.clone()).backward()  # two tensors, as a step's: dynamo guards on inputs aliasing
    st.opts.zero_grad()
    tr.count_graphs(phase, before)


def train_step(tr: Trainer, st: TrainState) -> None:
    """One optimizer step: schedules, micro-steps, clip, step, EMA, the clock and the log line."""
    tc, cuda = tr.cfg.train, tr.autocast
    cap_ms = 1000.0 * tc.max_wallclock_seconds
    mul = lr_scale(st.step, st.train_ms, tc.iterations, tc.warmdown_iters, cap_ms)
    late_qat(tr, st, mul)
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    st.opts.set_lr_scale(mul)
    st.opts.set_muon_momentum(muon_momentum(tr.cfg.optim, st.step))
    st.opts.zero_grad()
    before = tr.total_graphs()
    loss = micro_steps(tr, st)
    tr.count_graphs("timed_steps", before)  # a graph made here lands inside the clock: 0 after the warm-up
    if tr.cfg.optim.grad_clip_norm:
        torch.nn.utils.clip_grad_norm_(st.model.parameters(), tr.cfg.optim.grad_clip_norm)
    st.opts.step()
    if st.ema is not None:
        with torch.no_grad():
            for k, v in st.model.state_dict().items():
                st.ema[k].mul_(tc.ema_decay).add_(v.detach().float(), alpha=1 - tc.ema_decay)
    if cuda:
        torch.cuda.synchronize()
    st.train_ms += 1000.0 * (time.perf_counter() - t0)
    if cap_ms:
        st.train_ms = dist_utils.max_over_ranks(st.train_ms)  # every rank stops at the same step
    st.step += 1
    loss_v = loss.item()
    st.history["train"].append({"step": st.step, "train_loss": loss_v, "train_ms": st.train_ms, "lr_scale": mul})
    if st.step % tc.train_log_every == 0 or st.step <= 10:
        tr.log(f"step:{st.step}/{tc.iterations} train_loss:{loss_v:.4f} train_time:{st.train_ms:.0f}ms "
               f"step_avg:{st.train_ms / st.step:.2f}ms")
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training diverged at step {st.step} (loss {loss_v}): lower the learning rates")


def checkpoint(tr: Trainer, st: TrainState, reason: str) -> None:
    path = tr.out / CHECKPOINT
    state = st.state_dict()  # every rank: Muon's momentum buffers are gathered from their owners
    if tr.ctx.is_main:
        save_atomic({**state, "config": tr.cfg.to_dict(), "world_size": tr.ctx.world_size}, path)
        tr.log(f"checkpoint: step {st.step} ({reason}) -> {path}")
    dist_utils.barrier()


def validate_if_due(tr: Trainer, st: TrainState, last: bool) -> None:
    tc = tr.cfg.train
    due = (tc.val_loss_every and st.step % tc.val_loss_every == 0) or st.step == 0 or last
    if not due or (st.history["val"] and st.history["val"][-1]["step"] == st.step):  # not twice after a resume
        return
    r = validate(tr, st)
    st.history["val"].append({"step": st.step, "val_loss": r.loss, "val_bpb": r.bpb, "train_ms": st.train_ms})
    tr.log(f"step:{st.step}/{tc.iterations} val_loss:{r.loss:.4f} val_bpb:{r.bpb:.4f} "
           f"train_time:{st.train_ms:.0f}ms step_avg:{st.train_ms / max(st.step, 1):.2f}ms")


def train(cfg: RunConfig, out_dir: str | Path, resume: bool = False, device: str | None = None,
          stop_after: int | None = None) -> dict:
    """Run the training stage into `out_dir`; return the summary written to meta.json (rank 0).

    `stop_after`: end the loop after this many steps as if interrupted (checkpoint written, no
    export), as a kill at that step would; the resume tests use it.
    """
    tr, st = build_trainer(cfg, out_dir, device)
    tc = cfg.train
    for line in start_warnings(cfg, tr.ctx.device, tr.ctx.world_size):
        tr.log(line)
    ckpt = tr.out / CHECKPOINT
    if resume and ckpt.is_file():
        state = read_checkpoint(ckpt, cfg, tr.ctx.device)
        st.load_state_dict(state, str(ckpt))
        if st.qat_step is not None and tc.qat_trains:
            set_numerics(st.model, qat=True)
        written = state.get("world_size", "unrecorded")  # checkpoints written before it was recorded
        tr.log(f"resumed from {ckpt} at step {st.step} (written by world size {written}, now {tr.ctx.world_size})")
        st.model.train()
        prime_compiled(tr, st, "resume")  # no warm-up on a resume: compile before the clock restarts
    else:
        if resume:
            tr.log(f"no checkpoint at {ckpt}: starting fresh")
        tr.log(json.dumps({"config": cfg.to_dict(), "env": environment_info(tr.ctx.device),
                           "backends": tr.backends}))
        if tc.warmup_steps:
            warm_up(tr, st)
    cap_ms = 1000.0 * tc.max_wallclock_seconds
    st.model.train()
    with Interrupts() as interrupts:
        while True:
            last = st.step >= tc.iterations or bool(cap_ms and st.train_ms >= cap_ms)
            validate_if_due(tr, st, last)
            if last:
                break
            if stop_after is not None and st.step >= stop_after:
                checkpoint(tr, st, "stop_after")
                return {"stopped_at": st.step}
            train_step(tr, st)
            if tc.checkpoint_every and st.step % tc.checkpoint_every == 0:
                checkpoint(tr, st, "periodic")
            if interrupts.any_rank():
                checkpoint(tr, st, "interrupted")
                raise KeyboardInterrupt
        # The end-of-training state, so a signal or crash during the export loses nothing.
        if not (ckpt.is_file() and tc.checkpoint_every and st.step % tc.checkpoint_every == 0):
            checkpoint(tr, st, "end of training")
        return finish_run(tr, st)


def finish_run(tr: Trainer, st: TrainState) -> dict:
    """Apply the EMA, write final_model.pt, score it, run the export stage, write meta.json."""
    if st.ema is not None:
        load_weights(st.model, st.ema, "EMA")
    state = {k: v.detach().cpu() for k, v in st.model.state_dict().items()}
    ema_val = validate(tr, st)
    require_finite(str(tr.out), ema_val)  # no NaN score with exit status 0
    if tr.ctx.is_main:
        save_atomic(state, tr.out / FINAL_WEIGHTS)
    dist_utils.barrier()
    tr.log(f"final_ema val_loss:{ema_val.loss:.4f} val_bpb:{ema_val.bpb:.4f}")
    exported = export(tr.out, tr.cfg, device=str(tr.ctx.device.type), log=tr.log)
    meta = {"config": tr.cfg.to_dict(), "env": environment_info(tr.ctx.device), "backends": tr.backends,
            "steps": st.step, "train_seconds": st.train_ms / 1000.0, "late_qat_step": st.qat_step,
            "qat_enabled_at_end": st.qat_step is not None, "qat_trained": bool(tr.cfg.train.qat_trains),
            "final_ema": ema_val.summary(), "int6_roundtrip": exported["int6_roundtrip"], "size": exported["size"],
            "export": {k: exported[k] for k in ("settings", "bits", "artifact", "artifact_sha256")}, "history": st.history,
            "tokenizer_sha256": tr.tokenizer_sha256,  # checked at evaluation
            "graphs": {"regions": tr.regions.record(), "by_phase": tr.graph_counts}}  # compiled functions
    if tr.ctx.is_main:
        files.write_json(tr.out / META, meta)
        (tr.out / CHECKPOINT).unlink(missing_ok=True)
    tr.log.close()
    return meta


# Files of a run folder that a new training would replace (the artifact names of every bit width, and eval/).
RUN_OUTPUTS = (CHECKPOINT, FINAL_WEIGHTS, META, EXPORT, SIZE_REPORT, TRAIN_LOG)


def claim_run_folder(out: str | Path, resume: bool, fresh: bool) -> None:
    """Refuse to train over a finished run or a checkpoint unless asked: `resume` continues a checkpoint,
    `fresh` deletes the run's files (and its eval/) first. A finished run is never resumed over."""
    import shutil

    out = Path(out)
    finished, ckpt = (out / META).is_file(), (out / CHECKPOINT).is_file()
    if fresh:
        for name in RUN_OUTPUTS:
            (out / name).unlink(missing_ok=True)
        for artifact in out.glob("final_model.int*.ptz"):
            artifact.unlink()
        shutil.rmtree(out / EVAL_DIR, ignore_errors=True)
        return
    if finished:
        raise ValueError(f"{out}: holds a finished run (meta.json){' that --resume cannot continue' if resume else ''}: "
                         f"choose another --out, or --fresh to delete it (and its eval/) and train again")
    if ckpt and not resume:
        raise ValueError(f"{out}: holds a checkpoint of an interrupted run ({CHECKPOINT}): --resume to continue it, "
                         f"or --fresh to delete it and start over")


def start_warnings(cfg: RunConfig, device: torch.device, world_size: int) -> list[str]:
    """One line each, at the start of training: a record profile on hardware it was not made for (and what
    its wall clock or step count will then do), and a schedule that cannot fit its step count."""
    from .config import preset

    tc, out = cfg.train, []
    record = preset("record")
    if cfg.model == record.model and tc.train_batch_tokens == record.train.train_batch_tokens:
        made = f"{cfg.nproc}×H100"
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if device.type == "cuda" else []
        here = (f"{world_size} process(es) on {gpus[0]}" if gpus else f"{world_size} process(es) on the CPU")
        wrong = device.type != "cuda" or world_size < cfg.nproc or not all("H100" in g for g in gpus)
        if wrong and tc.max_wallclock_seconds:
            out.append(f"warning: this record profile was made for {made}, here {here}: its "
                       f"{tc.max_wallclock_seconds:.0f} s wall clock will stop training after a fraction of the run's "
                       f"~5,600 steps (its warmdown is timed: the schedule completes, on far fewer steps and tokens)")
        elif wrong:
            out.append(f"warning: this record profile was made for {made}, here {here}: without a wall clock it "
                       f"trains all {tc.iterations:,} steps with the run's math, at this hardware's speed")
    if not tc.max_wallclock_seconds and tc.warmdown_iters > tc.iterations:
        lr0 = lr_scale(0, 0.0, tc.iterations, tc.warmdown_iters, 0.0)
        out.append(f"warning: warmdown_iters {tc.warmdown_iters:,} > iterations {tc.iterations:,}: every step is in "
                   f"the warmdown and the learning rate starts at {100 * lr0:.1f}% of its peak")
    if cfg.optim.muon_momentum_warmup_steps > tc.iterations:
        out.append(f"warning: muon_momentum_warmup_steps {cfg.optim.muon_momentum_warmup_steps:,} > iterations "
                   f"{tc.iterations:,}: Muon's momentum never reaches {cfg.optim.muon_momentum}")
    return out
