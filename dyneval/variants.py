"""The registry of scoring and adaptation variants, and what each runs on: the dequantized artifact.

The evaluate stage (evaluate_stage.py, `python -m dyneval evaluate`) runs them over one artifact. Every
variant is one `Variant` record -- its legality under the challenge's rule and why, whether it is one of the run's own passes
(whose quirks then apply unless switched off), whether it adapts per rank, and the function that
runs it -- so a new variant is one entry plus its function. Every variant starts from fresh weights
dequantized from the int6 artifact (every score is a score of the bytes that would be submitted).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import adapt, data, distributed as dist_utils, doc_ttt, files, graphs, quant
from .adapt import Quirks
from .config import RunConfig, switch_on
from .distributed import Ranks
from .evaluate import EvalResult, Scorer, compiled, evaluate_nonoverlap, evaluate_sliding
from .model import GPT, configure_backends, model_from_weights, set_numerics
from .runfolder import RunFolder

LEGAL = "scores every token before any update uses it"
NOT_LEGAL_TTT = "trains on validation tokens before scoring them (pre-eval TTT)"
NO_ADAPTATION = "no adaptation"
LEGAL_FIELD_ORDER = ("scores every token before any update uses it, but its order reads the lengths of documents "
                     "not yet scored (not prefix-invariant)")
SCORE_FIRST_ONLY = "score_first_only"


class DequantizedArtifact:
    """The artifact's weights dequantized (what every variant scores), ready to give each a fresh model."""

    def __init__(self, cfg: RunConfig, artifact: Path, device: torch.device):
        self.cfg, self.artifact, self.device = cfg, Path(artifact), device
        template = GPT(cfg.model, init_weights=False).state_dict()  # names, shapes and dtypes only
        tensors, qmeta = quant.read_artifact(artifact, quant.raw_size_bound(template))
        self.state = quant.dequantize_state_dict(tensors, qmeta, template, source=str(artifact))
        self.sha256 = files.sha256_file(self.artifact)
        self.bits = quant.grid_bits(qmeta)  # what the artifact holds, whatever its name says

    @classmethod
    def from_state(cls, cfg: RunConfig, state: dict, device: torch.device) -> "DequantizedArtifact":
        """Weights given directly (benchmarks on a random model), not read from an artifact."""
        ck = cls.__new__(cls)
        ck.cfg, ck.artifact, ck.device, ck.state, ck.sha256, ck.bits = cfg, Path("<in memory>"), device, state, "", None
        return ck

    @property
    def gpu_dtypes(self) -> bool:
        """The GPU dtype policy applies: on CUDA, or on any device with `eval.gpu_dtypes=1`."""
        return switch_on(self.cfg.eval.gpu_dtypes, self.device)

    def model(self, bf16_tables: bool = True) -> GPT:
        return model_from_weights(self.cfg.model, self.state, self.device, self.gpu_dtypes, bf16_tables=bf16_tables,
                                  source=str(self.artifact))


@dataclass(frozen=True, eq=False)  # holds tensors: compared by identity
class EvalInputs:
    """What every variant of one call scores with: the artifact's dequantized weights, the stream and its byte
    LUT on the device, and the backends set up for it (`model.configure_backends`' record: expand_kv etc.)."""

    weights: DequantizedArtifact
    tokens: torch.Tensor
    lut: data.ByteLUT
    backends: dict

    def on(self, tokens: torch.Tensor) -> "EvalInputs":
        """The same with another stream (legality's replaced tails, sweep's tuning stream)."""
        return dataclasses.replace(self, tokens=tokens)


@dataclass
class Job:
    """What a variant's function needs: the inputs of the call, and the settings this variant runs under."""

    cfg: RunConfig
    inputs: EvalInputs
    quirks: Quirks  # the quirks in force for this variant (all off for variants that are not the run's)
    ranks: Ranks  # real x virtual ranks for this variant
    cache: dict = field(default_factory=dict)  # shared across the variants of one evaluate call
    regions: graphs.Regions | None = None  # this variant's compiled functions (made by `region`), counted apart

    weights = property(lambda self: self.inputs.weights)
    tokens = property(lambda self: self.inputs.tokens)
    lut = property(lambda self: self.inputs.lut)
    backends = property(lambda self: self.inputs.backends)

    def region(self, name: str, enabled: bool, **kw):
        """The compiled function `name` of this variant when `enabled`, else False (run eagerly); `kw` go to
        `graphs.Region` when it is made (e.g. `dynamic=None` for a batch size that varies)."""
        if not enabled:
            return False
        if self.regions is None:
            self.regions = graphs.Regions(self.cfg.eval.compile_backend)
        return self.regions.get(name, **kw)

    @property
    def autocast(self) -> bool:
        """bf16 autocast with the GPU dtype policy: on CUDA, or wherever `eval.gpu_dtypes=1` asks for it."""
        return self.weights.gpu_dtypes

    @property
    def compile(self) -> bool:
        return graphs.should_compile(self.cfg.eval.compile, self.weights.device)

    @property
    def scorer(self) -> Scorer:
        """The stream as this variant scores it: the eval windows, its ranks, its autocast."""
        return Scorer(self.tokens, self.lut, self.cfg.eval.scoring, self.ranks, self.autocast)

    def forward(self, m: GPT, region: str = "forward", enabled: bool | None = None, **kw):
        """`m`'s forward through this variant's compiled region `region` when `enabled` (default: `eval.compile`
        is on for this device), else `m` itself."""
        return compiled(m, self.region(region, self.compile if enabled is None else enabled, **kw))

    @property
    def compile_dynamic(self) -> bool:
        """The run's dynamic eval ran eagerly (its uncompiled train-mode forward): faithful unless asked."""
        return graphs.should_compile(self.cfg.eval.compile_dynamic, self.weights.device)

    def model(self, qat: bool | None = None) -> GPT:
        """Fresh weights from the artifact, with this variant's dtype policy and numerics switches."""
        m = self.weights.model(bf16_tables=self.quirks.bf16_tables)
        return set_numerics(m, qat=self.quirks.qat_on if qat is None else qat, expand_kv=self.backends["expand_kv"])


@dataclass(frozen=True, kw_only=True)
class EvalOptions:
    """How one evaluate (or legality) call runs the variants, beside the config: the command line's switches."""

    quirks: Quirks = Quirks()  # the run's quirks for its own passes (all faithful unless switched off)
    virtual_ranks: int | None = None  # ranks the rank-local variants simulate (default: the profile's eval.ranks)
    device: str | None = None
    fresh: bool = False  # start the folder's results over
    # whether training set late QAT's flag (a run folder's meta.json says; an artifact alone is assumed to come
    # from a run that did, as every published one did). Never set: the run's own passes had no fake
    # quantization to suffer, so the `qat_on` quirk is off.
    qat_flag_set: bool = True

    @property
    def quirks_in_force(self) -> Quirks:
        """`quirks`, with `qat_on` off when training never set the flag."""
        return self.quirks if self.qat_flag_set else dataclasses.replace(self.quirks, qat_on=False)


# ----------------------------------------------------------------------------------------------
# The variants' functions: each returns its result and the settings it ran with.

def run_nonoverlap(job: Job) -> tuple[EvalResult, dict]:
    m = job.model()
    return evaluate_nonoverlap(m, job.scorer, job.forward(m)), {}


def run_sliding(job: Job) -> tuple[EvalResult, dict]:
    m = job.model()
    return evaluate_sliding(m, job.scorer, job.forward(m)), {}


def pre_eval_ttt_model(job: Job) -> tuple[GPT, float]:
    """The run's pre-eval TTT on fresh weights, computed once per evaluate call and shared by the three
    variants that score after it (each gets its own copy; TTT is deterministic, so the numbers are
    those of three separate runs, as the run itself did it twice)."""
    key = ("pre_eval_ttt", job.quirks, job.ranks)
    if key not in job.cache:
        m = job.model()
        seconds = adapt.pre_eval_ttt(m, job.scorer, job.cfg.eval.ttt)
        job.cache[key] = (m, seconds)
    m, seconds = job.cache[key]
    return copy.deepcopy(m), seconds


def after_pre_eval_ttt(score: Callable[[Job, GPT], EvalResult]):
    """A variant that scores with `score` after the run's pre-eval TTT (its seconds included)."""
    def run(job: Job) -> tuple[EvalResult, dict]:
        m, ttt_s = pre_eval_ttt_model(job)
        res = score(job, m)
        res.seconds += ttt_s
        return res, {"ttt": asdict(job.cfg.eval.ttt)}
    return run


def _sliding_after_ttt(job: Job, m: GPT) -> EvalResult:
    return evaluate_sliding(m, job.scorer, job.forward(m))


def _nonoverlap_after_ttt(job: Job, m: GPT) -> EvalResult:
    return evaluate_nonoverlap(m, job.scorer, job.forward(m))  # the run compiled this pass, unlike its dynamic eval


def _dynamic_after_ttt(job: Job, m: GPT) -> EvalResult:
    return adapt.adapt_dynamic(m, job.scorer, job.cfg.eval.dynamic, name="pre_eval_ttt+dynamic",
                               compile=job.region("dynamic", job.compile_dynamic))


def run_dynamic(job: Job) -> tuple[EvalResult, dict]:
    res = adapt.adapt_dynamic(job.model(), job.scorer, job.cfg.eval.dynamic,
                              compile=job.region("dynamic", job.compile_dynamic))
    return res, {"dynamic": asdict(job.cfg.eval.dynamic)}


def score_first(with_dynamic: bool):
    def run(job: Job) -> tuple[EvalResult, dict]:
        e = job.cfg.eval
        name = "score_first_ttt+dynamic" if with_dynamic else "score_first_ttt"
        res = adapt.score_first_ttt(job.model(), job.scorer, e.score_first, dynamic=e.dynamic if with_dynamic else None,
                                    name=name)
        settings = {"score_first_ttt": asdict(e.score_first)}
        if with_dynamic:
            settings["dynamic"] = asdict(e.dynamic)
        return res, settings
    return run


def tail(subset: str | None = None, name: str = "dynamic_tail"):
    """The improved dynamic eval with plain SGD; `subset` overrides `eval.tail_subset`."""
    def run(job: Job) -> tuple[EvalResult, dict]:
        settings = job.cfg.eval.tail
        if subset:
            settings = dataclasses.replace(settings, subset=subset)
        res = adapt.adapt_dynamic_tail(job.model(), job.scorer, settings, compile=job.region("tail", job.compile),
                                       name=name)
        return res, {"tail": asdict(settings)}
    return run


def run_krause(job: Job) -> tuple[EvalResult, dict]:
    """dynamic_tail with Krause's update; its gradient statistics come from training batches only."""
    k = job.cfg.eval.krause
    t0 = time.perf_counter()
    batches = train_batches(job.cfg, k.batches, job.weights.device)
    stats = adapt.gradient_rms(job.model(qat=False), batches, job.autocast)
    stats_s = time.perf_counter() - t0
    res = adapt.adapt_dynamic_tail(job.model(), job.scorer, k, rms_stats=stats, compile=job.region("tail", job.compile),
                                   name="dynamic_krause")
    res.seconds += stats_s
    return res, {"krause": asdict(k)}


def run_doc_score(job: Job) -> tuple[EvalResult, dict]:
    m = job.model()
    res = doc_ttt.evaluate_doc_score(m, job.scorer, job.forward(m))
    return res, {"documents": int(len(doc_ttt.documents(job.tokens)))}


def doc_ttt_variant(order: str, phased: bool):
    """The field's per-document LoRA TTT, with phased global SGD.

    Compiled (`eval.compile`): region `lora` runs every adapter batch's forward, whose backward is the
    adapter step: one graph, as every batch has one shape, (doc_batch, eval_seq_len). Region `global` runs
    the global SGD's forward and backward (train mode, base weights trainable, hence its own graphs); a
    chunk's sequence count varies, so it is compiled with `dynamic=None` (dynamo makes the batch size
    symbolic at the second size it sees) rather than one graph per count.

    Not rank-local: batches are dealt to the real ranks in a fixed order and each document's adapters are its
    own, so the scores do not depend on the rank count; the global SGD divides the sum over every rank's
    sequences by the chunk's token count, so only its float summation order does."""
    def run(job: Job) -> tuple[EvalResult, dict]:
        e = job.cfg.eval
        ttt = doc_ttt.DocTTT(e.doc_lora, e.global_sgd if phased else None, order)
        name = ("phased_ttt_field" if order == "field" else "phased_ttt") if phased else "doc_lora_ttt"
        m = job.model()
        res = doc_ttt.doc_lora_ttt(m, job.scorer, ttt, name=name, forward=job.forward(m, "lora"),
                                   sgd_forward=job.forward(m, "global", job.compile and phased, dynamic=None))
        settings = {"doc_lora": asdict(ttt.lora), "order": order, "documents": int(len(doc_ttt.documents(job.tokens)))}
        if phased:
            settings |= {"global_sgd": asdict(ttt.phases), **res.notes}
        return res, settings
    return run


def train_batches(cfg: RunConfig, num: int, device) -> list:
    """The first `num` batches of the training stream (for gradient statistics; training data only)."""
    loader = data.DistributedTokenLoader(data.train_pattern(cfg.train.data_path), 0, 1, device)
    seqs = max(1, cfg.eval.eval_batch_seqs // 2)
    return [loader.next_batch(seqs * cfg.eval.eval_seq_len, cfg.eval.eval_seq_len) for _ in range(num)]


# ----------------------------------------------------------------------------------------------
# The registry

@dataclass(frozen=True)
class Variant:
    name: str
    legal: bool
    reason: str  # why it is (not) legal
    faithful: bool  # one of the run's own passes: its quirks apply unless switched off
    rank_local: bool  # adapts per rank or averages over ranks: its number depends on the rank count
    description: str
    run: Callable[[Job], tuple[EvalResult, dict]]
    # which rule the legal mark means: BOTH (the challenge's score-before-update, and strict prefix
    # invariance, which `python -m dyneval legality` tests) or SCORE_FIRST_ONLY (scores before it updates, but
    # its order reads the lengths of unscored documents, so the prefix check is shown, not required)
    rule: str = "both"


VARIANTS = {v.name: v for v in [
    Variant("nonoverlap", True, NO_ADAPTATION, False, False,
            "non-overlapping L-token sequences (the run's eval_val)", run_nonoverlap),
    Variant("sliding", True, NO_ADAPTATION, False, False,
            "sliding windows, stride S (the baseline of every delta)", run_sliding),
    Variant("pre_eval_ttt", False, NOT_LEGAL_TTT, True, True,
            "the run's pre-eval TTT, then sliding windows", after_pre_eval_ttt(_sliding_after_ttt)),
    Variant("pre_eval_ttt+nonoverlap", False, NOT_LEGAL_TTT, True, True,
            "the run's pre-eval TTT, then non-overlapping eval (the run's first published number)",
            after_pre_eval_ttt(_nonoverlap_after_ttt)),
    Variant("pre_eval_ttt+dynamic", False, NOT_LEGAL_TTT, True, True,
            "the run's headline: pre-eval TTT, then its dynamic eval", after_pre_eval_ttt(_dynamic_after_ttt)),
    Variant("dynamic", True, LEGAL, True, True,
            "the run's dynamic eval (one window per 4 batches, train mode)", run_dynamic),
    Variant("score_first_ttt", True, LEGAL, False, True,
            "the merged records' score-first TTT (chunks, 3 epochs)", score_first(with_dynamic=False)),
    Variant("score_first_ttt+dynamic", True, LEGAL, False, True,
            "score-first TTT with the run's dynamic-eval step while scoring (the run's quirks off, as for TTT)",
            score_first(with_dynamic=True)),
    Variant("dynamic_tail", True, LEGAL, False, True,
            "dynamic eval on each batch's tail: after scoring a batch, one SGD step on exactly the targets it just "
            "scored (fp32 master weights, no fake quant)",
            tail()),
    Variant("dynamic_tail_mlp", True, LEGAL, False, True,
            "dynamic_tail restricted to the MLP weights", tail("mlp", "dynamic_tail_mlp")),
    Variant("dynamic_krause", True, LEGAL, False, True,
            "dynamic_tail with Krause's RMS-normalised update and decay toward the trained weights", run_krause),
    Variant("doc_score", True, NO_ADAPTATION, False, False,
            "every document scored alone from its BOS (sliding windows inside long documents)", run_doc_score),
    Variant("doc_lora_ttt", True, LEGAL, False, False,
            "the field's per-document batched LoRA TTT (PR #1530): score a 48-token chunk, then one Adam step "
            "of that document's adapters", doc_ttt_variant("stream", phased=False)),
    Variant("phased_ttt", True, LEGAL, False, False,
            "phased global SGD (PR #1610) over the first documents of the stream, then doc_lora_ttt",
            doc_ttt_variant("stream", phased=True)),
    Variant("phased_ttt_field", True, LEGAL_FIELD_ORDER, False, False,
            "phased_ttt in the records' order (length-sorted batches, longest first)",
            doc_ttt_variant("field", phased=True), rule=SCORE_FIRST_ONLY),
]}
DEFAULT_ORDER = list(VARIANTS)


def parse_variants(text: str) -> list[str]:
    """`a,b` -> [a, b]; `all` (alone or in a list) stands for every variant; each variant runs once."""
    items = [v.strip() for v in text.split(",") if v.strip()]
    names = list(dict.fromkeys(n for item in items for n in (DEFAULT_ORDER if item == "all" else [item])))
    if not names:
        raise ValueError(f"--variants {text!r} names no variant: choose from {', '.join(DEFAULT_ORDER)} or `all`")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}: choose from {', '.join(DEFAULT_ORDER)} or `all`")
    return names


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


def default_ranks(cfg: RunConfig, virtual_ranks: int | None) -> Ranks:
    """Ranks for the rank-local variants: `--virtual-ranks` when given; else, when fewer processes run
    than the profile's `eval.ranks`, that many virtual ranks (the run's 8 GPUs on one)."""
    if virtual_ranks is not None:
        return Ranks.current(virtual_ranks)
    world = dist_utils.world_size()
    return Ranks.current(cfg.eval.ranks if world < cfg.eval.ranks else None)


def job_for(variant: Variant, cfg: RunConfig, inputs: EvalInputs, quirks: Quirks, ranks: Ranks, cache: dict) -> Job:
    """The settings `variant` runs under: the run's quirks for its own passes; for the others no fake
    quantization and rank-local adaptation, under the same table dtype as every variant (so that every
    Δ vs sliding measures adaptation, not table precision: the run scored all its passes with bf16
    tables on GPU, and `bf16_tables=0` switches every variant to fp32 tables)."""
    q = quirks if variant.faithful else dataclasses.replace(quirks, qat_on=False, rank_local=True)
    r = ranks if variant.rank_local else ranks.real()
    if variant.rank_local and not q.rank_local:  # quirk off: one rank, one chain over the whole stream
        r = Ranks.current(1)
    return Job(cfg, inputs, q, r, cache)


def table_dtypes(job: Job) -> dict:
    """The dtypes a variant's model holds (recorded per variant: tables, linears, control tensors);
    they follow from the device and the bf16_tables quirk, so one model per quirk setting says."""
    key = ("dtypes", job.quirks.bf16_tables)
    if key not in job.cache:
        job.cache[key] = _dtypes(job.model())
    return dict(job.cache[key])


def _dtypes(m: GPT) -> dict:
    pick = {"tok_emb": "tok_emb.weight", "bigram_table": "bigram.embed.weight", "linear": "blocks.0.attn.c_q.weight",
            "control": "blocks.0.attn_scale"}
    params = dict(m.named_parameters())
    return {k: str(params[n].dtype).replace("torch.", "") for k, n in pick.items() if n in params}


def compile_record(job: Job, res: EvalResult) -> dict:
    """Graphs per compiled function of the variant, and its compile seconds apart from its scoring seconds
    (`seconds` includes both: the calls that compiled are timed whole, so the split is an upper bound)."""
    regions = job.regions.record() if job.regions else {}
    compile_s = job.regions.compile_seconds if job.regions else 0.0
    return {"graphs": regions, "compile_seconds": compile_s, "scoring_seconds": res.seconds - compile_s}


def evaluation_inputs(cfg: RunConfig, artifact: Path, device: torch.device) -> EvalInputs:
    """What every variant of one call scores with: the backends set up for `device`, the byte LUT, the validation
    stream, the artifact.

    A tokenizer other than the data's (or the run's, from the meta.json beside the artifact) would give a
    wrong bpb with a right-looking loss, and a token id outside the vocabulary an index error: both refused.
    """
    backends = configure_backends(cfg, device)
    lut = data.build_byte_lut(cfg.train.tokenizer_path, cfg.model.vocab_size).to(device)  # vocab size first
    data.check_tokenizer(cfg.train.tokenizer_path, cfg.train.data_path, RunFolder(Path(artifact).parent).meta)
    tokens = data.load_validation_tokens(data.val_pattern(cfg.train.data_path), cfg.eval.eval_seq_len,
                                         cfg.eval.max_val_tokens, cfg.model.vocab_size)
    return EvalInputs(DequantizedArtifact(cfg, Path(artifact), device), tokens.to(device), lut, backends)


def check_virtual_ranks(ranks, tokens: torch.Tensor, cfg: RunConfig) -> None:
    """More ranks than sliding windows leaves ranks with nothing to adapt on: their variants would silently
    be sliding's number."""
    windows = -(-(tokens.numel() - 1) // cfg.eval.eval_stride)
    if ranks.total > windows:
        raise ValueError(f"--virtual-ranks {ranks.total}: the stream has only {windows} sliding windows "
                         f"(eval.eval_stride {cfg.eval.eval_stride}), so some ranks would adapt on nothing: "
                         f"use at most {windows}")
