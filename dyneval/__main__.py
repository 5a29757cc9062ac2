"""Command line: `python -m dyneval {data,train,export,evaluate,legality,parity,reproduce,report,bench,config}`.

The only module that parses arguments: each command is a thin function over library calls, and
every command that takes a config resolves it through `config.resolve` (profile or file or run
folder, then the record's environment variables only with `--env`, then `--set`). Bad input is
printed as one line (`dyneval: error: ...`, exit status 2); anything else is a bug and keeps its
traceback. `--debug` (or DYNEVAL_DEBUG=1) shows the traceback of bad-input errors too.

Option names avoid every prefix of torchrun's own options (`--run` would be read by torchrun as an
abbreviation of its `--run-path`), so each command line works under `torchrun ... -m dyneval`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

# Errors that mean bad input, a failed run with its own clear message, or the environment (a read-only
# folder, a full disk): one line, exit status 2. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, FloatingPointError)


class Parser(argparse.ArgumentParser):
    """argparse with the library's one-line error (`dyneval: error: ...`, status 2)."""

    def error(self, message):
        self.exit(2, f"dyneval: error: {message} (see `{self.prog} --help`)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def add_data_command(sub) -> None:
    d = sub.add_parser("data", help="make or fetch a dataset in the challenge's layout")
    dsub = d.add_subparsers(dest="source", required=True)
    e = dsub.add_parser("embedded", help="the embedded default corpus (CPython's documentation text)")
    e.add_argument("--out", default="data", help="data root (datasets/ and tokenizers/ go under it)")
    e.add_argument("--force", action="store_true", help="rebuild even when the manifest matches")
    f = dsub.add_parser("fineweb", help="the challenge's FineWeb export from the Hugging Face Hub")
    f.add_argument("--variant", default="sp1024")
    f.add_argument("--train-shards", type=int, default=80, help="the challenge's default: 80 shards, 8 B tokens")
    f.add_argument("--tune", action="store_true", help="also fetch the tuning shard of `sweep`, fineweb_train_000079.bin "
                   "(the last train shard, which the record's 5,604 steps never read; part of the default 80)")
    f.add_argument("--out", default="data")
    f.add_argument("--data-path", help="use an existing local copy of the shard folder instead")
    f.add_argument("--tokenizer-path", help="with --data-path: the tokenizer of that copy")
    f.add_argument("--env", action="store_true", help="take DATA_PATH / TOKENIZER_PATH from the environment")


def config_args(q, run_dir: bool = False) -> None:
    """The options every command that resolves a config takes (config.resolve)."""
    src = q.add_mutually_exclusive_group()
    src.add_argument("--profile", help="record, record_1gpu, smoke or gpu_smoke (default smoke)")
    src.add_argument("--config", help="a resolved config JSON (e.g. a run's config.json) instead of a profile")
    if run_dir:
        src.add_argument("--run-dir", help="a finished training run: its meta.json config and its artifact")
    q.add_argument("--env", action="store_true",
                   help="apply the record script's environment variables (NUM_LAYERS, SEED, DATA_PATH, ...)")
    q.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a config field (repeatable)")
    q.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")


def artifact_args(p, verb: str) -> None:
    """What the commands that score an artifact share: the config (or run folder), the artifact, data, tokenizer."""
    config_args(p, run_dir=True)
    p.add_argument("--artifact", help=f"an int6 artifact (.ptz) {verb} with the --profile/--config model")
    p.add_argument("--data", help="dataset folder (same as --set train.data_path=...)")
    p.add_argument("--tokenizer", help="tokenizer (same as --set train.tokenizer_path=...)")


def add_legality_command(sub) -> None:
    lg = sub.add_parser("legality", help="the prefix-invariance check of any variant, yours included (--plugin)")
    artifact_args(lg, "checked")
    lg.add_argument("--variants", help="comma-separated registry and plugin names, or `all` "
                                       "(default: the plugins' variants when --plugin is given, else all)")
    lg.add_argument("--plugin", action="append", metavar="FILE",
                    help="a Python file whose VARIANTS lists dyneval.variants.Variant records (repeatable)")
    lg.add_argument("--prefix", action="append", type=positive_int, metavar="P",
                    help="check with tokens after P replaced (repeatable; default: three, off every chunk boundary)")
    lg.add_argument("--quirks", help="the run's quirks for its own variants, e.g. qat_on=0,bf16_tables=0,rank_local=0")
    lg.add_argument("--virtual-ranks", type=positive_int, help="emulate K ranks (default: the profile's eval.ranks)")
    lg.add_argument("--json", metavar="FILE", help="also write the report as JSON")


def add_sweep_command(sub) -> None:
    sw = sub.add_parser("sweep", help="tune a variant's eval.* rates on the held-out tuning stream, then score the "
                                      "choice once on validation")
    sw.add_argument("--run-dir", required=True, help="a finished training run: its meta.json config and its artifact")
    sw.add_argument("--variant", required=True, help="a registry variant, e.g. dynamic_tail")
    sw.add_argument("--grid", action="append", metavar="FIELD=v1,v2,...",
                    help="an eval.* field and its values (repeatable: the cartesian product is scored)")
    sw.add_argument("--out", help="default: <run-dir>/sweep")
    sw.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override an eval.* field for every setting")
    sw.add_argument("--quirks", help="the run's quirks for its own variants, e.g. qat_on=0")
    sw.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")


def add_train_command(sub) -> None:
    t = sub.add_parser("train", help="train (also under torchrun)")
    config_args(t)
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    t.add_argument("--fresh", action="store_true",
                   help="delete the run folder's checkpoint, finished run and eval/ first (default: refuse to overwrite)")


def add_export_command(sub) -> None:
    x = sub.add_parser("export", help="re-quantize a trained run: artifact, size report, round-trip score")
    x.add_argument("run_folder", help="a training run folder (final_model.pt and meta.json or config.json)")
    x.add_argument("--bits", type=int, default=6, help="bits of the attention/MLP grid (the run: 6)")
    x.add_argument("--clip-quantile", type=float, default=None, help="int8 per-row clip (the run: 0.9999984)")
    x.add_argument("--passthrough-max-numel", type=int, default=None, help="fp16 passthrough size (the run: 65536)")
    x.add_argument("--device", choices=["cpu", "cuda"])


def add_evaluate_command(sub) -> None:
    ev = sub.add_parser("evaluate", help="score adaptation variants on one checkpoint's artifact")
    artifact_args(ev, "scored")
    ev.add_argument("--variants", default="nonoverlap,sliding", help="comma-separated; `all` for every variant")
    ev.add_argument("--quirks", help="the run's quirks for its own variants, e.g. qat_on=0,bf16_tables=0,rank_local=0")
    ev.add_argument("--virtual-ranks", type=positive_int, help="emulate K ranks (default: the profile's eval.ranks)")
    ev.add_argument("--fresh", action="store_true", help="start the results folder over instead of adding to it")
    ev.add_argument("--out", required=True, help="results folder")


def add_parity_command(sub) -> None:
    pa = sub.add_parser("parity", help="recompute a reference fixture's expected.json")
    pa.add_argument("fixture", nargs="?", help="fixture directory (settings.json, expected.json, trained.pt, ...); "
                    "default: the compact reference fixture shipped in the package")
    pa.add_argument("--write", action="store_true",
                    help="write expected.json from this library instead (a regression fixture, not the run's numbers)")


def add_reproduce_command(sub) -> None:
    r = sub.add_parser("reproduce", help="notebooks 01-04 per seed through papermill, then 05")
    r.add_argument("--profile", default="smoke")
    r.add_argument("--seeds", type=int, nargs="+", default=[42])
    r.add_argument("--out", default=None, help="default runs/reproduce/<profile>")
    r.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override for every seed")
    r.add_argument("--seed-set", action="append", metavar="SEED:FIELD=VALUE", help="override for one seed")
    r.add_argument("--figures", help="where the report writes tables and figures (default: <out>/figures; "
                   "`--figures figures` refreshes the project's committed ones)")
    r.add_argument("--data-root", default="data", help="datasets/ and tokenizers/ live under it")
    r.add_argument("--timeout", type=int, default=3600, help="seconds per notebook")
    r.add_argument("--fresh", action="store_true",
                   help="run again from scratch a complete seed whose config or artifact differs (default: refuse)")


def add_report_command(sub) -> None:
    rep = sub.add_parser("report", help="tables and figures from a reproduction folder")
    rep.add_argument("--runs", default="runs/reproduce/smoke")
    rep.add_argument("--figures", help="where tables and figures go (default: <runs>/figures)")


def add_bench_command(sub) -> None:
    b = sub.add_parser("bench", help="benchmarks that print figures")
    bsub = b.add_subparsers(dest="what", required=True)
    bt = bsub.add_parser("train", help="ms per step and tokens/s per GPU, after compilation")
    config_args(bt)
    bt.add_argument("--steps", type=int, default=10)
    be = bsub.add_parser("eval", help="windows/s of scoring passes (any variant of the registry)")
    config_args(be)
    be.add_argument("--variants", default="sliding,dynamic")
    be.add_argument("--windows", type=int, default=4096)
    bc = bsub.add_parser("compare", help="faithful vs fast in one process on this card, as ratios")
    config_args(bc)
    bc.add_argument("--steps", type=int, default=10)
    bc.add_argument("--windows", type=int, default=1024)
    bc.add_argument("--checkpoint-run", help="a training run folder: also compiled vs eager dynamic-eval bpb on it")


def add_config_command(sub) -> None:
    c = sub.add_parser("config", help="print the resolved config (what --config takes back)")
    config_args(c, run_dir=True)
    c.add_argument("--sources", action="store_true",
                   help='print {"config": ..., "sources": ...}: where each non-default value came from (--config '
                        'takes this back too)')


# Each command's parser, in the order `--help` lists them.
COMMAND_PARSERS = (add_data_command, add_sweep_command, add_train_command, add_export_command, add_evaluate_command,
                   add_legality_command, add_parity_command, add_reproduce_command, add_report_command,
                   add_bench_command, add_config_command)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m dyneval", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks of bad-input errors too")
    sub = p.add_subparsers(dest="command", required=True)
    for add_command in COMMAND_PARSERS:
        add_command(sub)
    return p


def resolved(args):
    """The config of a command, resolved the one way (config.resolve)."""
    from .config import is_run_overridable, resolve

    return resolve(args.profile or "smoke", config_file=args.config, run_dir=getattr(args, "run_dir", None),
                   overrides=args.set or [], environ=os.environ if args.env else None,
                   run_overridable=is_run_overridable)


def cmd_data(args) -> int:
    from . import corpus

    if args.source == "embedded":
        corpus.build_embedded(args.out, force=args.force)
        return 0
    data_path, tokenizer_path = args.data_path, args.tokenizer_path
    if args.env:
        data_path = data_path or os.environ.get("DATA_PATH")
        tokenizer_path = tokenizer_path or os.environ.get("TOKENIZER_PATH")
    if data_path or tokenizer_path:
        if not (data_path and tokenizer_path):
            raise ValueError("an existing copy needs both --data-path and --tokenizer-path "
                             "(or --env with DATA_PATH and TOKENIZER_PATH)")
        print(corpus.existing_copy(data_path, tokenizer_path))
    else:
        corpus.download_fineweb(args.out, args.variant, args.train_shards, tune=args.tune)
    return 0


def cmd_train(args) -> int:
    from . import distributed, files
    from .runfolder import CHECKPOINT
    from .train import claim_run_folder, train

    if args.resume and args.fresh:
        raise ValueError("give either --resume or --fresh, not both")
    cfg = resolved(args).config
    main_rank = os.environ.get("RANK", "0") == "0"
    lock = files.lock_folder(args.out) if main_rank else contextlib.nullcontext()
    try:
        with lock:  # a second train on the same folder is refused, not interleaved
            if main_rank:  # a finished run or a checkpoint is never overwritten unasked
                claim_run_folder(args.out, args.resume, args.fresh)
            train(cfg, args.out, resume=args.resume, device=args.device)
    except KeyboardInterrupt:
        print(f"interrupted: resume with the same command plus --resume (state in {Path(args.out) / CHECKPOINT})",
              file=sys.stderr)
        return 130
    finally:
        distributed.teardown()
    return 0


def cmd_export(args) -> int:
    from . import distributed, quant
    from .config import run_config
    from .export import export

    run = Path(args.run_folder)
    cfg = run_config(run, unfinished=True)
    kw = {"bits": args.bits}
    if args.clip_quantile is not None:
        kw["clip_quantile"] = args.clip_quantile
    if args.passthrough_max_numel is not None:
        kw["passthrough_max_numel"] = args.passthrough_max_numel
    try:
        export(run, cfg, quant.QuantSettings(**kw), device=args.device)
    finally:
        distributed.teardown()
    return 0


def scored_artifact(args, command: str):
    """evaluate's and legality's input: (config, run folder or None, artifact) from --run-dir or --artifact,
    with --data and --tokenizer as overrides of the data paths."""
    from .runfolder import RunFolder

    if not (args.run_dir or args.artifact):
        raise ValueError(f"{command} needs --run-dir RUN (a training run folder) or --artifact FILE")
    if args.run_dir and args.artifact:
        raise ValueError("give either --run-dir or --artifact, not both")
    args.set = (args.set or []) + [f"train.data_path={args.data}"] * bool(args.data) \
        + [f"train.tokenizer_path={args.tokenizer}"] * bool(args.tokenizer)
    cfg = resolved(args).config
    run = RunFolder(args.run_dir) if args.run_dir else None
    artifact = run.latest_artifact() if run else Path(args.artifact)  # the run's latest export
    return cfg, run, artifact


def cmd_evaluate(args) -> int:
    from . import distributed
    from .evaluate_stage import EvalOptions, evaluate_artifact
    from .runfolder import RESULTS
    from .variants import parse_quirks, parse_variants

    cfg, run, artifact = scored_artifact(args, "evaluate")
    variants = parse_variants(args.variants)
    options = EvalOptions(quirks=parse_quirks(args.quirks or ""), virtual_ranks=args.virtual_ranks, device=args.device,
                          fresh=args.fresh, qat_flag_set=run.qat_flag_set() if run else True)
    try:
        evaluate_artifact(cfg, artifact, Path(args.out), variants, options, log=lambda m: print(m, flush=True))
    except KeyboardInterrupt:
        print(f"interrupted: the variants scored are in {Path(args.out) / RESULTS}; the same command "
              f"continues with the rest", file=sys.stderr)
        return 130
    finally:
        distributed.teardown()
    return 0


def cmd_legality(args) -> int:
    from . import distributed, legality
    from .variants import EvalOptions, parse_quirks

    cfg, run, artifact = scored_artifact(args, "legality")
    plugins = [v for f in args.plugin or [] for v in legality.load_plugin(f)]
    variants = legality.select_variants(args.variants, plugins)
    qat_flag_set = run.qat_flag_set() if run else True
    try:
        options = EvalOptions(quirks=parse_quirks(args.quirks or ""), virtual_ranks=args.virtual_ranks,
                              device=args.device, qat_flag_set=qat_flag_set)
        report = legality.check_checkpoint(cfg, artifact, variants, args.prefix, options, args.json,
                                           log=lambda m: print(m, flush=True))
        if distributed.rank() == 0:
            failed = [n for n, v in report["variants"].items() if not v["ok"]]
            print(f"legality: {'PASS' if not failed else 'FAIL'}: " + (
                "every variant marked legal meets its rule (prefix-invariant unless marked score-before-update "
                "only)" if not failed else
                f"marked legal but not shown prefix-invariant: {', '.join(failed)}"))
    finally:
        distributed.teardown()
    return 0 if report["ok"] else 1


def cmd_sweep(args) -> int:
    from . import distributed, sweep

    try:
        request = sweep.SweepRequest(run_dir=args.run_dir, variant=args.variant, grid=args.grid or [], out=args.out,
                                     overrides=args.set or [], quirks=args.quirks or "", device=args.device)
        sweep.run_sweep(request, log=lambda m: print(m, flush=True))
    finally:
        distributed.teardown()
    return 0


def cmd_parity(args) -> int:
    from . import parity

    t0 = time.perf_counter()
    if args.write and not args.fixture:
        raise ValueError("parity --write: name the fixture directory to write (it never overwrites the shipped one)")
    args.fixture = args.fixture or parity.COMPACT_FIXTURE
    if args.write:
        parity.write_expected(args.fixture)
        print(f"wrote {Path(args.fixture) / 'expected.json'} from this library's numerics")
        return 0
    rep = parity.run(args.fixture)
    rep.print()
    print(f"parity on {args.fixture}: {'PASS' if rep.ok else 'FAIL'} in {time.perf_counter() - t0:.1f} s")
    return 0 if rep.ok else 1


def cmd_reproduce(args) -> int:
    from .reproduce import Reproduction, parse_seed_sets, reproduce

    asked = Reproduction(profile=args.profile, seeds=args.seeds, out=args.out or f"runs/reproduce/{args.profile}",
                         overrides=args.set or [], seed_overrides=parse_seed_sets(args.seed_set), figures=args.figures,
                         timeout=args.timeout, data_root=args.data_root, fresh=args.fresh)
    s = reproduce(asked)
    return 0 if not s["failed"] else 3


def cmd_report(args) -> int:
    from .report import build_report

    r = build_report(args.runs, args.figures or Path(args.runs) / "figures")
    print(f"report: {len(r['seeds'])} seed(s), {len(r['failed'])} failed -> {', '.join(r['tables'])}")
    for f in r["figures"]:
        print(f"  {f}")
    return 0


def cmd_bench(args) -> int:
    from . import bench

    cfg = resolved(args).config
    if args.what == "compare":
        r = bench.bench_compare(cfg, args.steps, args.windows, args.device, args.checkpoint_run,
                                log=lambda m: print(m, flush=True))
        for line in bench.compare_lines(r):
            print(line)
        print(json.dumps(r))
        return 0
    if args.what == "train":
        rows = [bench.bench_train(cfg, args.steps, args.device)]
    else:
        rows = bench.bench_eval(cfg, [v.strip() for v in args.variants.split(",")], args.windows, args.device)
    for r in rows:
        print(json.dumps(r))
    return 0


def cmd_config(args) -> int:
    r = resolved(args)
    print(json.dumps(r.describe() if args.sources else r.config.to_dict(), indent=2))
    return 0


COMMANDS = {"data": cmd_data, "train": cmd_train, "export": cmd_export, "evaluate": cmd_evaluate,
            "parity": cmd_parity, "reproduce": cmd_reproduce, "report": cmd_report, "bench": cmd_bench,
            "config": cmd_config, "legality": cmd_legality, "sweep": cmd_sweep}


# Commands that compute with torch in this process: their OpenMP wait policy follows the machine's load.
TORCH_COMMANDS = ("train", "export", "evaluate", "parity", "bench", "legality", "sweep")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("DYNEVAL_DEBUG") == "1"
    if args.command in TORCH_COMMANDS:
        from . import cpu

        chosen = cpu.choose_wait_policy()
        if chosen["omp_wait_policy"] == "PASSIVE" and chosen["source"] == "load":
            print(f"cpu: {chosen['why']}: OpenMP threads sleep between parallel regions (OMP_WAIT_POLICY=PASSIVE; "
                  f"set OMP_WAIT_POLICY=ACTIVE to keep them spinning)", flush=True)
    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS as e:
        if debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"dyneval: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
