"""Export: the run's mixed int6/int8/passthrough quantization and the zstd-22 artifact.

Owns `quantize_state_dict` / `dequantize_state_dict` (SPEC.md, 'Export'), the artifact
`final_model.int6.ptz` = zstd level 22 of `torch.save({"w": tensors, "m": meta})`, byte-compatible
with the run's, read back with `weights_only=True` (no arbitrary pickle code), and the size report
against the challenge's 16,000,000-byte cap (compressed model + code).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from . import files
from .config import is_control

PASSTHROUGH_MAX_NUMEL = 65_536  # tensors this small are stored as fp16 as is (the run's threshold)
INT8_CLIP_QUANTILE = 0.9999984  # the run's 99.99984th-percentile clip for int8 rows
ZSTD_LEVEL = 22
SIZE_CAP_BYTES = 16_000_000  # the challenge's cap on code + compressed model
INT6_CATEGORIES = ("mlp", "attn")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAX_RAW_BYTES = 1 << 34  # decompression cap when no model is given to size it
RAW_MARGIN_BYTES = 1 << 20  # + 4 kB per tensor: torch.save's zip headers, names and pickle, generously
META_TYPES = ("passthrough", "passthrough_ctrl", "int6", "int8")


def category(name: str) -> str:
    if "tok_emb" in name or "lm_head" in name:
        return "embed"
    if ".mlp." in name:
        return "mlp"
    if ".attn." in name or ".proj." in name:
        return "attn"
    return "other"


def quantize_int6(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row int6 in int8 storage: s = fp16(max(max|row|/31, 1/31)), q = clamp(round(w/s), -32, 31).

    q uses the fp16-rounded scale so that dequantization (q*s) reproduces exactly what was rounded.
    1-D tensors get one scale, fp16(max|w|/31), or 1 when the tensor is all zeros.
    """
    t32 = t.float()
    if t32.ndim == 2:
        scale = (t32.abs().amax(dim=1) / 31.0).clamp_min(1.0 / 31.0).to(torch.float16)
        q = torch.clamp(torch.round(t32 / scale.float()[:, None]), -32, 31).to(torch.int8)
        return q.contiguous(), scale.contiguous()
    amax = t32.abs().max().item()
    scale = torch.tensor(amax / 31.0 if amax > 0 else 1.0, dtype=torch.float16)
    q = torch.clamp(torch.round(t32 / scale.float()), -32, 31).to(torch.int8)
    return q.contiguous(), scale


def quantize_int8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row int8 with a 99.99984th-percentile clip; s = max(c/127, 1/127) fp32, stored fp16."""
    t32 = t.float()
    if t32.ndim == 2:
        clip = torch.quantile(t32.abs(), INT8_CLIP_QUANTILE, dim=1)
        clipped = torch.maximum(torch.minimum(t32, clip[:, None]), -clip[:, None])
        scale = (clip / 127.0).clamp_min(1.0 / 127.0)
        q = torch.clamp(torch.round(clipped / scale[:, None]), -127, 127).to(torch.int8)
        return q.contiguous(), scale.to(torch.float16).contiguous()
    clip = float(torch.quantile(t32.abs().flatten(), INT8_CLIP_QUANTILE).item()) if t32.numel() else 0.0
    scale = torch.tensor(clip / 127.0 if clip > 0 else 1.0, dtype=torch.float32)
    q = torch.clamp(torch.round(torch.clip(t32, -clip, clip) / scale), -127, 127).to(torch.int8)
    return q.contiguous(), scale


def quantize_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """The run's treatment per tensor, in this order (SPEC.md): passthrough, passthrough_ctrl, int6, int8."""
    tensors, meta = {}, {}
    for name, tensor in state.items():
        t = tensor.detach().cpu().contiguous()
        if not t.is_floating_point() or t.numel() <= PASSTHROUGH_MAX_NUMEL:
            tensors[name] = t.to(torch.float16) if t.is_floating_point() else t
            meta[name] = "passthrough"  # quirk: small control tensors become fp16 here
        elif is_control(name):
            tensors[name] = t.float()
            meta[name] = "passthrough_ctrl"
        else:
            kind = "int6" if category(name) in INT6_CATEGORIES else "int8"
            q, s = (quantize_int6 if kind == "int6" else quantize_int8)(t)
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
        if isinstance(m, dict):
            q, s = tensors[name + ".q"], tensors[name + ".scale"]
            if s.ndim > 0:
                w = q.float() * s.float().view(q.shape[0], *([1] * (q.ndim - 1)))
            else:
                w = q.float() * float(s.item())
        else:
            w = tensors[name]
        if tuple(w.shape) != tuple(ref.shape):
            raise ValueError(f"{source}: {name} has shape {tuple(w.shape)}, the model config wants {tuple(ref.shape)}")
        out[name] = w.to(ref.dtype).contiguous()
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


def artifact_bytes(state: dict[str, torch.Tensor], source: str = "artifact") -> bytes:
    """The artifact of `state`; refuses non-finite weights, and finite ones the fp16 storage turns into inf."""
    import zstandard

    tensors, meta = quantize_state_dict(state)
    bad = [k for k, t in {**state, **tensors}.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ValueError(f"{source}: not written: non-finite weights in {len(bad)} tensor(s) ({', '.join(bad[:3])}; "
                         f"fp16 storage overflows beyond 65504): training diverged; lower the learning rates")
    buf = io.BytesIO()
    torch.save({"w": tensors, "m": meta}, buf)
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(buf.getvalue())


def write_artifact(path: str | Path, state: dict[str, torch.Tensor]) -> int:
    """Quantize, serialize and compress `state` to `path` atomically; return the compressed size.

    Non-finite weights are refused: their artifact would score NaN.
    """
    blob = artifact_bytes(state, str(path))
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


def load_artifact(path: str | Path, template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    tensors, meta = read_artifact(path, raw_size_bound(template))
    return dequantize_state_dict(tensors, meta, template, source=str(path))


def code_bytes() -> int:
    """Bytes of the code that a submission of this library would ship: the package's .py files."""
    here = Path(__file__).parent
    return sum(p.stat().st_size for p in here.glob("*.py"))


def size_report(artifact_path: str | Path) -> dict:
    model = Path(artifact_path).stat().st_size
    code = code_bytes()
    return {"artifact": str(artifact_path), "model_bytes": model, "code_bytes": code,
            "total_bytes": model + code, "cap_bytes": SIZE_CAP_BYTES,
            "under_cap": model + code <= SIZE_CAP_BYTES, "headroom_bytes": SIZE_CAP_BYTES - model - code}
