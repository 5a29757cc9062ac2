"""Legality: the prefix-invariance check, for the registry's variants and anyone's own.

Owns what `python -m dyneval legality` and the test suite's legality tests run. The challenge's rule
for evaluation-time adaptation is that every token is scored before any update uses it. That rule has
a test that needs no reading of the code: score the validation stream, then a copy whose tokens after
a position P are replaced; a variant that obeys the rule gives every window lying wholly at or before
token P bitwise the same nats and bytes on both streams, because nothing it computed before scoring
those windows could have seen a token after P. A window lies wholly before P when its last target is
token ≤ P (target i is token i+1, so its inputs and scored targets are all among tokens 0..P).

Two choices make the test catch what it should:

- **Where P lies.** A method that trains on its current chunk (or batch, or window) before scoring it
  peeks only inside that chunk; with P on a chunk boundary every peek before P stays before P and the
  method passes. So the default prefixes are never on a multiple of the sliding stride, the window
  length, the batch, the run's adaptation period or the score-first TTT chunk, and are coprime to 30,
  which keeps them off the boundaries of any period with a factor 2, 3 or 5 (round chunk sizes a
  user's method may pick); three of them, spread over the stream.
- **What replaces the tokens.** Uniform random ids among the ordinary pieces (4 .. vocab-1: never BOS,
  nor pad / eos / unk), from a fixed seed. BOS positions are *not* kept: after P the copy has no
  document boundaries at all, so a method that looks ahead at where the next document starts is
  caught as well (a legal method that resets at BOS only changes its scores after P).

The check also asks that scores after P change (otherwise the altered stream never reached the
scores and the comparison proves nothing) and that some window lies wholly before P.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import data, distributed as dist_utils, files
from .config import EvalConfig, RunConfig
from .evaluate import EvalResult
from .variants import DEFAULT_ORDER, VARIANTS, EvalOptions, Variant, default_ranks, evaluation_inputs, job_for

FIRST_ORDINARY_ID = 4  # the tokenizers' control pieces: pad 0 / bos 1 / eos 2 / unk 3 (data.BOS_ID)
REPLACEMENT_SEED = 0
DEFAULT_FRACTIONS = (0.3, 0.55, 0.8)  # where the default prefixes start looking, as fractions of the stream
ROUND_FACTORS = 30  # default prefixes are coprime to 2 * 3 * 5


def replace_after(tokens: torch.Tensor, prefix: int, vocab_size: int, seed: int = REPLACEMENT_SEED) -> torch.Tensor:
    """A copy of `tokens` equal on tokens 0..prefix, with every later token replaced by a random
    ordinary piece (ids FIRST_ORDINARY_ID .. vocab_size-1: never BOS; BOS positions are not kept)."""
    if not 0 < prefix < tokens.numel() - 1:
        raise ValueError(f"prefix {prefix}: must lie inside the stream (1 .. {tokens.numel() - 2})")
    if data.BOS_ID >= FIRST_ORDINARY_ID or vocab_size <= FIRST_ORDINARY_ID:
        raise ValueError(f"vocab_size {vocab_size}: no ordinary piece to replace tokens with")
    other = tokens.clone()
    g = torch.Generator().manual_seed(seed)
    fresh = torch.randint(FIRST_ORDINARY_ID, vocab_size, (tokens.numel() - prefix - 1,), generator=g)
    other[prefix + 1:] = fresh.to(device=tokens.device, dtype=tokens.dtype)
    return other


def periods(e: EvalConfig) -> dict[str, int]:
    """The token periods of the registry's window plans and adaptation schedules (a prefix on a
    multiple of one lies on a boundary a chunk-peeking method could hide behind)."""
    return {"eval_stride": e.eval_stride, "eval_seq_len": e.eval_seq_len,
            "scoring batch": e.eval_stride * e.eval_batch_seqs,
            "adaptation period (adapt_every batches)": e.eval_stride * e.eval_batch_seqs * e.adapt_every,
            "ttt_chunk_tokens": e.ttt_chunk_tokens}


def default_prefixes(num_targets: int, e: EvalConfig, fractions=DEFAULT_FRACTIONS) -> list[int]:
    """Three prefixes near `fractions` of the stream, each the first P at or after its point that is on
    no multiple of `periods(e)` and coprime to 30, with at least one whole window before it."""
    lo, hi = e.eval_seq_len + 1, num_targets - 2
    out = []
    for f in fractions:
        p = max(lo, int(f * num_targets))
        while p <= hi and (math.gcd(p, ROUND_FACTORS) != 1 or any(p % n == 0 for n in periods(e).values())
                           or p in out):
            p += 1
        if p > hi:
            raise ValueError(f"a stream of {num_targets} targets is too short for a legality check with "
                             f"eval_seq_len {e.eval_seq_len}: raise eval.max_val_tokens")
        out.append(p)
    return out


def check_prefixes(prefixes: list[int], num_targets: int, e: EvalConfig) -> list[int]:
    """Refuse prefixes that cannot test anything: outside the stream, or with no whole window before."""
    for p in prefixes:
        if not e.eval_seq_len <= p <= num_targets - 2:
            raise ValueError(f"--prefix {p}: must lie between eval_seq_len ({e.eval_seq_len}, so that a whole window "
                             f"lies before it) and {num_targets - 2} (the stream has {num_targets} targets)")
    return sorted(set(prefixes))


# ----------------------------------------------------------------------------------------------
# Comparing two streams

@dataclass
class PrefixCheck:
    """One prefix P: how the altered stream's scores compare with the original's."""

    prefix: int
    windows_before: int  # windows lying wholly at or before token P
    tokens_before: int  # targets those windows score
    differing_windows: int  # of them, the windows whose nats or bytes (or plan) differ
    tokens_affected: int  # targets the differing windows score
    first_window: dict | None  # the first differing window: index, window_start, first_scored, num_scored
    after_changed: bool  # whether any score after P changed (else the comparison proves nothing)

    @property
    def invariant(self) -> bool:
        return self.differing_windows == 0

    @property
    def conclusive(self) -> bool:
        return self.windows_before > 0 and self.after_changed


PLAN = ("window_start", "first_scored", "num_scored")


def _in_stream_order(stream: dict) -> dict:
    order = np.lexsort((stream["window_start"], stream["first_scored"]))
    return {k: np.asarray(v)[order] for k, v in stream.items()}


def compare_streams(base: dict, altered: dict, prefix: int) -> PrefixCheck:
    """Compare the per-window streams of the original and the altered stream (equal on tokens 0..prefix).

    Windows are taken in stream order; those wholly at or before `prefix` must agree bitwise in their
    plan (start, first scored target, count), nats and bytes. Anything else is a dependence on tokens
    after `prefix`.
    """
    a, b = _in_stream_order(base), _in_stream_order(altered)
    before_a = a["first_scored"] + a["num_scored"] <= prefix  # last target of the window is token first+num
    before_b = b["first_scored"] + b["num_scored"] <= prefix
    ia, ib = np.nonzero(before_a)[0], np.nonzero(before_b)[0]
    n = min(len(ia), len(ib))
    same = np.ones(max(len(ia), len(ib)), dtype=bool)
    same[n:] = False  # a window before P that only one stream has
    for k in (*PLAN, "nats", "bytes"):
        same[:n] &= a[k][ia[:n]] == b[k][ib[:n]]
    differ = np.nonzero(~same)[0]
    first = None
    if len(differ):
        j = int(differ[0])
        src, row = (a, ia[j]) if j < len(ia) else (b, ib[j])
        first = {"index": j, **{k: int(src[k][row]) for k in PLAN}}
    affected = int(sum(int(a["num_scored"][ia[j]]) if j < len(ia) else int(b["num_scored"][ib[j]]) for j in differ))
    after_a, after_b = a["nats"][~before_a], b["nats"][~before_b]
    after_changed = len(after_a) != len(after_b) or not np.array_equal(after_a, after_b)
    return PrefixCheck(prefix, int(len(ia)), int(a["num_scored"][ia].sum()), int(len(differ)), affected, first,
                       bool(after_changed))


@dataclass
class Verdict:
    """A variant's prefix checks and what they say."""

    name: str
    marked_legal: bool
    reason: str
    checks: list[PrefixCheck] = field(default_factory=list)
    prefix_rule: bool = True  # the legal mark includes strict prefix invariance (Variant.rule "both")

    @property
    def invariant(self) -> bool:
        return all(c.invariant for c in self.checks)

    @property
    def conclusive(self) -> bool:
        return bool(self.checks) and all(c.conclusive for c in self.checks)

    @property
    def ok(self) -> bool:
        """Whether the verdict agrees with the variant's marking (a legal mark needs a conclusive pass)."""
        return (self.invariant and self.conclusive) if self.marked_legal and self.prefix_rule else True

    def line(self) -> str:
        mark = "marked not legal" if not self.marked_legal else \
            "marked legal" if self.prefix_rule else "marked legal: score-before-update only"
        if not self.invariant:
            c = next(c for c in self.checks if not c.invariant)
            w = c.first_window
            return (f"{self.name}: NOT prefix-invariant (first differing window {w['index']} at P={c.prefix}: "
                    f"start {w['window_start']}, scoring targets {w['first_scored']}..{w['first_scored'] + w['num_scored'] - 1}; "
                    f"tokens affected {c.tokens_affected} of {c.tokens_before} scored before P) [{mark}]")
        if not self.conclusive:
            c = next(c for c in self.checks if not c.conclusive)
            why = "no window lies wholly before P" if not c.windows_before else "no score after P changed"
            return f"{self.name}: NOT checked ({why} at P={c.prefix}: the comparison proves nothing) [{mark}]"
        return f"{self.name}: prefix-invariant [{mark}]"

    def to_dict(self) -> dict:
        return {"marked_legal": self.marked_legal, "prefix_rule": self.prefix_rule, "reason": self.reason,
                "prefix_invariant": self.invariant,
                "conclusive": self.conclusive, "ok": self.ok, "line": self.line(),
                "checks": [{**asdict(c), "invariant": c.invariant} for c in self.checks]}


def check_variant(name: str, marked_legal: bool, reason: str, run: Callable[[torch.Tensor, dict], EvalResult],
                  tokens: torch.Tensor, prefixes: list[int], vocab_size: int, caches: dict | None = None) -> Verdict:
    """Score the stream and one altered copy per prefix with `run(tokens, cache)`, and compare.

    `caches` (one dict per stream, keyed by prefix, None for the original) lets variants of one call
    share work per stream, as evaluate's cache does (the pre-eval TTT): a cache must never be shared
    across streams, or a variant would score one stream with what it learned on another.
    """
    caches = {} if caches is None else caches
    base = run(tokens, caches.setdefault(None, {}))
    verdict = Verdict(name, marked_legal, reason)
    for p in prefixes:
        altered = run(replace_after(tokens, p, vocab_size), caches.setdefault(p, {}))
        verdict.checks.append(compare_streams(base.stream, altered.stream, p))
    return verdict


# ----------------------------------------------------------------------------------------------
# Variants from a user's file

def load_plugin(path: str | Path) -> list[Variant]:
    """The `Variant` records a user's Python file lists in a module-level `VARIANTS` (same record as
    the registry: `dyneval.variants.Variant`, whose `run(job)` returns (EvalResult, settings))."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--plugin {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"dyneval_plugin_{path.stem}", path)
    if spec is None or path.suffix != ".py":
        raise ValueError(f"--plugin {path}: not a Python file (.py)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look a module up by name
    spec.loader.exec_module(module)
    entries = list(getattr(module, "VARIANTS", []))
    if not entries or not all(isinstance(v, Variant) for v in entries):
        raise ValueError(f"--plugin {path}: define VARIANTS = [dyneval.variants.Variant(...), ...] "
                         f"(a list of the registry's Variant records)")
    taken = [v.name for v in entries if v.name in VARIANTS]
    if taken:
        raise ValueError(f"--plugin {path}: variant name(s) {taken} already in the registry: rename them")
    return entries


def select_variants(text: str | None, plugins: list[Variant]) -> list[Variant]:
    """`--variants`: registry names, plugin names and `all` (the registry's and every plugin's variants).
    Without `--variants`: the plugins' variants when a plugin is given, else `all`."""
    extra = {v.name: v for v in plugins}
    known = {**VARIANTS, **extra}
    if text is None:
        text = ",".join(extra) if extra else "all"
    names = []
    for item in (t.strip() for t in text.split(",")):
        names += (DEFAULT_ORDER + list(extra)) if item == "all" else [item] * bool(item)
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"--variants {text!r}: unknown variant(s) {unknown}: choose from "
                         f"{', '.join(known)} or `all`")
    return [known[n] for n in dict.fromkeys(names)]


# ----------------------------------------------------------------------------------------------
# On an artifact

def check_checkpoint(cfg: RunConfig, artifact: Path, variants: list[Variant], prefixes: list[int] | None = None,
                     options: EvalOptions = EvalOptions(), out_json: str | Path | None = None, log=print) -> dict:
    """Run the prefix check for `variants` (Variant records) on an artifact, under the settings the
    evaluate stage would use (`options`: the run's quirks for its own variants, the profile's ranks unless
    `virtual_ranks`, the device; `fresh` unused). Returns the report: the prefixes, the replacement, and one
    verdict per variant; `out_json` gets it rewritten atomically after every variant (nothing checked is
    lost when a later variant fails)."""
    quirks = options.quirks_in_force
    ctx = dist_utils.init_context(options.device)
    inputs = evaluation_inputs(cfg, artifact, ctx.device)
    tokens = inputs.tokens
    ranks = default_ranks(cfg, options.virtual_ranks)
    num_targets = tokens.numel() - 1
    prefixes = check_prefixes(prefixes, num_targets, cfg.eval) if prefixes else default_prefixes(num_targets, cfg.eval)
    if ctx.is_main:
        log(f"legality: {len(variants)} variant(s) on {artifact} ({num_targets} targets), prefixes "
            f"{', '.join(map(str, prefixes))}; tokens after P replaced by random ordinary pieces "
            f"(ids {FIRST_ORDINARY_ID}..{cfg.model.vocab_size - 1}, never BOS; BOS positions not kept)")
    report = {"artifact": str(artifact), "artifact_sha256": inputs.weights.sha256, "num_targets": num_targets,
              "prefixes": prefixes, "periods": periods(cfg.eval),
              "replacement": {"ids": [FIRST_ORDINARY_ID, cfg.model.vocab_size - 1], "seed": REPLACEMENT_SEED,
                              "bos_positions_kept": False},
              "quirks": asdict(quirks), **ranks.describe(), "device": str(ctx.device), "ok": True, "variants": {}}
    caches: dict = {}  # one cache per stream, shared by the variants (the pre-eval TTT is trained once per stream)
    for v in variants:
        def run(toks, cache, v=v):
            return v.run(job_for(v, cfg, inputs.on(toks), quirks, ranks, cache))[0]

        verdict = check_variant(v.name, v.legal, v.reason, run, tokens, prefixes, cfg.model.vocab_size, caches)
        verdict.prefix_rule = getattr(v, "rule", "both") == "both"
        report["variants"][v.name] = verdict.to_dict()
        report["ok"] = report["ok"] and verdict.ok
        if ctx.is_main:
            log(verdict.line())
            if out_json:
                files.write_json(out_json, report)
    return report
