"""The evaluate stage: every scoring and adaptation variant on one checkpoint's int6 artifact.

Owns `python -m dyneval evaluate` (torchrun-capable): the variant registry with each variant's
legality under the challenge's rule, the run's quirks as switches, fresh weights from the artifact
for every variant, and the outputs -- `results.json` (rewritten atomically after each variant, so
nothing computed is lost), one per-window stream `<variant>.npz` each, and `ablation.md` / `.csv`.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import adapt, data, distributed as dist_utils, files, quant
from .adapt import Quirks
from .config import RunConfig
from .evaluate import EvalResult, compiled, evaluate_nonoverlap, evaluate_sliding, require_finite
from .model import GPT, apply_dtype_policy, load_weights, set_qat

LEGAL = "scores every token before any update uses it"
NOT_LEGAL_TTT = "trains on validation tokens before scoring them (pre-eval TTT)"


@dataclass(frozen=True)
class Variant:
    name: str
    legal: bool
    reason: str
    faithful: bool  # one of the run's own passes: its quirks apply unless switched off
    description: str


VARIANTS = {v.name: v for v in [
    Variant("nonoverlap", True, "no adaptation", False, "non-overlapping L-token sequences (the run's eval_val)"),
    Variant("sliding", True, "no adaptation", False, "sliding windows, stride S (the baseline of every delta)"),
    Variant("pre_eval_ttt", False, NOT_LEGAL_TTT, True, "the run's pre-eval TTT, then sliding windows"),
    Variant("pre_eval_ttt+nonoverlap", False, NOT_LEGAL_TTT, True,
            "the run's pre-eval TTT, then non-overlapping eval (the run's first published number)"),
    Variant("pre_eval_ttt+dynamic", False, NOT_LEGAL_TTT, True,
            "the run's headline: pre-eval TTT, then its dynamic eval"),
    Variant("dynamic", True, LEGAL, True, "the run's dynamic eval (one window per 4 batches, train mode)"),
    Variant("score_first_ttt", True, LEGAL, False, "the merged records' score-first TTT (chunks, 3 epochs)"),
    Variant("score_first_ttt+dynamic", True, LEGAL, False,
            "score-first TTT with the run's dynamic-eval step while scoring (the run's quirks off, as for TTT)"),
    Variant("dynamic_tail", True, LEGAL, False,
            "improved: a step after every batch on all its scored targets, fp32 master weights, no fake quant"),
    Variant("dynamic_tail_mlp", True, LEGAL, False, "dynamic_tail restricted to the MLP weights"),
    Variant("dynamic_krause", True, LEGAL, False,
            "dynamic_tail with Krause's RMS-normalised update and decay toward the trained weights"),
]}
DEFAULT_ORDER = list(VARIANTS)


def parse_variants(text: str) -> list[str]:
    names = DEFAULT_ORDER if text.strip() == "all" else [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise ValueError(f"--variants {text!r} names no variant: choose from {', '.join(DEFAULT_ORDER)} or `all`")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}: choose from {', '.join(DEFAULT_ORDER)} or `all`")
    return names


class Checkpoint:
    """The dequantized artifact, ready to give every variant a fresh model."""

    def __init__(self, cfg: RunConfig, artifact: Path, device: torch.device):
        self.cfg, self.artifact, self.device = cfg, artifact, device
        torch.manual_seed(0)
        template = GPT(cfg.model).state_dict()
        self.state = quant.load_artifact(artifact, template)

    def model(self, bf16_tables: bool = True) -> GPT:
        m = GPT(self.cfg.model).to(self.device)
        if self.device.type == "cuda":
            apply_dtype_policy(m, bf16_tables=bf16_tables)
        return load_weights(m, self.state, str(self.artifact))


def train_batches(cfg: RunConfig, data_path: str, num: int, device) -> list:
    """The first `num` batches of the training stream (for gradient statistics; training data only)."""
    loader = data.DistributedTokenLoader(data.train_pattern(data_path), 0, 1, device)
    seqs = max(1, cfg.eval.eval_batch_seqs // 2)
    return [loader.next_batch(seqs * cfg.eval.eval_seq_len, cfg.eval.eval_seq_len) for _ in range(num)]


def run_variant(name: str, ck: Checkpoint, tokens: torch.Tensor, lut, quirks: Quirks, virtual_ranks: int | None,
                data_path: str) -> tuple[EvalResult, dict]:
    """Score one variant from fresh weights; return the result and the settings it ran with."""
    e = ck.cfg.eval
    v = VARIANTS[name]
    cuda = ck.device.type == "cuda"
    comp = cuda and ck.cfg.eval.compile
    run_quirks = quirks if v.faithful else Quirks(qat_on=False, bf16_tables=False, rank_local=True)
    vr = virtual_ranks if run_quirks.rank_local else 1
    L, S, B = e.eval_seq_len, e.eval_stride, e.eval_batch_seqs
    sliding = dict(seq_len=L, stride=S, batch_seqs=B)
    ttt = dict(seq_len=L, lr=e.ttt_lr, momentum=e.ttt_momentum, epochs=e.ttt_epochs, batch_seqs=e.ttt_batch_seqs,
               freeze_blocks=e.ttt_freeze_blocks, grad_clip=e.ttt_grad_clip)
    dyn = dict(lr=e.dyneval_lr, adapt_every=e.adapt_every)
    settings = {"quirks": asdict(run_quirks), "virtual_ranks": vr, "seq_len": L, "stride": S, "batch_seqs": B}
    m = ck.model(bf16_tables=run_quirks.bf16_tables)
    rank, world = dist_utils.rank(), dist_utils.world_size()
    set_qat(run_quirks.qat_on)
    try:
        if name == "nonoverlap":
            res = evaluate_nonoverlap(m, tokens, lut, L, B, rank, world, autocast=cuda, forward=compiled(m, comp))
        elif name == "sliding":
            res = evaluate_sliding(m, tokens, lut, L, S, B, rank, world, autocast=cuda, forward=compiled(m, comp))
        elif name.startswith("pre_eval_ttt"):
            settings["ttt"] = ttt
            ttt_s = adapt.pre_eval_ttt(m, tokens, virtual_ranks=vr, autocast=cuda, **ttt)
            if name == "pre_eval_ttt+dynamic":
                settings["dynamic"] = dyn
                res = adapt.adapt_dynamic(m, tokens, lut, virtual_ranks=vr, autocast=cuda, compile=comp, name=name,
                                          **sliding, **dyn)
            elif name == "pre_eval_ttt+nonoverlap":
                res = evaluate_nonoverlap(m, tokens, lut, L, B, rank, world, autocast=cuda)
            else:
                res = evaluate_sliding(m, tokens, lut, L, S, B, rank, world, autocast=cuda)
            res.name, res.seconds = name, res.seconds + ttt_s
        elif name == "dynamic":
            settings["dynamic"] = dyn
            res = adapt.adapt_dynamic(m, tokens, lut, virtual_ranks=vr, autocast=cuda, compile=comp, **sliding, **dyn)
        elif name.startswith("score_first_ttt"):
            sf = dict(chunk_tokens=e.ttt_chunk_tokens, lr=e.ttt_lr, momentum=e.ttt_momentum, epochs=e.ttt_epochs,
                      train_batch_seqs=e.ttt_batch_seqs, grad_clip=e.ttt_grad_clip)
            settings["score_first_ttt"] = sf
            hook = None
            if name.endswith("+dynamic"):
                settings["dynamic"] = dyn
                hook = adapt.dynamic_hook(e.dyneval_lr, e.adapt_every, cuda, name)
            res = adapt.score_first_ttt(m, tokens, lut, virtual_ranks=vr, autocast=cuda, then_dynamic=hook, name=name,
                                        **sliding, **sf)
        elif name.startswith("dynamic_tail") or name == "dynamic_krause":
            subset = "mlp" if name == "dynamic_tail_mlp" else e.tail_subset
            kw = dict(lr=e.tail_lr, subset=subset, lora_rank=e.lora_rank)
            stats_s = 0.0
            if name == "dynamic_krause":
                t0 = time.perf_counter()
                stats = adapt.gradient_rms(ck.model(bf16_tables=False),
                                           train_batches(ck.cfg, data_path, e.krause_batches, ck.device), cuda)
                stats_s = time.perf_counter() - t0
                kw = dict(lr=e.krause_lr, subset=subset, rms_stats=stats, decay=e.krause_decay)
            settings["tail"] = {k: val for k, val in kw.items() if k != "rms_stats"}
            res = adapt.adapt_dynamic_tail(m, tokens, lut, virtual_ranks=vr, autocast=cuda, compile=comp, name=name,
                                           **sliding, **kw)
            res.seconds += stats_s
        else:  # pragma: no cover - parse_variants guards this
            raise ValueError(name)
    finally:
        set_qat(False)
    return res, settings


def ablation_rows(results: dict) -> list[dict]:
    base = results.get("sliding", {}).get("bpb")
    sf = results.get("score_first_ttt", {}).get("bpb")
    rows = []
    for name, r in results.items():
        if "bpb" not in r:
            rows.append({"variant": name, "bpb": float("nan"), "delta_vs_sliding": float("nan"),
                         "delta_vs_score_first_ttt": float("nan"), "seconds": float("nan"), "legal": r.get("legal"),
                         "error": r.get("error", "")})
            continue
        rows.append({"variant": name, "bpb": r["bpb"],
                     "delta_vs_sliding": r["bpb"] - base if base is not None else float("nan"),
                     "delta_vs_score_first_ttt": r["bpb"] - sf if sf is not None else float("nan"),
                     "seconds": r["seconds"], "legal": r["legal"], "error": ""})
    return rows


def write_tables(results: dict, out: Path) -> None:
    rows = ablation_rows(results)
    lines = ["| variant | bpb | Δ vs sliding | Δ vs score_first_ttt | seconds | legal |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['variant']} | failed: {r['error'][:80]} | | | | {r['legal']} |")
            continue
        lines.append(f"| {r['variant']} | {r['bpb']:.4f} | {r['delta_vs_sliding']:+.4f} | "
                     f"{r['delta_vs_score_first_ttt']:+.4f} | {r['seconds']:.1f} | "
                     f"{'yes' if r['legal'] else 'NO (trains on unscored tokens)'} |")
    files.write_text(out / "ablation.md", "\n".join(lines) + "\n")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["variant"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    files.write_text(out / "ablation.csv", buf.getvalue())


def evaluate_checkpoint(cfg: RunConfig, artifact: Path, out: Path, variants: list[str], quirks: Quirks = Quirks(),
                        virtual_ranks: int | None = None, device: str | None = None, log=print) -> dict:
    """Run `variants` on the artifact; write results.json, streams and tables into `out`; return results."""
    ctx = dist_utils.setup(device)
    tc, e = cfg.train, cfg.eval
    if e.eval_stride > e.eval_seq_len:
        raise ValueError("eval_stride exceeds eval_seq_len")
    data.check_tokenizer(tc.tokenizer_path, tc.data_path, Path(artifact).parent / "meta.json")  # issue 13
    lut = data.build_byte_lut(tc.tokenizer_path, cfg.model.vocab_size).to(ctx.device)
    tokens = data.load_validation_tokens(data.val_pattern(tc.data_path), e.eval_seq_len, e.max_val_tokens,
                                         cfg.model.vocab_size)
    tokens = tokens.to(ctx.device)
    ck = Checkpoint(cfg, Path(artifact), ctx.device)
    out = Path(out)
    if ctx.is_main:
        files.output_folder(out)
    if ctx.is_main:  # document boundaries (target index of each BOS), for per-document figures
        bos = torch.nonzero(tokens[1:] == data.BOS_ID).flatten().cpu().numpy()
        np.save(out / "doc_starts.npy", np.unique(np.concatenate([[0], bos])).astype(np.int64))
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for name in variants:
        v = VARIANTS[name]
        try:
            res, settings = run_variant(name, ck, tokens, lut, quirks, virtual_ranks, tc.data_path)
            require_finite(str(artifact), res)  # issue 13: no NaN score with exit 0
        except adapt.DivergedError as err:
            results[name] = {"legal": v.legal, "legal_reason": v.reason, "error": str(err)}
            if ctx.is_main:
                files.write_json(results_path, results)
                write_tables(results, out)
            raise
        entry = {**res.summary(), "legal": v.legal, "legal_reason": v.reason, "description": v.description,
                 "settings": settings, "artifact": str(artifact), "world_size": ctx.world_size,
                 "device": str(ctx.device)}
        results[name] = entry
        if ctx.is_main:
            res.save_stream(out / f"{name}.npz")
            files.write_json(results_path, results)
            write_tables(results, out)
        if ctx.is_main:
            log(f"{name:<26} bpb {res.bpb:.5f} loss {res.loss:.5f} ({res.seconds:.1f} s) "
                f"{'legal' if v.legal else 'NOT LEGAL'}")
    return results


def parse_quirks(text: str) -> Quirks:
    """`qat_on=0,bf16_tables=1,rank_local=0` -> Quirks (unnamed switches stay faithful)."""
    fields = {f for f in Quirks.__dataclass_fields__}
    kw = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, _, val = item.partition("=")
        if key not in fields or val not in ("0", "1", "true", "false"):
            raise ValueError(f"--quirks {item!r}: expected NAME=0|1 with NAME one of {sorted(fields)}")
        kw[key] = val in ("1", "true")
    return Quirks(**kw)


def resolve(args) -> tuple[RunConfig, Path]:
    from .config import from_env, load

    if args.run_dir:
        meta_path = Path(args.run_dir) / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: no meta.json: is {args.run_dir} a finished training run?")
        cfg = RunConfig.from_dict(json.loads(meta_path.read_text())["config"])
        artifact = Path(args.run_dir) / "final_model.int6.ptz"
    else:
        cfg = load(args.profile, [], args.config)
        artifact = Path(args.artifact)
    cfg = cfg.with_overrides(from_env(__import__("os").environ)).with_overrides(list(args.set or []))
    over = {}
    if args.data:
        over["train.data_path"] = args.data
    if args.tokenizer:
        over["train.tokenizer_path"] = args.tokenizer
    return cfg.with_overrides(over), artifact


def main(args) -> int:
    cfg, artifact = resolve(args)
    variants = parse_variants(args.variants)
    quirks = parse_quirks(args.quirks or "")
    try:
        evaluate_checkpoint(cfg, artifact, Path(args.out), variants, quirks, args.virtual_ranks, args.device)
    finally:
        dist_utils.teardown()
    return 0
