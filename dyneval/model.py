"""The record GPT: single-device PyTorch, built bottom-up, with the record script's key names.

Owns the forward pass (docs/NUMERICS.md, 'The model'), the init, late-QAT fake quantization and the GPU dtype
policy. No I/O, no optimizer, no distributed code. A checkpoint written by the run's script loads
into `GPT(cfg)` unchanged: `tok_emb`, `bigram.{embed,proj,scale}`, `smear.gate`, `skip_weights`,
`blocks.{i}.{attn_scale,mlp_scale,resid_mix}`, `blocks.{i}.attn.{q_gain,c_q,c_k,c_v,proj}`,
`blocks.{i}.mlp.{fc,proj}`, `lm_head` when untied.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .sections import ModelConfig


def rms(x: Tensor) -> Tensor:
    return F.rms_norm(x, (x.size(-1),))


# Names whose tensors are "control" tensors in the run: kept fp32, trained by the scalar AdamW,
# passed through by the exporter (record script, CONTROL_TENSOR_NAME_PATTERNS).
CONTROL_PATTERNS = ("attn_scale", "attn_scales", "mlp_scale", "mlp_scales", "resid_mix",
                    "resid_mixes", "q_gain", "skip_weight", "skip_weights", "smear")


def is_control(name: str) -> bool:
    """A control tensor of the model (a gain, a mix, a skip weight), by the record script's naming rule."""
    return any(p in name for p in CONTROL_PATTERNS)


def bf16_autocast(like: Tensor, enabled: bool):
    """bf16 autocast on the device of `like` when `enabled` (the GPU dtype policy's matmuls), else a no-op:
    every forward of training, scoring and adaptation runs under it."""
    return torch.autocast(like.device.type, dtype=torch.bfloat16, enabled=enabled)


def fake_quantize_int6(w: Tensor) -> Tensor:
    """Straight-through per-row int6: w + (q(w) - w).detach(), q = clamp(round(w/s), -32, 31)*s.

    s = max(row max|w| / 31, 1/31) in fp32 -- the same grid the exporter uses (quant.py), so that
    late-QAT training sees the weights it will be scored with.
    """
    w32 = w.float()
    scale = (w32.abs().amax(dim=-1, keepdim=True) / 31.0).clamp_min(1.0 / 31.0)
    q = torch.clamp(torch.round(w32 / scale), -32, 31) * scale
    return w + (q.to(w.dtype) - w).detach()


class CastedLinear(nn.Linear):
    """Linear without bias whose fp32 weight is cast to the input dtype at use.

    `qat` is late QAT's switch. In the run it is a class attribute, flipped once for every linear
    layer (attention, MLP, the bigram projection, an untied head) and never switched off -- the quirk
    that makes the run's TTT and dynamic eval adapt through int6 rounding. Here it lives on each
    instance and is set for one model at a time through `numerics(model, qat=...)`, so two models in
    one process (a scored copy and a trained one, eight virtual ranks) never share it by accident.
    Fake quantization applies only in train mode, as in the run.
    """

    def __init__(self, in_features: int, out_features: int, zero_init: bool = False):
        super().__init__(in_features, out_features, bias=False)
        self.zero_init = zero_init
        self.qat = False

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if self.qat and self.training:
            w = fake_quantize_int6(w)
        return F.linear(x, w.to(x.dtype))


class Rotary(nn.Module):
    """Partial RoPE on the first `rope_dims` of each head, with the run's NTK rescaling.

    Quirk: the reference length is fixed (`rope_train_len`, 1024 in the run), so for T > 1024 the
    base becomes base * (T/1024)^(r/(r-2)) even at the length the model was trained on.
    """

    def __init__(self, head_dim: int, rope_dims: int, base: float, train_len: int):
        super().__init__()
        self.dims = rope_dims or head_dim
        self.base = base
        self.train_len = train_len

    def cos_sin(self, seq_len: int, device) -> tuple[Tensor, Tensor]:
        """cos, sin of t * inv_freq, each (1, T, 1, r/2) fp32. Recomputed per call: cheap, and compile-friendly."""
        r, base = self.dims, self.base
        if seq_len > self.train_len:
            base = base * (seq_len / self.train_len) ** (r / (r - 2))
        inv_freq = 1.0 / (base ** (torch.arange(0, r, 2, dtype=torch.float32, device=device) / r))
        freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)  # (T, r/2)
        return freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, T, heads, d)
        cos, sin = self.cos_sin(x.size(1), x.device)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        r, half = self.dims, self.dims // 2
        x1, x2, rest = x[..., :half], x[..., half:r], x[..., r:]
        rotated = torch.cat((x1 * cos + x2 * sin, -x1 * sin + x2 * cos), dim=-1)
        return torch.cat((rotated, rest), dim=-1) if rest.size(-1) else rotated


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, use_xsa: bool):
        super().__init__()
        # SDPA's cuDNN backend takes no GQA: with it on, K/V are expanded to every query head first
        # (same math, other kernels; set per model by `numerics(model, expand_kv=...)`).
        self.expand_kv = False
        D, d = cfg.model_dim, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, d
        self.use_xsa = use_xsa
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), cfg.qk_gain_init))
        self.c_q = CastedLinear(D, cfg.num_heads * d)
        self.c_k = CastedLinear(D, cfg.num_kv_heads * d)
        self.c_v = CastedLinear(D, cfg.num_kv_heads * d)
        self.proj = CastedLinear(cfg.num_heads * d, D, zero_init=True)
        self.rotary = Rotary(d, cfg.rope_dims, cfg.rope_base, cfg.rope_train_len)

    @staticmethod
    def _adapted(linear: nn.Module, x: Tensor, adapter, layer: int, site: str) -> Tensor:
        # each adapter right after its projection: the order of autograd's nodes, hence of the gradient sums
        # into x, is the order of doc_ttt's former forward hooks (bitwise the same adapter steps)
        y = linear(x)
        return y if adapter is None else y + adapter(layer, site, x).to(y.dtype)

    def forward(self, x: Tensor, adapter=None, layer: int = 0) -> Tensor:
        B, T, D = x.shape
        H, K, d = self.num_heads, self.num_kv_heads, self.head_dim
        # (B, T, H*d), (B, T, K*d), (B, T, K*d); an adapter (GPT.logits) adds to each projection from x
        q, k, v = (self._adapted(lin, x, adapter, layer, site) for lin, site in ((self.c_q, "q"), (self.c_k, "k"),
                                                                                  (self.c_v, "v")))
        q = rms(q.view(B, T, H, d))  # (B, T, H, d)
        k = rms(k.view(B, T, K, d))  # (B, T, K, d)
        v = v.view(B, T, K, d)  # (B, T, K, d)
        q, k = self.rotary(q), self.rotary(k)
        q = q * self.q_gain.to(q.dtype)[None, None, :, None]
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, d)
        # GQA: query head h reads kv head h // (H/K); scale 1/sqrt(d)
        if K != H and self.expand_kv:
            y = F.scaled_dot_product_attention(q, k.repeat_interleave(H // K, dim=1), v.repeat_interleave(H // K, dim=1),
                                               is_causal=True)  # (B, H, T, d)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=K != H)  # (B, H, T, d)
        if self.use_xsa:
            # XSA: remove from each head's output its component along its own kv head's normalised value.
            n = F.normalize(v, dim=-1).repeat_interleave(H // K, dim=1)  # (B, H, T, d)
            y = y - (y * n).sum(dim=-1, keepdim=True) * n
        return self.proj(y.transpose(1, 2).reshape(B, T, H * d))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = CastedLinear(cfg.model_dim, cfg.mlp_hidden)
        self.proj = CastedLinear(cfg.mlp_hidden, cfg.model_dim, zero_init=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(torch.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        D = cfg.model_dim
        self.attn_scale = nn.Parameter(torch.ones(D))
        self.mlp_scale = nn.Parameter(torch.ones(D))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(D), torch.zeros(D))))  # (2, D)
        self.attn = CausalSelfAttention(cfg, use_xsa=layer >= cfg.num_layers - cfg.xsa_last_n)
        self.mlp = MLP(cfg)
        self.in_scale = 1.0 / math.sqrt(layer + 1) if cfg.ln_scale else 1.0
        self.layer = layer  # the adapter's key (GPT.logits)

    def forward(self, x: Tensor, x0: Tensor, adapter=None) -> Tensor:
        mix = self.resid_mix.to(x.dtype)
        # every block may pull the first-layer representation x0 back in (learned per channel, init (1, 0))
        x = mix[0] * x + mix[1] * x0
        # pre-norm; ln_scale damps deeper blocks' inputs by 1/sqrt(layer+1), which steadies early training
        if adapter is None:
            x = x + self.attn_scale.to(x.dtype) * self.attn(rms(x) * self.in_scale)
            return x + self.mlp_scale.to(x.dtype) * self.mlp(rms(x) * self.in_scale)
        # the adapters on the attention's and the MLP's outputs, from their normed inputs
        scale = self.attn_scale.to(x.dtype)
        n = rms(x) * self.in_scale
        a = self.attn(n, adapter, self.layer)
        x = x + scale * (a + adapter(self.layer, "o", n).to(a.dtype))
        scale = self.mlp_scale.to(x.dtype)
        n = rms(x) * self.in_scale
        h = self.mlp(n)
        return x + scale * (h + adapter(self.layer, "mlp", n).to(h.dtype))


class BigramHash(nn.Module):
    """A hashed table of (previous, current) token pairs added to the token embedding.

    bucket(t) = ((36313*id_t) XOR (27191*id_{t-1})) mod (Vb-1) on int32; position 0 -> Vb-1.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_buckets = cfg.bigram_vocab_size
        self.embed = nn.Embedding(cfg.bigram_vocab_size, cfg.bigram_dim)
        nn.init.zeros_(self.embed.weight)
        self.proj = CastedLinear(cfg.bigram_dim, cfg.model_dim) if cfg.bigram_dim != cfg.model_dim else None
        if self.proj is not None:
            nn.init.zeros_(self.proj.weight)  # quirk: GPT._init_weights overwrites this when both dims >= 64
        self.scale = nn.Parameter(torch.tensor(0.05))

    def buckets(self, ids: Tensor) -> Tensor:
        t = ids.to(torch.int32)
        h = torch.empty_like(t)
        h[:, 0] = self.num_buckets - 1
        h[:, 1:] = torch.bitwise_xor(36313 * t[:, 1:], 27191 * t[:, :-1]) % (self.num_buckets - 1)
        return h.long()

    def forward(self, ids: Tensor) -> Tensor:
        h = self.embed(self.buckets(ids))  # (B, T, bigram_dim)
        if self.proj is not None:
            h = self.proj(h)  # (B, T, D)
        return self.scale.to(h.dtype) * h


class SmearGate(nn.Module):
    """x <- (1-g)*x + g*x_prev with a learned per-channel gate g = sigmoid(gate)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        g = torch.sigmoid(self.gate.to(x.dtype))
        x_prev = F.pad(x[:, :-1], (0, 0, 1, 0))  # shifted right, zeros at t = 0
        return (1 - g) * x + g * x_prev


class GPT(nn.Module):
    """The record GPT. `init_weights=False` skips the run's init, for a model whose weights are
    loaded next: the orthogonal init takes about 25 ms for the smoke model on a quiet 2-core CPU but
    1.4 s beside a busy process (docs/LOG.md), and evaluation used to pay it twice per variant."""

    def __init__(self, cfg: ModelConfig, init_weights: bool = True):
        super().__init__()
        self.cfg = cfg
        L = cfg.num_layers
        self.num_encoder = L // 2
        self.num_decoder = L - self.num_encoder
        # Registered first so the state dict opens with it, as the run's does.
        self.skip_weights = nn.Parameter(torch.ones(min(self.num_encoder, self.num_decoder), cfg.model_dim))
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        self.bigram = BigramHash(cfg) if cfg.bigram_vocab_size > 0 else None
        self.smear = SmearGate(cfg.model_dim)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(L))
        self.lm_head = None if cfg.tie_embeddings else CastedLinear(cfg.model_dim, cfg.vocab_size, zero_init=True)
        if init_weights:
            self._init_weights()

    def _init_weights(self) -> None:
        if self.cfg.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.cfg.tied_embed_init_std)
        for name, module in self.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            if getattr(module, "zero_init", False):
                nn.init.zeros_(module.weight)
            elif min(module.weight.shape) >= 64:
                nn.init.orthogonal_(module.weight, gain=1.0)
                if ".proj" in name:  # quirk: only the bigram projection gets here
                    with torch.no_grad():
                        module.weight.mul_(1.0 / math.sqrt(2 * self.cfg.num_layers))

    def logits(self, ids: Tensor, adapter=None) -> Tensor:
        """ids (B, T) int64 -> logits (B, T, V), softcapped.

        `adapter` (None: the model): additive low-rank changes, `adapter(layer, site, n)` -> (B, T, out) from
        the site's input n, as the field's per-document TTT places them (doc_ttt.py): sites "q", "k", "v"
        (added to the attention's projections, from its normed input), "o" (added to the attention's output,
        from that same input), "mlp" (added to the MLP's output, from its normed input), and, with layer
        None, "head" (added to the logits before the soft cap, from the final normed hidden). A function's
        argument, not a hook or an attribute, so a compiled forward takes the adapter tensors as inputs.
        """
        x = self.tok_emb(ids)  # (B, T, D)
        if self.bigram is not None:  # cheap bigram statistics, which a 1024-piece vocabulary lacks
            x = x + self.bigram(ids).to(x.dtype)
        x = self.smear(rms(x))  # a learned one-token look-back before any attention
        x0 = x
        skips = []  # U-Net: encoder outputs feed the mirrored decoder blocks, last in first out
        for block in self.blocks[: self.num_encoder]:
            x = block(x, x0, adapter)
            skips.append(x)
        for i, block in enumerate(self.blocks[self.num_encoder:]):
            if skips:
                x = x + self.skip_weights[i].to(x.dtype) * skips.pop()
            x = block(x, x0, adapter)
        x = rms(x)
        if self.lm_head is None:  # tied: the head is the token table, which saves 0.5 M parameters
            z = F.linear(x, self.tok_emb.weight.to(x.dtype))
        else:
            z = self.lm_head(x)
        if adapter is not None:
            z = z + adapter(None, "head", x).to(z.dtype)
        c = self.cfg.logit_softcap  # tanh soft cap bounds logits at +-c and keeps early training stable
        return c * torch.tanh(z / c)

    def forward(self, ids: Tensor, targets: Tensor, reduction: str = "mean", adapter=None) -> Tensor:
        """Mean CE over every target (the run's training loss); reduction="none": per-token NLL (B, T) fp32.
        `adapter`: see `logits`."""
        z = self.logits(ids, adapter)
        # the loss in fp32 whatever the autocast dtype, as the run: a bf16 log-softmax over 1024 pieces is coarse
        nll = F.cross_entropy(z.float().reshape(-1, z.size(-1)), targets.reshape(-1), reduction=reduction)
        return nll.view_as(targets) if reduction == "none" else nll

    def token_nll(self, ids: Tensor, targets: Tensor) -> Tensor:
        """Per-token NLL in nats, (B, T) float32."""
        return self(ids, targets, reduction="none")


def apply_dtype_policy(model: GPT, bf16_tables: bool = True) -> GPT:
    """The run's GPU dtypes: bf16 everywhere, then fp32 linear weights and fp32 vectors/control tensors.

    The token and bigram tables stay bf16 (quirk: SGD steps of lr 1e-3 then vanish in bf16 rounding);
    `bf16_tables=False` keeps them fp32, the fix used by the improved dynamic evals.
    """
    model.bfloat16()
    for module in model.modules():
        if isinstance(module, CastedLinear):
            module.float()
    for name, p in model.named_parameters():
        if p.ndim < 2 or is_control(name):
            p.data = p.data.float()
    if not bf16_tables:
        model.tok_emb.float()
        if model.bigram is not None:
            model.bigram.embed.float()
    return model


def qat_enabled(model: nn.Module) -> bool:
    """Whether late QAT's fake quantization is switched on in `model` (its linear layers agree)."""
    return any(m.qat for m in model.modules() if isinstance(m, CastedLinear))


def set_numerics(model: nn.Module, *, qat: bool | None = None, expand_kv: bool | None = None) -> nn.Module:
    """Set the numerics switches of every layer of `model` (None leaves a switch as it is)."""
    for m in model.modules():
        if qat is not None and isinstance(m, CastedLinear):
            m.qat = bool(qat)
        if expand_kv is not None and isinstance(m, CausalSelfAttention):
            m.expand_kv = bool(expand_kv)
    return model


@contextmanager
def numerics(model: nn.Module, *, qat: bool | None = None, expand_kv: bool | None = None):
    """Scope numerics switches to one model for a block, restoring each layer's own values after it."""
    saved = [(m, m.qat) for m in model.modules() if isinstance(m, CastedLinear)]
    saved_kv = [(m, m.expand_kv) for m in model.modules() if isinstance(m, CausalSelfAttention)]
    set_numerics(model, qat=qat, expand_kv=expand_kv)
    try:
        yield model
    finally:
        for m, v in saved:
            m.qat = v
        for m, v in saved_kv:
            m.expand_kv = v


def configure_backends(cfg, device: torch.device) -> dict:
    """The one place torch's global backend flags are set; every stage calls it and records the result.

    On CUDA: TF32 matmuls (the run sets both flags), and SDPA's backends: the run enables flash
    attention only (it disables cuDNN's: `train.cudnn_attention=0`); `cudnn_attention=1` enables
    cuDNN's, which is faster on Hopper for these shapes and needs K/V expanded (no GQA). On the CPU
    nothing is set and the record says so. K/V expansion itself is per model: `numerics(model,
    expand_kv=record["expand_kv"])`.
    """
    if device.type != "cuda":
        return {"device": "cpu", "expand_kv": False}
    cudnn = bool(cfg.train.cudnn_attention)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.enable_flash_sdp(True)
    torch.backends.cuda.enable_cudnn_sdp(cudnn)
    torch.backends.cuda.enable_mem_efficient_sdp(False)
    torch.backends.cuda.enable_math_sdp(False)
    return {"device": torch.cuda.get_device_name(device), "tf32": True, "sdpa_flash": True, "sdpa_cudnn": cudnn,
            "sdpa_mem_efficient": False, "sdpa_math": False, "expand_kv": cudnn}


def check_state_dict(model: GPT, state: dict, source: str) -> None:
    """Raise one line naming `source` when keys or shapes do not match the model."""
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:4]}{'...' if len(missing) > 4 else ''}")
        if extra:
            parts.append(f"unexpected keys {extra[:4]}{'...' if len(extra) > 4 else ''}")
        raise ValueError(f"{source}: state dict does not match the model config: {'; '.join(parts)}")
    for k, v in want.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(f"{source}: {k} has shape {tuple(state[k].shape)}, the model config wants {tuple(v.shape)}")


def model_from_weights(cfg: ModelConfig, state: dict, device, gpu_dtypes: bool, *, bf16_tables: bool = True,
                       source: str = "weights") -> GPT:
    """A model holding `state` on `device`, under the GPU dtype policy when `gpu_dtypes` (the one way a model
    is built from given weights: the export's round trip, every evaluation variant, training's resume)."""
    m = GPT(cfg, init_weights=False).to(device)  # every weight is loaded next
    if gpu_dtypes:
        apply_dtype_policy(m, bf16_tables=bf16_tables)
    return load_weights(m, state, source)


def load_weights(model: GPT, state: dict, source: str) -> GPT:
    check_state_dict(model, state, source)
    with torch.no_grad():
        for k, p in model.state_dict().items():
            p.copy_(state[k].to(p.dtype))
    return model
