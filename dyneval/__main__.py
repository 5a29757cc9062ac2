"""Command line: `python -m dyneval {data,train,evaluate,parity,reproduce,report,bench,config}`.

Thin `main()`s over library calls; every error the library raises for bad input is printed as one
line (`dyneval: error: ...`) with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

STAGES = {"train": "train", "evaluate": "ablation", "parity": "parity", "reproduce": "reproduce", "report": "report",
          "bench": "bench"}


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


def build_parser() -> argparse.ArgumentParser:
    """Every option must differ from torchrun's and from their abbreviations: torchrun parses the whole
    command line first (`--run` once stopped it: "ambiguous option: --run could match --run-path")."""
    p = Parser(prog="python -m dyneval", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("data", help="make or fetch a dataset in the challenge's layout")
    dsub = d.add_subparsers(dest="source", required=True)
    e = dsub.add_parser("embedded", help="the embedded default corpus (CPython's documentation text)")
    e.add_argument("--out", default="data", help="data root (datasets/ and tokenizers/ go under it)")
    e.add_argument("--force", action="store_true", help="rebuild even when the manifest matches")
    f = dsub.add_parser("fineweb", help="the challenge's FineWeb export from the Hugging Face Hub")
    f.add_argument("--variant", default="sp1024")
    f.add_argument("--train-shards", type=int, default=1)
    f.add_argument("--out", default="data")
    f.add_argument("--data-path", help="use an existing local copy of the shard folder instead")
    f.add_argument("--tokenizer-path", help="with --data-path: the tokenizer of that copy")

    def profile_args(q):
        q.add_argument("--profile", default="smoke", help="record, record_1gpu or smoke")
        q.add_argument("--config", help="a resolved config JSON (e.g. a run's meta.json 'config') instead of a profile")
        q.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a config field (repeatable)")
        q.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")

    t = sub.add_parser("train", help="train (also under torchrun)")
    profile_args(t)
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")

    ev = sub.add_parser("evaluate", help="score adaptation variants on one checkpoint's artifact")
    src = ev.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-dir", help="a training run folder (its meta.json config and artifact)")
    src.add_argument("--artifact", help="an int6 artifact (.ptz); give the model through --profile/--config")
    profile_args(ev)
    ev.add_argument("--data", help="dataset folder (default: the config's data_path)")
    ev.add_argument("--tokenizer", help="tokenizer (default: the config's tokenizer_path)")
    ev.add_argument("--variants", default="nonoverlap,sliding", help="comma-separated; `all` for every variant")
    ev.add_argument("--quirks", help="the run's quirks for its own variants, e.g. qat_on=0,bf16_tables=0,rank_local=0")
    ev.add_argument("--virtual-ranks", type=positive_int, help="emulate K ranks' slices and rank-local adaptation")
    ev.add_argument("--out", required=True, help="results folder")

    pa = sub.add_parser("parity", help="recompute a reference fixture's expected.json")
    pa.add_argument("fixture", help="fixture directory (settings.json, expected.json, trained.pt, ...)")
    pa.add_argument("--write", action="store_true",
                    help="write expected.json from this library instead (a regression fixture, not the run's numbers)")

    r = sub.add_parser("reproduce", help="notebooks 01-04 per seed through papermill, then 05")
    r.add_argument("--profile", default="smoke")
    r.add_argument("--seeds", type=int, nargs="+", default=[42])
    r.add_argument("--out", default="runs/reproduce")
    r.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override for every seed")
    r.add_argument("--seed-set", action="append", metavar="SEED:FIELD=VALUE", help="override for one seed")
    r.add_argument("--figures", default="figures", help="where the report writes figures and tables")
    r.add_argument("--data-root", default="data", help="datasets/ and tokenizers/ live under it")
    r.add_argument("--timeout", type=int, default=3600, help="seconds per notebook")
    r.add_argument("--fresh", action="store_true",
                   help="run again from scratch a complete seed whose config or artifact differs (default: refuse)")

    rep = sub.add_parser("report", help="tables and figures from a reproduction folder")
    rep.add_argument("--runs", default="runs/reproduce")
    rep.add_argument("--figures", default="figures")

    b = sub.add_parser("bench", help="GPU benchmarks that print figures")
    bsub = b.add_subparsers(dest="what", required=True)
    bt = bsub.add_parser("train", help="ms per step and tokens/s per GPU, after compilation")
    profile_args(bt)
    bt.add_argument("--steps", type=int, default=10)
    be = bsub.add_parser("eval", help="windows/s of scoring passes")
    profile_args(be)
    be.add_argument("--variants", default="sliding,dynamic")
    be.add_argument("--windows", type=int, default=4096)

    c = sub.add_parser("config", help="print a profile's resolved config as JSON")
    profile_args(c)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "data":
            from . import corpus
            if args.source == "embedded":
                corpus.build_embedded(args.out, force=args.force)
                return 0
            import os
            from .config import from_env
            env = from_env(os.environ)  # the run's DATA_PATH / TOKENIZER_PATH
            data_path = args.data_path or env.get("train.data_path")
            tokenizer_path = args.tokenizer_path or env.get("train.tokenizer_path")
            if data_path or tokenizer_path:
                if not (data_path and tokenizer_path):
                    raise ValueError("an existing copy needs both --data-path and --tokenizer-path "
                                     "(or DATA_PATH and TOKENIZER_PATH)")
                print(corpus.existing_copy(data_path, tokenizer_path))
            else:
                corpus.download_fineweb(args.out, args.variant, args.train_shards)
            return 0
        if args.command in STAGES:  # each stage module's main(args)
            return importlib.import_module(f"dyneval.{STAGES[args.command]}").main(args)
        if args.command == "config":
            import json
            from .config import load
            print(json.dumps(load(args.profile, args.set or [], args.config).to_dict(), indent=2))
            return 0
    except (ValueError, OSError, RuntimeError) as e:  # bad input or environment; other exceptions are bugs
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"dyneval: error: {msg}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
