"""Parity: recompute every entry of a reference fixture's `expected.json` from its inputs.

Owns `python -m dyneval parity [DIR]` for any directory of the reference fixtures' schema
(`settings.json`, `tokenizer.model`, `fineweb_{val,train}_*.bin`, `trained.pt`,
`final_model.int6.ptz`, `expected.json`). Without DIR it checks `COMPACT_FIXTURE`, the compact
reference fixture that ships inside the package (made by the run's own script, like the larger
`seed397` of the shared reference). Everything runs in float32 on the CPU, as the fixtures were made;
nothing here knows any fixture's values. Tolerances are the fixture README's. The numerics are
described in docs/NUMERICS.md.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from . import adapt, data, evaluate, files, quant
from .config import DynamicSettings, ModelConfig, OptimConfig, Scoring, TTTSettings, _build
from .model import GPT, load_weights, set_numerics
from .optim import build_optimizers

COMPACT_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "compact397"  # package data (pyproject.toml)

TOL_EXACT_EVAL = 1e-5  # forward, per-token NLL, eval_val, sliding, roundtrip_*
TOL_ADAPT = 2e-4  # dynamic eval, TTT, qat_flag_on_*, 3-step losses
TOL_PARAM_SUM_REL = 1e-3  # params_after_3_steps: |Δ sum| <= 1e-3 * abs_sum
TOL_PARAM_VALUE = 2e-3  # params_after_3_steps: sampled values


class Fixture:
    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        for name in ("settings.json", "expected.json", "trained.pt", "tokenizer.model", "final_model.int6.ptz"):
            if not (self.dir / name).is_file():
                raise FileNotFoundError(f"{self.dir / name}: missing fixture file")
        self.settings = json.loads((self.dir / "settings.json").read_text())
        self.expected = json.loads((self.dir / "expected.json").read_text())
        self.model_cfg = _build(ModelConfig, self.settings["model"], "model")
        self.L = int(self.settings["seq_len"])
        self.state = torch.load(self.dir / "trained.pt", map_location="cpu", weights_only=True)
        data.check_tokenizer(self.dir / "tokenizer.model", self.dir)
        self.lut = data.build_byte_lut(self.dir / "tokenizer.model", self.model_cfg.vocab_size)
        self.val = data.load_validation_tokens(str(self.dir / "fineweb_val_*.bin"), self.L)

    def model(self, state=None) -> GPT:
        torch.manual_seed(0)
        m = GPT(self.model_cfg)
        return load_weights(m, self.state if state is None else state, str(self.dir / "trained.pt"))


ALL_KEYS = ("val_tokens_used", "byte_count_val", "forward_loss_first_window", "first_window_nll", "eval_val",
            "eval_val_sliding", "eval_val_sliding_dynamic", "pre_eval_ttt_then_eval_val", "pre_eval_ttt_then_sliding",
            "pre_eval_ttt_then_dynamic", "qat_flag_on_dynamic", "qat_flag_on_pre_eval_ttt_then_eval_val",
            "quant_meta", "quant_sha256", "roundtrip_eval_val", "roundtrip_sliding",
            "train_losses_3_steps_from_trained", "params_after_3_steps")
MIN_EXPECTED_ENTRIES = 2  # 0 entries passed vacuously; 1 (e.g. a token count) tests no numerics
PAIR_TOL = {"eval_val": TOL_EXACT_EVAL, "eval_val_sliding": TOL_EXACT_EVAL, "roundtrip_eval_val": TOL_EXACT_EVAL,
            "roundtrip_sliding": TOL_EXACT_EVAL}


def compute(directory: str | Path, keys=ALL_KEYS, sample_index: dict | None = None) -> dict:
    """Every entry of the fixture schema, computed from the fixture's inputs (float32, CPU).

    `sample_index`: per-tensor flat indices for `params_after_3_steps` (the expected file's; else
    8 evenly spaced indices).
    """
    torch.set_num_threads(min(torch.get_num_threads(), 2))  # the fixtures were made with 2 threads
    fx = Fixture(directory)
    want = set(keys).__contains__
    out = {**_stream_entries(fx, want), **_scoring_entries(fx, want), **_artifact_entries(fx, want)}
    if want("train_losses_3_steps_from_trained") or want("params_after_3_steps"):
        losses, params = three_steps(fx)
        out["train_losses_3_steps_from_trained"] = losses
        out["params_after_3_steps"] = {}
        for name, p in params.items():
            flat = p.double().flatten()
            idx = (sample_index or {}).get(name) or np.linspace(0, flat.numel() - 1, min(8, flat.numel())).astype(int).tolist()
            out["params_after_3_steps"][name] = {"sum": float(flat.sum()), "abs_sum": float(flat.abs().sum()),
                                                 "index": list(idx), "value": flat[idx].tolist()}
    return {k: out[k] for k in keys if k in out}


def _scorers(fx: "Fixture") -> tuple[evaluate.Scorer, evaluate.Scorer]:
    """The fixture's stream as the run scored it: sliding windows (stride, batch_seqs), and the non-overlapping
    sequences of its eval_val (batch from val_batch_size_tokens)."""
    s, L = fx.settings, fx.L
    bseq = int(s["batch_seqs"])
    val_bseq = max(1, int(s.get("val_batch_size_tokens", L * bseq)) // L)
    return (evaluate.Scorer(fx.val, fx.lut, Scoring(seq_len=L, stride=int(s["stride"]), batch_seqs=bseq)),
            evaluate.Scorer(fx.val, fx.lut, Scoring(seq_len=L, stride=L, batch_seqs=val_bseq)))


def _stream_entries(fx: "Fixture", want) -> dict:
    """The token and byte counts, and the first window's forward."""
    out, L = {}, fx.L
    if want("val_tokens_used"):
        out["val_tokens_used"] = int(fx.val.numel())
    if want("byte_count_val"):
        out["byte_count_val"] = data.count_bytes(fx.val, fx.lut)
    if want("forward_loss_first_window") or want("first_window_nll"):
        m = fx.model().eval()
        with torch.no_grad():
            x, y = fx.val[:L][None], fx.val[1: L + 1][None]
            out["forward_loss_first_window"] = m(x, y).item()
            out["first_window_nll"] = m.token_nll(x, y)[0].tolist()
    return out


def _scoring_entries(fx: "Fixture", want) -> dict:
    """(loss, bpb) of the run's scoring passes on the trained weights: non-overlapping, sliding, dynamic eval,
    pre-eval TTT before each, and the QAT flag left on."""
    s, t = fx.settings, fx.settings["ttt"]
    pair = lambda r: [r.loss, r.bpb]  # noqa: E731
    dyn = DynamicSettings(lr=float(s["dyneval_lr"]), adapt_every=int(s["adapt_every"]))
    ttt_settings = TTTSettings(lr=float(t["lr"]), momentum=float(t["momentum"]), epochs=int(t["epochs"]),
                               batch_seqs=int(t["batch_seqs"]), freeze_blocks=int(t["freeze_blocks"]), grad_clip=1.0)
    windows, sequences = _scorers(fx)
    nonoverlap = lambda m: pair(evaluate.evaluate_nonoverlap(m, sequences))  # noqa: E731
    sliding = lambda m: pair(evaluate.evaluate_sliding(m, windows))  # noqa: E731
    dynamic = lambda m: pair(adapt.adapt_dynamic(m, windows, dyn))  # noqa: E731

    def ttt(m):
        adapt.pre_eval_ttt(m, windows, ttt_settings)
        return m

    def qat_on(m):  # the run's late-QAT flag, still on after training
        return set_numerics(m, qat=True)

    out = {}
    if want("eval_val"):
        out["eval_val"] = nonoverlap(fx.model())
    if want("eval_val_sliding"):
        out["eval_val_sliding"] = sliding(fx.model())
    if want("eval_val_sliding_dynamic"):
        out["eval_val_sliding_dynamic"] = dynamic(fx.model())
    if want("pre_eval_ttt_then_eval_val") or want("pre_eval_ttt_then_sliding"):
        m = ttt(fx.model())
        out["pre_eval_ttt_then_eval_val"] = nonoverlap(m)
        out["pre_eval_ttt_then_sliding"] = sliding(m)
    if want("pre_eval_ttt_then_dynamic"):
        out["pre_eval_ttt_then_dynamic"] = dynamic(ttt(fx.model()))
    if want("qat_flag_on_dynamic"):
        out["qat_flag_on_dynamic"] = dynamic(qat_on(fx.model()))
    if want("qat_flag_on_pre_eval_ttt_then_eval_val"):
        out["qat_flag_on_pre_eval_ttt_then_eval_val"] = nonoverlap(ttt(qat_on(fx.model())))
    return out


def _artifact_entries(fx: "Fixture", want) -> dict:
    """The quantizer's output and the scores of the fixture's own artifact, dequantized."""
    out = {}
    if want("quant_meta") or want("quant_sha256"):
        tensors, meta = quant.quantize_state_dict(fx.state)
        out["quant_meta"] = {k: (v if isinstance(v, str) else v["type"]) for k, v in meta.items()}
        out["quant_sha256"] = {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()
                               for k, v in tensors.items()}
    if want("roundtrip_eval_val") or want("roundtrip_sliding"):
        windows, sequences = _scorers(fx)
        deq = quant.load_artifact(fx.dir / "final_model.int6.ptz", fx.model().state_dict())
        out["roundtrip_eval_val"] = [(r := evaluate.evaluate_nonoverlap(fx.model(deq), sequences)).loss, r.bpb]
        out["roundtrip_sliding"] = [(r := evaluate.evaluate_sliding(fx.model(deq), windows)).loss, r.bpb]
    return out


class Report:
    def __init__(self):
        self.rows: list[tuple[str, str, str, str, bool]] = []

    def close(self, key: str, got, want, tol: float) -> None:
        got_a, want_a = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
        if got_a.shape != want_a.shape:
            self.rows.append((key, f"shape {got_a.shape}", f"shape {want_a.shape}", f"{tol:g}", False))
            return
        if got_a.ndim:  # a list: report the largest deviation
            dev = float(np.max(np.abs(got_a - want_a))) if got_a.size else 0.0
            self.rows.append((key + " (max |Δ|)", _fmt(dev), "0", f"{tol:g}", dev <= tol))
            return
        self.rows.append((key, _fmt(float(got_a)), _fmt(float(want_a)), f"{tol:g}", bool(abs(got_a - want_a) <= tol)))

    def exact(self, key: str, got, want) -> None:
        self.rows.append((key, _fmt(got), _fmt(want), "exact", got == want))

    @property
    def ok(self) -> bool:
        return all(r[4] for r in self.rows)

    def print(self) -> None:
        w = max(len(r[0]) for r in self.rows)
        print(f"{'entry':<{w}}  {'computed':>22}  {'expected':>22}  {'tolerance':>9}  ok")
        for key, got, want, tol, ok in self.rows:
            print(f"{key:<{w}}  {got:>22}  {want:>22}  {tol:>9}  {'yes' if ok else 'NO'}")
        bad = sum(not r[4] for r in self.rows)
        print(f"{len(self.rows) - bad} passed, {bad} failed")


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{v:.10g}"
    s = str(v)
    return s if len(s) <= 22 else s[:19] + "..."


def run(directory: str | Path, only: set[str] | None = None) -> Report:
    """Compute every entry `expected.json` holds and compare it within the fixture README's tolerances."""
    expected = json.loads((Path(directory) / "expected.json").read_text())
    if not isinstance(expected, dict) or len(expected) < MIN_EXPECTED_ENTRIES:
        raise ValueError(f"{Path(directory) / 'expected.json'}: {len(expected)} entries check next to nothing: a "
                         f"fixture needs at least {MIN_EXPECTED_ENTRIES} (the schema has {len(ALL_KEYS)}); "
                         f"`parity --write` makes them all")
    keys = [k for k in ALL_KEYS if k in expected and (only is None or k in only)]
    unknown = sorted(set(expected) - set(ALL_KEYS))
    if unknown:
        raise ValueError(f"{Path(directory) / 'expected.json'}: unknown entries {unknown}")
    index = {n: v["index"] for n, v in expected.get("params_after_3_steps", {}).items()}
    got = compute(directory, keys, index)
    rep = Report()
    for k in keys:
        e, g = expected[k], got[k]
        if k in ("val_tokens_used", "byte_count_val"):
            rep.exact(k, type(e)(g), e)
        elif k == "quant_meta":
            rep.exact(k, "match" if g == e else "differs", "match")
        elif k == "quant_sha256":
            bad = [n for n in set(e) | set(g) if e.get(n) != g.get(n)]
            rep.exact(k, f"{len(bad)} differ", "0 differ")
        elif k == "params_after_3_steps":
            check_params(rep, g, e)
        elif isinstance(e, list) and len(e) == 2 and k not in ("first_window_nll", "train_losses_3_steps_from_trained"):
            tol = PAIR_TOL.get(k, TOL_ADAPT)
            rep.close(k + " loss", g[0], e[0], tol)
            rep.close(k + " bpb", g[1], e[1], tol)
        else:
            rep.close(k, g, e, TOL_EXACT_EVAL if k in ("forward_loss_first_window", "first_window_nll") else TOL_ADAPT)
    return rep


def three_steps(fx: Fixture) -> tuple[list[float], dict]:
    """Three optimizer steps from trained.pt with the run's split, fixed lr and momentum, no schedule."""
    s = fx.settings
    opt_cfg = _build(OptimConfig, {**s["opt"], "muon_momentum_warmup_steps": 0,
                                   "muon_momentum_warmup_start": s["opt"]["muon_momentum"]}, "opt")
    B = int(s["train_batch_seqs"])
    stream = np.concatenate([np.asarray(data.read_shard(f)) for f in data.shard_files(str(fx.dir / "fineweb_train_*.bin"))])
    stream = torch.from_numpy(stream.astype(np.int64))
    T = stream.numel()
    m = fx.model().train()
    opts = build_optimizers(m, opt_cfg, fx.model_cfg.tie_embeddings)
    losses = []
    for i in range(3):
        start = (i * B * fx.L) % (T - B * fx.L - 1)
        chunk = stream[start: start + B * fx.L + 1]
        x, y = chunk[:-1].view(B, fx.L), chunk[1:].view(B, fx.L)
        opts.zero_grad()
        loss = m(x, y)
        losses.append(loss.item())
        loss.backward()
        if opt_cfg.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(m.parameters(), opt_cfg.grad_clip_norm)
        opts.step()
    return losses, {k: v.detach() for k, v in m.state_dict().items()}


def check_params(rep: Report, got: dict, want: dict) -> None:
    """Per tensor: |Δ sum| <= 1e-3 * abs_sum, and the sampled values within 2e-3."""
    worst_sum, worst_val, bad = 0.0, 0.0, []
    for name, w in want.items():
        g = got.get(name)
        if g is None:
            bad.append(name)
            continue
        dsum = abs(g["sum"] - w["sum"]) / max(w["abs_sum"], 1e-30)
        dval = float(np.max(np.abs(np.asarray(g["value"]) - np.asarray(w["value"])))) if w["value"] else 0.0
        worst_sum, worst_val = max(worst_sum, dsum), max(worst_val, dval)
        if dsum > TOL_PARAM_SUM_REL or dval > TOL_PARAM_VALUE:
            bad.append(name)
    extra = sorted(set(got) - set(want))
    rep.rows.append(("params_after_3_steps sums (max |Δ|/abs_sum)", _fmt(worst_sum), "0", f"{TOL_PARAM_SUM_REL:g}",
                     worst_sum <= TOL_PARAM_SUM_REL))
    rep.rows.append(("params_after_3_steps values (max |Δ|)", _fmt(worst_val), "0", f"{TOL_PARAM_VALUE:g}",
                     worst_val <= TOL_PARAM_VALUE))
    rep.rows.append(("params_after_3_steps tensors", f"{len(bad)} off, {len(extra)} extra", "0 off, 0 extra", "exact",
                     not bad and not extra))


def write_expected(directory: str | Path) -> None:
    """Write `expected.json` for a fixture directory from this library's own numerics (regression fixtures)."""
    files.write_json(Path(directory) / "expected.json", compute(directory), indent=1)
