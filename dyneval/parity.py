"""Parity: recompute every entry of a reference fixture's `expected.json` from its inputs.

Owns `python -m dyneval parity DIR` for any directory of the `shared/fixtures/seed397` schema
(`settings.json`, `tokenizer.model`, `fineweb_{val,train}_*.bin`, `trained.pt`,
`final_model.int6.ptz`, `expected.json`). Everything runs in float32 on the CPU, as the fixtures were
made; nothing here knows any fixture's values. Tolerances are the fixture README's.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from . import adapt, data, evaluate, quant
from .config import ModelConfig, OptimConfig, _build
from .model import GPT, load_weights, set_qat
from .optim import build_optimizers

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
        self.lut = data.build_byte_lut(self.dir / "tokenizer.model", self.model_cfg.vocab_size)
        self.val = data.load_validation_tokens(str(self.dir / "fineweb_val_*.bin"), self.L)

    def model(self, state=None) -> GPT:
        torch.manual_seed(0)
        m = GPT(self.model_cfg)
        return load_weights(m, self.state if state is None else state, str(self.dir / "trained.pt"))


class Report:
    def __init__(self):
        self.rows: list[tuple[str, str, str, str, bool]] = []

    def close(self, key: str, got, want, tol: float) -> None:
        ok = bool(np.all(np.abs(np.asarray(got, dtype=np.float64) - np.asarray(want, dtype=np.float64)) <= tol))
        self.rows.append((key, _fmt(got), _fmt(want), f"{tol:g}", ok))

    def exact(self, key: str, got, want) -> None:
        self.rows.append((key, _fmt(got), _fmt(want), "exact", got == want))

    def pair(self, key: str, result: evaluate.EvalResult, want, tol: float) -> None:
        self.close(key + " loss", result.loss, want[0], tol)
        self.close(key + " bpb", result.bpb, want[1], tol)

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
    torch.set_num_threads(min(torch.get_num_threads(), 2))  # the fixtures were made with 2 threads
    fx = Fixture(directory)
    s, e, L = fx.settings, fx.expected, fx.L
    rep = Report()
    want = (lambda k: k in e and (only is None or k in only))
    stride, bseq = int(s["stride"]), int(s["batch_seqs"])
    val_bseq = max(1, int(s.get("val_batch_size_tokens", L * bseq)) // L)
    lr, every = float(s["dyneval_lr"]), int(s["adapt_every"])
    t = s["ttt"]

    def nonoverlap(m):
        return evaluate.evaluate_nonoverlap(m, fx.val, fx.lut, L, val_bseq)

    def sliding(m):
        return evaluate.evaluate_sliding(m, fx.val, fx.lut, L, stride, bseq)

    def dynamic(m):
        return adapt.adapt_dynamic(m, fx.val, fx.lut, seq_len=L, stride=stride, batch_seqs=bseq, lr=lr,
                                   adapt_every=every)

    def ttt(m):
        adapt.pre_eval_ttt(m, fx.val, seq_len=L, lr=float(t["lr"]), momentum=float(t["momentum"]),
                           epochs=int(t["epochs"]), batch_seqs=int(t["batch_seqs"]),
                           freeze_blocks=int(t["freeze_blocks"]))
        return m

    set_qat(False)
    if want("val_tokens_used"):
        rep.exact("val_tokens_used", fx.val.numel(), e["val_tokens_used"])
    if want("byte_count_val"):
        rep.exact("byte_count_val", data.count_bytes(fx.val, fx.lut), float(e["byte_count_val"]))
    if want("forward_loss_first_window") or want("first_window_nll"):
        m = fx.model().eval()
        with torch.no_grad():
            x, y = fx.val[:L][None], fx.val[1: L + 1][None]
            nll = m.token_nll(x, y)[0]
            if want("forward_loss_first_window"):
                rep.close("forward_loss_first_window", m(x, y).item(), e["forward_loss_first_window"], TOL_EXACT_EVAL)
            if want("first_window_nll"):
                rep.close("first_window_nll (max |Δ|)", nll.numpy(), e["first_window_nll"], TOL_EXACT_EVAL)
    if want("eval_val"):
        rep.pair("eval_val", nonoverlap(fx.model()), e["eval_val"], TOL_EXACT_EVAL)
    if want("eval_val_sliding"):
        rep.pair("eval_val_sliding", sliding(fx.model()), e["eval_val_sliding"], TOL_EXACT_EVAL)
    if want("eval_val_sliding_dynamic"):
        rep.pair("eval_val_sliding_dynamic", dynamic(fx.model()), e["eval_val_sliding_dynamic"], TOL_ADAPT)
    if want("pre_eval_ttt_then_eval_val") or want("pre_eval_ttt_then_sliding"):
        m = ttt(fx.model())
        if want("pre_eval_ttt_then_eval_val"):
            rep.pair("pre_eval_ttt_then_eval_val", nonoverlap(m), e["pre_eval_ttt_then_eval_val"], TOL_ADAPT)
        if want("pre_eval_ttt_then_sliding"):
            rep.pair("pre_eval_ttt_then_sliding", sliding(m), e["pre_eval_ttt_then_sliding"], TOL_ADAPT)
    if want("pre_eval_ttt_then_dynamic"):
        rep.pair("pre_eval_ttt_then_dynamic", dynamic(ttt(fx.model())), e["pre_eval_ttt_then_dynamic"], TOL_ADAPT)
    if want("qat_flag_on_dynamic") or want("qat_flag_on_pre_eval_ttt_then_eval_val"):
        with adapt.run_with_qat(True):
            if want("qat_flag_on_dynamic"):
                rep.pair("qat_flag_on_dynamic", dynamic(fx.model()), e["qat_flag_on_dynamic"], TOL_ADAPT)
            if want("qat_flag_on_pre_eval_ttt_then_eval_val"):
                rep.pair("qat_flag_on_pre_eval_ttt_then_eval_val", nonoverlap(ttt(fx.model())),
                         e["qat_flag_on_pre_eval_ttt_then_eval_val"], TOL_ADAPT)
    if want("quant_meta") or want("quant_sha256"):
        tensors, meta = quant.quantize_state_dict(fx.state)
        if want("quant_meta"):
            got = {k: (v if isinstance(v, str) else v["type"]) for k, v in meta.items()}
            rep.exact("quant_meta", "match" if got == e["quant_meta"] else "differs", "match")
        if want("quant_sha256"):
            bad = [k for k, h in e["quant_sha256"].items()
                   if k not in tensors or hashlib.sha256(tensors[k].contiguous().numpy().tobytes()).hexdigest() != h]
            extra = sorted(set(tensors) - set(e["quant_sha256"]))
            rep.exact("quant_sha256", f"{len(bad) + len(extra)} differ", "0 differ")
    if want("roundtrip_eval_val") or want("roundtrip_sliding"):
        template = fx.model().state_dict()
        deq = quant.load_artifact(fx.dir / "final_model.int6.ptz", template)
        if want("roundtrip_eval_val"):
            rep.pair("roundtrip_eval_val", nonoverlap(fx.model(deq)), e["roundtrip_eval_val"], TOL_EXACT_EVAL)
        if want("roundtrip_sliding"):
            rep.pair("roundtrip_sliding", sliding(fx.model(deq)), e["roundtrip_sliding"], TOL_EXACT_EVAL)
    if want("train_losses_3_steps_from_trained") or want("params_after_3_steps"):
        losses, params = three_steps(fx)
        if want("train_losses_3_steps_from_trained"):
            rep.close("train_losses_3_steps (max |Δ|)", losses, e["train_losses_3_steps_from_trained"], TOL_ADAPT)
        if want("params_after_3_steps"):
            check_params(rep, params, e["params_after_3_steps"])
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


def check_params(rep: Report, params: dict, want: dict) -> None:
    worst_sum, worst_val, bad = 0.0, 0.0, []
    for name, w in want.items():
        p = params.get(name)
        if p is None:
            bad.append(name)
            continue
        flat = p.double().flatten()
        dsum = abs(float(flat.sum()) - w["sum"]) / max(w["abs_sum"], 1e-30)
        dval = float(np.max(np.abs(flat[w["index"]].numpy() - np.asarray(w["value"]))))
        worst_sum, worst_val = max(worst_sum, dsum), max(worst_val, dval)
        if dsum > TOL_PARAM_SUM_REL or dval > TOL_PARAM_VALUE:
            bad.append(name)
    rep.rows.append(("params_after_3_steps sums (max |Δ|/abs_sum)", _fmt(worst_sum), "0", f"{TOL_PARAM_SUM_REL:g}",
                     worst_sum <= TOL_PARAM_SUM_REL and not any(n not in params for n in want)))
    rep.rows.append(("params_after_3_steps values (max |Δ|)", _fmt(worst_val), "0", f"{TOL_PARAM_VALUE:g}",
                     worst_val <= TOL_PARAM_VALUE))
    if bad:
        rep.rows.append(("params_after_3_steps tensors outside", f"{len(bad)}: {bad[0]}", "0", "exact", False))


def main(args) -> int:
    t0 = time.perf_counter()
    rep = run(args.fixture)
    rep.print()
    print(f"parity on {args.fixture}: {'PASS' if rep.ok else 'FAIL'} in {time.perf_counter() - t0:.1f} s")
    return 0 if rep.ok else 1
