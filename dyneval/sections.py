"""The config's sections: one frozen, keyword-only dataclass per stage, and how a value becomes a field.

`ModelConfig`, `OptimConfig`, `TrainConfig`, `EvalConfig` (with its typed views per algorithm: `Scoring`,
`TTTSettings`, ...) and `RunConfig`, which holds one of each. Fields carry a one-line docstring (the comment
after them); derived values (gradient accumulation, tokens per micro-step) are properties. Bad values raise
`ValueError` naming the field. `RunConfig.with_overrides` takes `section.field=value` strings: locating the
field (`_locate`) and coercing the string to its type (`_coerce`) live here, beside the section table they
read. Presets are in presets.py, the environment shim in environ.py, resolution in config.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field

Switch = str  # a compile setting: "auto" (CUDA only), "1" (any device) or "0" (see `_switch`)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    vocab_size: int = 1024  # tokenizer pieces (the challenge's sp1024)
    num_layers: int = 11  # transformer blocks
    model_dim: int = 512  # residual width D
    num_heads: int = 8  # query heads H
    num_kv_heads: int = 4  # key/value heads K (GQA); H must be a multiple of K
    mlp_mult: float = 3.0  # MLP hidden = int(mlp_mult * D)
    tie_embeddings: bool = True  # share tok_emb with the output head
    tied_embed_init_std: float = 0.005  # N(0, std) init of the tied table
    logit_softcap: float = 30.0  # c in c*tanh(z/c)
    rope_base: float = 10000.0  # rotary base before NTK rescaling
    qk_gain_init: float = 1.5  # initial per-head query gain
    bigram_vocab_size: int = 2048  # BigramHash buckets (0 disables the table)
    bigram_dim: int = 128  # BigramHash table width (projected to D when different)
    xsa_last_n: int = 4  # XSA on the last N blocks
    rope_dims: int = 16  # rotary dims per head (0 = the whole head)
    ln_scale: bool = True  # scale block inputs by 1/sqrt(layer+1)
    rope_train_len: int = 1024  # quirk: rotary reference length fixed at 1024, so NTK rescaling is active at 2048

    def __post_init__(self):
        _finite(self)
        _positive(self, "vocab_size", "num_layers", "model_dim", "num_heads", "num_kv_heads",
                  "mlp_mult", "logit_softcap", "rope_base", "rope_train_len")
        _non_negative(self, "tied_embed_init_std")
        if self.bigram_vocab_size and self.bigram_dim <= 0:
            raise ValueError(f"bigram_dim={self.bigram_dim} must be positive with a bigram table "
                             f"(bigram_vocab_size={self.bigram_vocab_size})")
        if self.model_dim % self.num_heads:
            raise ValueError(f"model_dim={self.model_dim} is not a multiple of num_heads={self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head dim {self.head_dim} (model_dim/num_heads) must be even for RoPE")
        if self.rope_dims < 0 or self.rope_dims > self.head_dim or self.rope_dims % 2 or self.rope_dims == 2:
            raise ValueError(f"rope_dims={self.rope_dims} must be 0 or an even number in [4, {self.head_dim}]")
        if self.bigram_vocab_size < 0 or self.bigram_vocab_size == 1:
            raise ValueError(f"bigram_vocab_size={self.bigram_vocab_size} must be 0 (off) or >= 2")
        if not 0 <= self.xsa_last_n <= self.num_layers:
            raise ValueError(f"xsa_last_n={self.xsa_last_n} must lie in [0, num_layers={self.num_layers}]")

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.mlp_mult * self.model_dim)


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    tied_embed_lr: float = 0.035  # AdamW lr of the tied token table (and bigram table)
    embed_lr: float = 0.6  # AdamW lr of the token table when untied
    head_lr: float = 0.008  # Adam lr of an untied lm_head
    matrix_lr: float = 0.025  # Muon lr of block matrices
    scalar_lr: float = 0.025  # AdamW lr of vectors and control tensors
    muon_momentum: float = 0.99  # Muon momentum after warm-up
    muon_momentum_warmup_start: float = 0.92  # Muon momentum at step 0
    muon_momentum_warmup_steps: int = 1500  # linear momentum warm-up length (0: none)
    muon_backend_steps: int = 5  # Newton-Schulz iterations
    muon_wd: float = 0.042  # Muon decoupled weight decay
    adam_wd: float = 0.042  # AdamW weight decay
    beta1: float = 0.9  # Adam beta1
    beta2: float = 0.95  # Adam beta2
    adam_eps: float = 1e-8  # Adam epsilon
    grad_clip_norm: float = 0.3  # global gradient-norm clip (0: none)

    def __post_init__(self):
        _finite(self)
        _positive(self, "tied_embed_lr", "embed_lr", "head_lr", "matrix_lr", "scalar_lr", "adam_eps")
        for name in ("muon_momentum", "muon_momentum_warmup_start", "beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must lie in [0, 1)")
        _non_negative(self, "muon_wd", "adam_wd", "grad_clip_norm", "muon_momentum_warmup_steps")
        _positive(self, "muon_backend_steps")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    data_path: str = "data/datasets/fineweb10B_sp1024"  # folder of fineweb_{train,val}_*.bin shards
    tokenizer_path: str = "data/tokenizers/fineweb_1024_bpe.model"  # SentencePiece model
    seed: int = 1337  # RNG seed for init (the data order is fixed)
    iterations: int = 9000  # maximum optimizer steps
    train_batch_tokens: int = 786_432  # tokens per optimizer step, all ranks and micro-steps together
    train_seq_len: int = 2048  # training sequence length
    max_wallclock_seconds: float = 600.0  # wall-clock cap on training (0: none, stop at `iterations`)
    warmdown_iters: int = 3000  # warmdown length; measured in time when a wall-clock cap is set
    warmup_steps: int = 20  # compile-priming steps, then weights and optimizer states are restored
    ema_decay: float = 0.997  # EMA decay per step (0: no EMA)
    late_qat_threshold: float = 0.1  # switch on int6 fake quantization once the lr scale drops below this (0: never)
    qat_trains: bool = False  # late QAT really fake-quantizes training steps (the run's compiled graph never did)
    val_loss_every: int = 4000  # periodic validation (0: only at step 0 and at the end)
    val_batch_size_tokens: int = 524_288  # tokens per validation batch, all ranks together
    train_log_every: int = 200  # log a train_loss line every N steps
    checkpoint_every: int = 0  # save the full training state every N steps (0: only on interruption)
    compile: Switch = "auto"  # torch.compile the model and Newton-Schulz: auto (CUDA only, as the run), 1 (any device), 0
    compile_backend: str = "inductor"  # backend of every torch.compile call of training (aot_eager: no codegen, for CPU tests)
    gpu_dtypes: Switch = "auto"  # the GPU dtype policy (bf16 tables and linears, bf16 autocast): auto (CUDA), 1 (any device), 0
    cudnn_attention: bool = False  # the run disables PyTorch's cuDNN attention; on Hopper it is faster for these shapes
    grad_accum_total: int = 8  # micro-steps per step at world size 1; the run's 8 // world size
    max_val_tokens: int = 0  # cap validation tokens (0: all) -- for the CPU preset only
    threads: int = 0  # torch CPU threads (0: leave torch's default)

    def __post_init__(self):
        _finite(self)
        _positive(self, "iterations", "train_batch_tokens", "train_seq_len", "val_batch_size_tokens",
                  "train_log_every", "grad_accum_total")
        _non_negative(self, "seed", "max_wallclock_seconds", "warmdown_iters", "warmup_steps", "ema_decay",
                      "late_qat_threshold", "val_loss_every", "checkpoint_every", "max_val_tokens", "threads")
        if self.ema_decay >= 1:
            raise ValueError(f"ema_decay={self.ema_decay} must be < 1")
        _check_backend(self, "compile_backend")
        if self.train_batch_tokens % (self.grad_accum_total * self.train_seq_len):
            raise ValueError(f"train_batch_tokens={self.train_batch_tokens} must be a multiple of "
                             f"grad_accum_total*train_seq_len={self.grad_accum_total * self.train_seq_len}")

    def grad_accum_steps(self, world_size: int) -> int:
        """Micro-steps per rank: the run's 8 // world_size, so every GPU count does the same math."""
        if world_size <= 0 or self.grad_accum_total % world_size:
            raise ValueError(f"world size {world_size} does not divide grad_accum_total={self.grad_accum_total}: "
                             f"use 1, 2, 4 or 8 processes for the record's 8")
        return self.grad_accum_total // world_size

    def local_batch_tokens(self, world_size: int) -> int:
        """Tokens one rank processes per micro-step."""
        return self.train_batch_tokens // (world_size * self.grad_accum_steps(world_size))


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    eval_seq_len: int = 2048  # scoring window length
    eval_stride: int = 64  # sliding-window stride (scored tokens per window)
    eval_batch_seqs: int = 32  # windows per forward batch
    dyneval_lr: float = 0.001  # the run's dynamic-eval SGD lr
    adapt_every: int = 4  # the run: one SGD step every 4th batch, on that batch's first window
    ttt_lr: float = 0.002  # pre-eval / score-first TTT SGD lr
    ttt_momentum: float = 0.9  # TTT SGD momentum
    ttt_epochs: int = 3  # TTT passes
    ttt_batch_seqs: int = 32  # TTT sequences per step
    ttt_freeze_blocks: int = 2  # first blocks frozen by the run's pre-eval TTT
    ttt_chunk_tokens: int = 32_768  # score-first TTT chunk (merged records)
    ttt_grad_clip: float = 1.0  # TTT gradient-norm clip
    tail_lr: float = 0.003  # improved dynamic eval: SGD lr of the step after every batch (not yet tuned on FineWeb)
    tail_subset: str = "all"  # improved dynamic eval: parameters adapted (all, mlp, attn, blocks, tables, no_tables, lora)
    lora_rank: int = 8  # rank of the adapters when tail_subset is lora
    krause_lr: float = 3e-5  # Krause update: lr on the RMS-normalised gradient (not yet tuned on FineWeb)
    krause_decay: float = 0.02  # Krause update: decay toward the trained weights per step
    krause_batches: int = 4  # training batches for the gradient RMS statistics
    max_val_tokens: int = 0  # cap validation tokens (0: all)
    compile: Switch = "auto"  # compile the scoring forward: auto (CUDA only, as the run), 1 (any device), 0
    compile_dynamic: Switch = "0"  # compile the run's dynamic eval too (the run scored it eagerly; bf16 rounding differs)
    compile_backend: str = "inductor"  # backend of every torch.compile call of evaluation (aot_eager: no codegen)
    gpu_dtypes: Switch = "auto"  # the GPU dtype policy (bf16 tables and linears, bf16 autocast): auto (CUDA), 1 (any device), 0
    ranks: int = 8  # ranks the run's rank-local adaptation is reproduced with (fewer processes: virtual ranks)
    # The field's per-document TTT (doc_ttt.py; ../shared/FIELD_TTT.md): records' defaults, env names in brackets
    doc_batch: int = 64  # documents per batch, one adapter set each (TTT_BATCH_SIZE)
    doc_chunk: int = 48  # targets per chunk: scored, then one adapter step on it (TTT_CHUNK_SIZE)
    doc_lora_rank: int = 96  # adapter rank (TTT_LORA_RANK)
    doc_lora_lr: float = 1e-4  # AdamW lr (TTT_LORA_LR)
    doc_lora_beta1: float = 0.0  # AdamW beta1 (TTT_BETA1)
    doc_lora_beta2: float = 0.999  # AdamW beta2 (TTT_BETA2)
    doc_lora_wd: float = 0.5  # AdamW decoupled weight decay (TTT_WEIGHT_DECAY)
    phased_prefix_docs: int = 2000  # documents scored before the last base update (PHASED_TTT_PREFIX_DOCS)
    phased_num_phases: int = 3  # base updates over the prefix (PHASED_TTT_NUM_PHASES, the 2026-04-14 record)
    global_lr: float = 1e-3  # phased global SGD: peak lr of the cosine over chunks (GLOBAL_TTT_LR)
    global_momentum: float = 0.9  # GLOBAL_TTT_MOMENTUM
    global_epochs: int = 1  # GLOBAL_TTT_EPOCHS
    global_chunk_tokens: int = 32_768  # one step per chunk of scored documents, the last skipped (GLOBAL_TTT_CHUNK_TOKENS)
    global_grad_clip: float = 1.0  # GLOBAL_TTT_GRAD_CLIP

    def __post_init__(self):
        _finite(self)
        _non_negative(self, "tail_lr", "krause_lr", "krause_decay")
        if self.krause_decay > 1:
            raise ValueError(f"krause_decay={self.krause_decay} must lie in [0, 1]: the share of the way back "
                             f"to the trained weights per step")
        if not 0 <= self.ttt_momentum < 1:
            raise ValueError(f"ttt_momentum={self.ttt_momentum} must lie in [0, 1)")
        if self.tail_subset not in ("all", "mlp", "attn", "blocks", "tables", "no_tables", "lora"):
            raise ValueError(f"tail_subset={self.tail_subset!r} must be one of all, mlp, attn, blocks, tables, "
                             f"no_tables, lora")
        _positive(self, "krause_batches", "lora_rank")
        _positive(self, "doc_batch", "doc_chunk", "doc_lora_rank", "phased_num_phases", "global_chunk_tokens")
        _non_negative(self, "doc_lora_lr", "doc_lora_wd", "phased_prefix_docs", "global_lr", "global_epochs",
                      "global_grad_clip")
        for f in ("doc_lora_beta1", "doc_lora_beta2", "global_momentum"):
            if not 0 <= getattr(self, f) < 1:
                raise ValueError(f"{f}={getattr(self, f)} must lie in [0, 1)")
        _positive(self, "eval_seq_len", "eval_stride", "eval_batch_seqs", "adapt_every", "ttt_batch_seqs",
                  "ttt_chunk_tokens")
        _non_negative(self, "dyneval_lr", "ttt_lr", "ttt_epochs", "ttt_freeze_blocks", "ttt_grad_clip",
                      "max_val_tokens")
        if self.eval_stride > self.eval_seq_len:
            raise ValueError(f"eval_stride={self.eval_stride} exceeds eval_seq_len={self.eval_seq_len}")
        _check_backend(self, "compile_backend")


    def view(self, cls: type, **extra):
        """The settings view `cls` (below) of these knobs; `extra`: its fields that are not knobs."""
        if cls not in SETTINGS_VIEWS:
            raise TypeError(f"{getattr(cls, '__name__', cls)} is not a settings view of EvalConfig: one of "
                            f"{', '.join(v.__name__ for v in SETTINGS_VIEWS)}")
        return cls(**{short: getattr(self, knob) for short, knob in cls.KNOBS.items()}, **extra)

    scoring = property(lambda self: self.view(Scoring))
    ttt = property(lambda self: self.view(TTTSettings))
    dynamic = property(lambda self: self.view(DynamicSettings))
    score_first = property(lambda self: self.view(ScoreFirstSettings, ttt=self.ttt))
    tail = property(lambda self: self.view(TailSettings))
    krause = property(lambda self: self.view(KrauseSettings))
    doc_lora = property(lambda self: self.view(DocLoRASettings))
    global_sgd = property(lambda self: self.view(GlobalSGDSettings))


# ----------------------------------------------------------------------------------------------
# Typed settings per algorithm. `EvalConfig` stays one flat section (its field names are the run's and
# the command line's); each scoring or adaptation function takes only the group it uses, as a view whose
# fields are `EvalConfig` knobs under the algorithm's short names. A knob is defined once, in `EvalConfig`
# (type, default, comment, validation); a view only renames it. Tests and benchmarks build views directly.

def settings_view(name: str, purpose: str, knobs: dict[str, str], **extra: tuple) -> type:
    """A frozen, keyword-only dataclass `name` whose field `short` is the `EvalConfig` knob `knobs[short]`, of
    that knob's type; `extra` maps a field that is no knob to (type,) or (type, default)."""
    types = {f.name: f.type for f in dataclasses.fields(EvalConfig)}
    unknown = sorted(set(knobs.values()) - set(types))
    if unknown:
        raise ValueError(f"settings view {name}: {unknown} are not EvalConfig fields")
    spec = [(short, types[knob]) for short, knob in knobs.items()]
    spec += [(n, t[0]) if len(t) == 1 else (n, t[0], field(default=t[1])) for n, t in extra.items()]
    cls = dataclasses.make_dataclass(name, spec, frozen=True, kw_only=True)
    cls.__module__ = __name__
    cls.__doc__ = f"{purpose}\n\nKnobs: " + ", ".join(f"{s} = eval.{k}" for s, k in knobs.items())
    cls.KNOBS = knobs
    return cls


Scoring = settings_view("Scoring", "The windows: length L, stride S, windows per forward batch.",
                        {"seq_len": "eval_seq_len", "stride": "eval_stride", "batch_seqs": "eval_batch_seqs"})
TTTSettings = settings_view(
    "TTTSettings", "SGD with momentum over sequences, gradients averaged over ranks (the run's TTT).",
    {"lr": "ttt_lr", "momentum": "ttt_momentum", "epochs": "ttt_epochs", "batch_seqs": "ttt_batch_seqs",
     "freeze_blocks": "ttt_freeze_blocks", "grad_clip": "ttt_grad_clip"})
DynamicSettings = settings_view("DynamicSettings", "The run's dynamic eval.",
                                {"lr": "dyneval_lr", "adapt_every": "adapt_every"})
ScoreFirstSettings = settings_view("ScoreFirstSettings", "Score-first TTT: chunks, and the TTT on each scored chunk "
                                   "(its freeze_blocks unused).", {"chunk_tokens": "ttt_chunk_tokens"},
                                   ttt=("TTTSettings",))
TailSettings = settings_view("TailSettings", "dynamic_tail: plain SGD after every batch.",
                             {"lr": "tail_lr", "subset": "tail_subset", "lora_rank": "lora_rank"})
KrauseSettings = settings_view("KrauseSettings", "dynamic_krause: Krause's RMS-normalised update with decay.",
                               {"lr": "krause_lr", "decay": "krause_decay", "batches": "krause_batches",
                                "subset": "tail_subset"})
DocLoRASettings = settings_view(
    "DocLoRASettings", "The field's per-document LoRA TTT (doc_ttt.py); `seed` seeds each document's adapters.",
    {"doc_batch": "doc_batch", "chunk": "doc_chunk", "rank": "doc_lora_rank", "lr": "doc_lora_lr",
     "beta1": "doc_lora_beta1", "beta2": "doc_lora_beta2", "weight_decay": "doc_lora_wd"}, seed=("int", 0))
GlobalSGDSettings = settings_view(
    "GlobalSGDSettings", "The field's phased global SGD (doc_ttt.py).",
    {"prefix_docs": "phased_prefix_docs", "num_phases": "phased_num_phases", "lr": "global_lr",
     "momentum": "global_momentum", "epochs": "global_epochs", "chunk_tokens": "global_chunk_tokens",
     "grad_clip": "global_grad_clip"})
SETTINGS_VIEWS = (Scoring, TTTSettings, DynamicSettings, ScoreFirstSettings, TailSettings, KrauseSettings,
                  DocLoRASettings, GlobalSGDSettings)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    nproc: int = 8  # processes a notebook launches (GPUs the profile is meant for; capped by the GPUs visible)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        if not isinstance(d, dict):
            raise ValueError(f"a config must be a JSON object of sections, not {type(d).__name__}")
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = set(d) - set(sections)
        if unknown:
            raise ValueError(f"unknown config section(s) {sorted(unknown)}: expected {sorted(sections)}")
        kw = {}
        for name, sub in d.items():
            if name == "nproc":
                kw[name] = int(sub)
            else:
                kw[name] = _build(_SECTION_TYPES[name], sub, name)
        return cls(**kw)

    def with_overrides(self, overrides: typing.Iterable[str] | dict) -> "RunConfig":
        """Apply `field=value` overrides; `field` is `section.name` or a name unique across sections."""
        items = overrides.items() if isinstance(overrides, dict) else (_split(o) for o in overrides)
        d = self.to_dict()
        for key, value in items:
            section, name = _locate(key)
            target = _SECTION_TYPES[section]
            ftype = {f.name: f.type for f in dataclasses.fields(target)}[name]
            d[section][name] = _coerce(value, ftype, f"{section}.{name}")
        return RunConfig.from_dict(d)


_SECTION_TYPES = {"model": ModelConfig, "optim": OptimConfig, "train": TrainConfig, "eval": EvalConfig}


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ValueError(f"override {item!r} is not of the form field=value")
    k, v = item.split("=", 1)
    return k.strip(), v.strip()


def _locate(key: str) -> tuple[str, str]:
    if "." in key:
        section, name = key.split(".", 1)
        if section in _SECTION_TYPES and name in {f.name for f in dataclasses.fields(_SECTION_TYPES[section])}:
            return section, name
        raise ValueError(f"unknown config field {key!r}")
    hits = [s for s, t in _SECTION_TYPES.items() if key in {f.name for f in dataclasses.fields(t)}]
    if not hits:
        raise ValueError(f"unknown config field {key!r}: see `python -m dyneval config --profile smoke`")
    if len(hits) > 1:
        raise ValueError(f"config field {key!r} is ambiguous: write one of {[h + '.' + key for h in hits]}")
    return hits[0], key


def _coerce(value, ftype, name: str):
    if ftype == "Switch":
        return _switch(value, name)
    ftype = {"int": int, "float": float, "bool": bool, "str": str}.get(ftype, ftype)
    if isinstance(value, str):
        text = value.strip()
        try:
            if ftype is bool:
                low = text.lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if ftype is int:
                return int(float(text)) if float(text).is_integer() else int(text)
            if ftype is float:
                return float(text)
            return text
        except ValueError:
            raise ValueError(f"config field {name}: {value!r} is not a valid {ftype.__name__}") from None
    if ftype is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if ftype is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, ftype) or (ftype is int and isinstance(value, bool)):
        raise ValueError(f"config field {name}: {value!r} is not a valid {ftype.__name__}")
    return value


def _switch(value, name: str) -> str:
    """A compile setting: `auto`, `1` or `0`. A JSON true/false (configs and meta.json written before the
    setting had three values) keeps its old meaning: true compiled on CUDA only (`auto`), false never."""
    if isinstance(value, bool):
        return "auto" if value else "0"
    text = str(value).strip().lower()
    if text not in ("auto", "1", "0"):
        raise ValueError(f"config field {name}: {value!r} is not a compile setting: use auto (CUDA only), "
                         f"1 (any device) or 0")
    return text


def switch_on(setting: str, device) -> bool:
    """A `Switch` on `device`: `auto` on CUDA only (the profiles' default, as the run), `1` on any device, `0` never."""
    if setting not in ("auto", "1", "0"):
        raise ValueError(f"setting {setting!r}: expected auto, 1 or 0")
    return setting == "1" or (setting == "auto" and getattr(device, "type", str(device).split(":")[0]) == "cuda")


# torch.compile backends a stage may use: inductor is the run's; aot_eager runs dynamo and AOT autograd
# without code generation (the CPU tests' choice); eager captures graphs and runs them as they are.
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")


def _check_backend(obj, *names):
    for n in names:
        if getattr(obj, n) not in COMPILE_BACKENDS:
            raise ValueError(f"{n}={getattr(obj, n)!r}: choose inductor (the run's), aot_eager or eager")


def _build(cls, d: dict, section: str):
    if isinstance(d, cls):
        return d
    if not isinstance(d, dict):
        raise ValueError(f"config section [{section}] must be an object of fields, not {json.dumps(d)}")
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    unknown = set(d) - set(fields)
    if unknown:
        raise ValueError(f"unknown field(s) in [{section}]: {sorted(unknown)}")
    return cls(**{k: _coerce(v, fields[k], f"{section}.{k}") for k, v in d.items()})


def _finite(obj):
    """Every float field is a finite number (NaN passes every comparison-free check downstream)."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{f.name}={v!r} must be a finite number")


def _positive(obj, *names):
    for n in names:
        v = getattr(obj, n)
        if not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
            raise ValueError(f"{n}={v!r} must be a positive number")


def _non_negative(obj, *names):
    for n in names:
        v = getattr(obj, n)
        if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v)):
            raise ValueError(f"{n}={v!r} must be >= 0")
