"""The environment shim: the record script's environment variables (`NUM_LAYERS`, `DYNEVAL_LR`, ...), the one
place they are read, as `section.field` overrides (`config.resolve` applies them only when asked: `--env`)."""

from __future__ import annotations

import typing


ENV_NAMES = {
    "DATA_PATH": "train.data_path", "TOKENIZER_PATH": "train.tokenizer_path", "SEED": "train.seed",
    "ITERATIONS": "train.iterations", "TRAIN_BATCH_TOKENS": "train.train_batch_tokens",
    "TRAIN_SEQ_LEN": "train.train_seq_len", "MAX_WALLCLOCK_SECONDS": "train.max_wallclock_seconds",
    "WARMDOWN_ITERS": "train.warmdown_iters", "WARMUP_STEPS": "train.warmup_steps",
    "EMA_DECAY": "train.ema_decay", "QAT_THRESHOLD": "train.late_qat_threshold",
    "VAL_LOSS_EVERY": "train.val_loss_every", "VAL_BATCH_SIZE": "train.val_batch_size_tokens",
    "TRAIN_LOG_EVERY": "train.train_log_every",
    "VOCAB_SIZE": "model.vocab_size", "NUM_LAYERS": "model.num_layers", "MODEL_DIM": "model.model_dim",
    "NUM_HEADS": "model.num_heads", "NUM_KV_HEADS": "model.num_kv_heads", "MLP_MULT": "model.mlp_mult",
    "TIE_EMBEDDINGS": "model.tie_embeddings", "TIED_EMBED_INIT_STD": "model.tied_embed_init_std",
    "LOGIT_SOFTCAP": "model.logit_softcap", "ROPE_BASE": "model.rope_base", "QK_GAIN_INIT": "model.qk_gain_init",
    "BIGRAM_VOCAB_SIZE": "model.bigram_vocab_size", "BIGRAM_DIM": "model.bigram_dim",
    "XSA_LAST_N": "model.xsa_last_n", "ROPE_DIMS": "model.rope_dims", "LN_SCALE": "model.ln_scale",
    "TIED_EMBED_LR": "optim.tied_embed_lr", "EMBED_LR": "optim.embed_lr", "HEAD_LR": "optim.head_lr",
    "MATRIX_LR": "optim.matrix_lr", "SCALAR_LR": "optim.scalar_lr", "MUON_MOMENTUM": "optim.muon_momentum",
    "MUON_MOMENTUM_WARMUP_START": "optim.muon_momentum_warmup_start",
    "MUON_MOMENTUM_WARMUP_STEPS": "optim.muon_momentum_warmup_steps",
    "MUON_BACKEND_STEPS": "optim.muon_backend_steps", "MUON_WD": "optim.muon_wd", "ADAM_WD": "optim.adam_wd",
    "BETA1": "optim.beta1", "BETA2": "optim.beta2", "ADAM_EPS": "optim.adam_eps",
    "GRAD_CLIP_NORM": "optim.grad_clip_norm",
    "EVAL_SEQ_LEN": "eval.eval_seq_len", "EVAL_STRIDE": "eval.eval_stride", "EVAL_BATCH_SEQS": "eval.eval_batch_seqs",
    "DYNEVAL_LR": "eval.dyneval_lr", "DYNEVAL_ADAPT_EVERY": "eval.adapt_every",
    "TTT_LR": "eval.ttt_lr", "TTT_EPOCHS": "eval.ttt_epochs", "TTT_MOMENTUM": "eval.ttt_momentum",
    "TTT_BATCH_SEQS": "eval.ttt_batch_seqs", "TTT_FREEZE_BLOCKS": "eval.ttt_freeze_blocks",
}


# The run's on/off switches, as the overrides that reproduce what switching them does.
ENV_SWITCHES = {
    # late QAT off: the flag is never set
    "LATE_QAT": lambda on: {} if on else {"train.late_qat_threshold": "0"},
    # QAT from the first step: the flag is set before compilation, so in the run it did train
    "QAT_ENABLED": lambda on: {"train.late_qat_threshold": "2", "train.qat_trains": "1"} if on else {},
    "EMA_ENABLED": lambda on: {} if on else {"train.ema_decay": "0"},
    # no TTT: zero epochs leave the weights as loaded, so the run's passes after it score them as they are
    "TTT_ENABLED": lambda on: {} if on else {"eval.ttt_epochs": "0"},
    # no dynamic eval: lr 0 makes it the sliding eval exactly (a tested invariant)
    "DYNEVAL_ENABLED": lambda on: {} if on else {"eval.dyneval_lr": "0"},
}
NOT_REPRODUCED = {"SWA_ENABLED": "the run's SWA (off in its published runs) is not part of this bundle"}


def from_env(environ: typing.Mapping[str, str], origins: dict | None = None) -> dict[str, str]:
    """The run's environment variables that are set, as `section.field -> value` overrides.

    Value names map one to one (ENV_NAMES); the on/off switches map to the overrides that do what
    they did (ENV_SWITCHES); a switch this bundle does not reproduce is refused when on. `origins`,
    when given, receives the variable each override came from.
    """
    out, origins = {}, origins if origins is not None else {}
    for name, target in ENV_NAMES.items():
        if name in environ:
            out[target], origins[target] = environ[name], name
    for name, overrides in ENV_SWITCHES.items():
        if name in environ:
            for target, value in overrides(_env_flag(name, environ[name])).items():
                out[target], origins[target] = value, name
    for name, why in NOT_REPRODUCED.items():
        if name in environ and _env_flag(name, environ[name]):
            raise ValueError(f"{name}={environ[name]}: {why}; unset it or set it to 0")
    return out


def _env_flag(name: str, value: str) -> bool:
    low = value.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{name}={value!r}: expected 0 or 1")
