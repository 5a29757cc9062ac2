"""The quantizer: the run's mixed int6/int8/passthrough quantization and the zstd-22 artifact format.

Pure functions of tensors and bytes (the export stage that writes a run folder's artifact is export.py). Owns `quantize_state_dict` / `dequantize_state_dict` (docs/NUMERICS.md, 'The artifact'), the artifact
`final_model.int6.ptz` = zstd level 22 of `torch.save({"w": tensors, "m": meta})`, byte-compatible
with the run's, read back with `weights_only=True` (no arbitrary pickle code), and the size report
against the challenge's 16,000,000-byte cap (compressed model + code).
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from . import files
from .model import is_control

PASSTHROUGH_MAX_NUMEL = 65_536  # tensors this small are stored as fp16 as is (the run's threshold)
INT8_CLIP_QUANTILE = 0.9999984  # the run's 99.99984th-percentile clip for int8 rows
ZSTD_LEVEL = 22
SIZE_CAP_BYTES = 16_000_000  # the challenge's cap on code + compressed model
INT6_CATEGORIES = ("mlp", "attn")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAX_RAW_BYTES = 1 << 34  # decompression cap when no model is given to size it
RAW_MARGIN_BYTES = 1 << 20  # + 4 kB per tensor: torch.save's zip headers, names and pickle, generously
META_TYPES = ("passthrough", "passthrough_ctrl") + tuple(f"int{b}" for b in range(2, 9))  # int6 is the run's; other grids: export --bits


def category(name: str) -> str:
    """The run's tensor categories by name: it decides int6 (mlp, attn) vs int8 (embed, other)."""
    # Tables and heads carry per-token detail that a 6-bit grid would blur; block matrices tolerate it.
    if "tok_emb" in name or "lm_head" in name:
        return "embed"
    if ".mlp." in name:
        return "mlp"
    if ".attn." in name or ".proj." in name:
        return "attn"
    return "other"


@dataclass(frozen=True, kw_only=True)
class QuantSettings:
    """The exporter's knobs; the defaults are the run's (and reproduce its artifact byte for byte)."""

    bits: int = 6  # bits of the per-row grid for attention and MLP matrices (int6: q in [-32, 31])
    clip_quantile: float = INT8_CLIP_QUANTILE  # per-row clip of the int8 tensors (embeddings and the rest)
    passthrough_max_numel: int = PASSTHROUGH_MAX_NUMEL  # tensors this small are stored as fp16 as is

    def __post_init__(self):
        if not 2 <= self.bits <= 8:
            raise ValueError(f"bits={self.bits} must lie in [2, 8] (the grid is stored in int8)")
        if not 0 < self.clip_quantile <= 1:
            raise ValueError(f"clip_quantile={self.clip_quantile} must lie in (0, 1]")
        if self.passthrough_max_numel < 0:
            raise ValueError(f"passthrough_max_numel={self.passthrough_max_numel} must be >= 0")


def quantize_absmax(t: torch.Tensor, bits: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row int-N (N = `bits`, the run's 6) in int8 storage, scaled by the row's max |w|; for int6
    s = fp16(max(max|row|/31, 1/31)), q = clamp(round(w/s), -32, 31).

    q uses the fp16-rounded scale so that dequantization (q*s) reproduces exactly what was rounded.
    1-D tensors get one scale, fp16(max|w|/31), or 1 when the tensor is all zeros. The floor of
    1/31 on the scale is the run's: rows smaller than 1 in magnitude are not stretched to the grid.
    `bits` generalises 31/-32 to 2^(bits-1)-1 / -2^(bits-1) (the run: 6).
    """
    top, bottom = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
    t32 = t.float()
    if t32.ndim == 2:
        scale = (t32.abs().amax(dim=1) / float(top)).clamp_min(1.0 / top).to(torch.float16)
        q = torch.clamp(torch.round(t32 / scale.float()[:, None]), bottom, top).to(torch.int8)
        return q.contiguous(), scale.contiguous()
    amax = t32.abs().max().item()
    scale = torch.tensor(amax / float(top) if amax > 0 else 1.0, dtype=torch.float16)
    q = torch.clamp(torch.round(t32 / scale.float()), bottom, top).to(torch.int8)
    return q.contiguous(), scale


def quantize_int8(t: torch.Tensor, clip_quantile: float = INT8_CLIP_QUANTILE) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row int8 with a 99.99984th-percentile clip; s = max(c/127, 1/127) fp32, stored fp16.

    The clip drops the few outliers of each row (the token table's rare pieces) so that the other
    values keep their resolution; the run's percentile clips about 1 value in 600,000.
    """
    t32 = t.float()
    if t32.ndim == 2:
        clip = torch.quantile(t32.abs(), clip_quantile, dim=1)
        clipped = torch.maximum(torch.minimum(t32, clip[:, None]), -clip[:, None])
        scale = (clip / 127.0).clamp_min(1.0 / 127.0)
        q = torch.clamp(torch.round(clipped / scale[:, None]), -127, 127).to(torch.int8)
        return q.contiguous(), scale.to(torch.float16).contiguous()
    clip = float(torch.quantile(t32.abs().flatten(), clip_quantile).item()) if t32.numel() else 0.0
    scale = torch.tensor(clip / 127.0 if clip > 0 else 1.0, dtype=torch.float32)
    q = torch.clamp(torch.round(torch.clip(t32, -clip, clip) / scale), -127, 127).to(torch.int8)
    return q.contiguous(), scale


def quantize_state_dict(state: dict[str, torch.Tensor], settings: QuantSettings = QuantSettings()) -> tuple[dict, dict]:
    """The run's treatment per tensor, in this order (docs/NUMERICS.md): passthrough, passthrough_ctrl, int6, int8."""
    tensors, meta = {}, {}
    for name, tensor in state.items():
        t = tensor.detach().cpu().contiguous()
        # small tensors cost little as fp16 and many of them are gains that rounding would hurt
        if not t.is_floating_point() or t.numel() <= settings.passthrough_max_numel:
            tensors[name] = t.to(torch.float16) if t.is_floating_point() else t
            meta[name] = "passthrough"  # quirk: small control tensors become fp16 here
        elif is_control(name):
            tensors[name] = t.float()
            meta[name] = "passthrough_ctrl"
        else:
            if category(name) in INT6_CATEGORIES:
                q, s = quantize_absmax(t, settings.bits)
                # one interned string: pickle then stores it once and refers back to it, as the run's
                # literal "int6" is, so the artifact stays byte-identical to the run's
                kind = sys.intern(f"int{settings.bits}")
            else:
                q, s = quantize_int8(t, settings.clip_quantile)
                kind = "int8"
            tensors[name + ".q"], tensors[name + ".scale"] = q, s
            meta[name] = {"type": kind}
    return tensors, meta


def dequantize_state_dict(tensors: dict, meta: dict, template: dict[str, torch.Tensor],
                          source: str = "artifact") -> dict[str, torch.Tensor]:
    """Undo `quantize_state_dict`, casting each tensor to the dtype of `template` (the model's state dict)."""
    check_tensors(tensors, meta, source)
    missing = [k for k in template if k not in meta]
    extra = [k for k in meta if k not in template]
    if missing or extra:
        raise ValueError(f"{source}: artifact does not match the model config "
                         f"(missing {missing[:4]}, unexpected {extra[:4]})")
    out = {}
    for name, ref in template.items():
        m = meta[name]
        if isinstance(m, dict):  # quantized: q * s, per row when s is a vector
            q, s = tensors[name + ".q"], tensors[name + ".scale"]
            if s.ndim > 0:
                w = q.float() * s.float().view(q.shape[0], *([1] * (q.ndim - 1)))
            else:
                w = q.float() * float(s.item())
        else:
            w = tensors[name]
        if tuple(w.shape) != tuple(ref.shape):
            raise ValueError(f"{source}: {name} has shape {tuple(w.shape)}, the model config wants {tuple(ref.shape)}")
        out[name] = w.to(ref.dtype).contiguous()  # back to the model's dtype (bf16 tables on GPU)
        if out[name].is_floating_point() and not torch.isfinite(out[name]).all():
            raise ValueError(f"{source}: {name} holds non-finite values after dequantization (NaN weights or an "
                             f"inf scale): a corrupt or diverged artifact")
    return out


def check_tensors(tensors: dict, meta: dict, source: str) -> None:
    """Refuse metadata that does not describe its tensors (one line naming the file and the entry)."""
    for name, m in meta.items():
        kind = m.get("type") if isinstance(m, dict) else m
        if kind not in META_TYPES:
            raise ValueError(f"{source}: metadata of {name} has unknown type {kind!r} (expected one of {META_TYPES})")
        if kind.startswith("passthrough"):
            if not isinstance(tensors.get(name), torch.Tensor):
                raise ValueError(f"{source}: metadata says {name} is stored as is, but the artifact has no such tensor")
            continue
        q, s = tensors.get(name + ".q"), tensors.get(name + ".scale")
        if not (isinstance(q, torch.Tensor) and isinstance(s, torch.Tensor)):
            raise ValueError(f"{source}: metadata says {name} is {kind}, but {name}.q / {name}.scale are missing")
        if q.dtype != torch.int8 or not s.is_floating_point() or q.ndim == 0 \
                or s.numel() != (q.shape[0] if s.ndim > 0 else 1) or (s.ndim > 0 and q.ndim < 2):
            raise ValueError(f"{source}: {name}.q {tuple(q.shape)} {q.dtype} and {name}.scale {tuple(s.shape)} "
                             f"{s.dtype} do not form a {kind} tensor (one scale per row)")


def raw_size_bound(template: dict[str, torch.Tensor]) -> int:
    """The most bytes a sane artifact of this model decompresses to: every tensor at 4 bytes a value, twice.

    The artifact stores 1 (int6/int8), 2 (fp16) or 4 (fp32 control) bytes a value; a zstd stream
    that claims far more is a decompression bomb (a 64 kB file can expand to gigabytes).
    """
    values = sum(t.numel() for t in template.values())
    return 2 * 4 * values + RAW_MARGIN_BYTES + 4096 * len(template)


def artifact_bytes(state: dict[str, torch.Tensor], settings: QuantSettings = QuantSettings(),
                   source: str = "artifact") -> bytes:
    """The artifact of `state`; refuses non-finite weights, and finite ones the fp16 storage turns into inf."""
    import zstandard

    tensors, meta = quantize_state_dict(state, settings)
    bad = [k for k, t in {**state, **tensors}.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ValueError(f"{source}: not written: non-finite weights in {len(bad)} tensor(s) ({', '.join(bad[:3])}; "
                         f"fp16 storage overflows beyond 65504): training diverged; lower the learning rates")
    buf = io.BytesIO()
    torch.save({"w": tensors, "m": meta}, buf)  # the run's container, so its loader reads ours and back
    # level 22: the slowest and smallest; int6 values stored in int8 leave 2 bits per byte for zstd
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(buf.getvalue())


def write_artifact(path: str | Path, state: dict[str, torch.Tensor], settings: QuantSettings = QuantSettings()) -> int:
    """Quantize, serialize and compress `state` to `path` atomically; return the compressed size.

    Non-finite weights are refused: their artifact would score NaN.
    """
    blob = artifact_bytes(state, settings, str(path))
    files.write_bytes(path, blob)
    return len(blob)


def read_artifact(path: str | Path, max_raw_bytes: int = MAX_RAW_BYTES) -> tuple[dict, dict]:
    """Decompress (at most `max_raw_bytes`) and unpickle safely; return (tensors, meta).

    Errors name the file and the problem. The cap holds whether or not the frame declares its size:
    the stream is read, never a size it claims allocated.
    """
    import zstandard

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: artifact not found")
    blob = path.read_bytes()
    if blob[:4] != ZSTD_MAGIC:
        raise ValueError(f"{path}: not a zstd stream (the artifact is zstd-22 of torch.save output)")
    bomb = ValueError(f"{path}: would decompress to more than {max_raw_bytes:,} bytes, far beyond what this model's "
                      f"artifact can hold: not an artifact of this model (a decompression bomb?)")
    try:
        # A frame that declares its size is decompressed into that size whatever max_output_size says.
        if zstandard.frame_content_size(blob) > max_raw_bytes:
            raise bomb
        raw = zstandard.ZstdDecompressor().decompress(blob, max_output_size=max_raw_bytes)
    except zstandard.ZstdError as e:
        try:  # no declared size: is it more than the cap, or broken?
            over = len(zstandard.ZstdDecompressor().stream_reader(blob).read(max_raw_bytes + 1)) > max_raw_bytes
        except zstandard.ZstdError:
            over = False
        if over:
            raise bomb from None
        raise ValueError(f"{path}: corrupt zstd stream ({e})") from None
    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a torch.save archive of tensors ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:120]})") from None
    if not (isinstance(obj, dict) and set(obj) == {"w", "m"} and isinstance(obj["w"], dict)
            and isinstance(obj["m"], dict)):
        raise ValueError(f"{path}: not the run's artifact format (expected a dict with keys 'w' and 'm')")
    return obj["w"], obj["m"]


def grid_bits(meta: dict) -> int | None:
    """The bit width of an artifact's attention/MLP grid, from its per-tensor meta (`int6`, `int4`, ...);
    None when no tensor is on that grid (a model small enough to be all passthrough)."""
    kinds = {m["type"] for m in meta.values() if isinstance(m, dict) and m.get("type", "int8") != "int8"}
    return int(min(kinds)[3:]) if kinds else None


def load_artifact(path: str | Path, template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    tensors, meta = read_artifact(path, raw_size_bound(template))
    return dequantize_state_dict(tensors, meta, template, source=str(path))


RUN_CODE_BYTES = 77_946  # the run's single train_gpt.py, as its logs print it (code bytes of every seed)
CODE_DEFINITION = ("code bytes = every dyneval/*.py file (the package a submission of this library would "
                   f"ship; notebooks, tests and scripts excluded); the run counted its single script, "
                   f"{RUN_CODE_BYTES:,} bytes")


def code_files() -> list[Path]:
    """The files whose bytes count as code in the size report: the package's .py files, sorted."""
    return sorted(Path(__file__).parent.glob("*.py"))


def code_bytes() -> int:
    """Bytes of the code that a submission of this library would ship: the package's .py files."""
    return sum(p.stat().st_size for p in code_files())


def size_report(artifact_path: str | Path) -> dict:
    model = Path(artifact_path).stat().st_size
    code = code_bytes()
    return {"artifact": str(artifact_path), "model_bytes": model, "code_bytes": code,
            "total_bytes": model + code, "cap_bytes": SIZE_CAP_BYTES,
            "under_cap": model + code <= SIZE_CAP_BYTES, "headroom_bytes": SIZE_CAP_BYTES - model - code,
            "code_definition": CODE_DEFINITION, "code_files": [f"dyneval/{p.name}" for p in code_files()]}
