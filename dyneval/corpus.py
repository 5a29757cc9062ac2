"""Datasets: the embedded default corpus, and the challenge's FineWeb export from the Hugging Face Hub.

Owns making and fetching data in the challenge's layout (`<root>/datasets/<name>/fineweb_*.bin`,
`<root>/tokenizers/*.model`):

- `build_embedded`: English documentation text every CPython ships (the `pydoc_data` topics and
  the standard library's module, class and function docstrings, read with `ast`, never imported),
  split into documents, a SentencePiece BPE trained with the challenge's settings (on the train
  documents only), and BOS-prefixed train/val/tune shards with a manifest. Deterministic for a given
  Python version; cached. The tune split (whole documents, held out of train, val and the tokenizer)
  is the stream `sweep` tunes adaptation rates on, so validation is scored once, never tuned on.
- `download_fineweb`: the published export (`willdepueoai/parameter-golf`, under `datasets/`):
  manifest first, then the tokenizer, every val shard and the first N train shards (and, with
  `tune=True`, the tuning shard `TUNE_SHARD`, the last train shard, which the record never reads),
  skipping files already present and verified.
"""

from __future__ import annotations

import ast
import json
import os
import random
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

from . import data, files

EMBEDDED_NAME = "embedded_sp1024"
EMBEDDED_TOKENIZER = "embedded_1024_bpe.model"
EMBEDDED_VAL_FRACTION = 0.05  # the first 5% of the (shuffled) documents are validation, as the challenge's first 50k
# The tune split: the next 5% of the shuffled documents after val, taken from what was train, so the val
# documents stay exactly the earlier format's. Same share as val, so the tuning stream is about val's size
# (~50 k tokens) and the smoke's 32,769-token cap scores the same number of tokens on both.
EMBEDDED_TUNE_FRACTION = 0.05
EMBEDDED_SHUFFLE_SEED = 1234
EMBEDDED_SHARD_TOKENS = 1_000_000
EMBEDDED_FORMAT = 3  # bump when the document split changes, so cached corpora are rebuilt (3: the tune split)
MIN_DOC_CHARS = 200  # shorter docstrings are dropped: too little text to be a document

# The challenge's tokenizer settings (REFERENCE.md, 'Data, as the challenge publishes it').
SP_SETTINGS = dict(model_type="bpe", vocab_size=1024, byte_fallback=True, split_digits=True,
                   normalization_rule_name="nmt_nfkc", add_dummy_prefix=False,
                   pad_id=0, bos_id=1, eos_id=2, unk_id=3, character_coverage=0.9995,
                   max_sentence_length=16384)

HUB_REPO = "willdepueoai/parameter-golf"
HUB_PREFIX = "datasets"
VARIANTS = {"sp1024": ("fineweb10B_sp1024", "fineweb_1024_bpe.model")}



# ----------------------------------------------------------------------------------------------
# The embedded default corpus

def _stdlib_sources() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "turtledemo", "site-packages", "dist-packages", "lib2to3", "ensurepip",
            "__pycache__", "venv"}
    sources = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).parts
        if any(part in skip or part.startswith("test_") for part in rel):
            continue
        sources.append(p)
    return sources


def _docstring_documents(path: Path) -> list[str]:
    """A module's documents: its docstring with its top-level functions', then one per class (with its methods')."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return []

    def described(node) -> str:
        doc = ast.get_docstring(node)
        return f"{node.name}\n\n{doc}" if doc and hasattr(node, "name") else (doc or "")

    funcs = (ast.FunctionDef, ast.AsyncFunctionDef)
    module = [described(tree)] + [described(n) for n in tree.body if isinstance(n, funcs)]
    docs = ["\n\n".join(p for p in module if p)]
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            parts = [described(node)] + [described(n) for n in node.body if isinstance(n, funcs)]
            docs.append("\n\n".join(p for p in parts if p))
    return docs


def embedded_documents() -> list[str]:
    """Every document, in a deterministic order (pydoc topics, then the stdlib's docstrings), shuffled."""
    from pydoc_data import topics

    docs = [topics.topics[k].strip() for k in sorted(topics.topics)]
    docs += [d for p in _stdlib_sources() for d in _docstring_documents(p)]
    docs = [d for d in docs if len(d) >= MIN_DOC_CHARS]
    random.Random(EMBEDDED_SHUFFLE_SEED).shuffle(docs)
    return docs


def split_documents(docs: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(val, tune, train): the first 5% of the shuffled documents, the next 5%, the rest. Whole documents."""
    n_val = max(1, int(len(docs) * EMBEDDED_VAL_FRACTION))
    n_tune = max(1, int(len(docs) * EMBEDDED_TUNE_FRACTION))
    return docs[:n_val], docs[n_val: n_val + n_tune], docs[n_val + n_tune:]


def _train_tokenizer(docs: list[str], model_path: Path) -> None:
    import sentencepiece as spm

    model_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "train.txt"
        text.write_text("\n".join(line for d in docs for line in d.splitlines() if line.strip()), encoding="utf-8")
        prefix = Path(tmp) / "sp"
        spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(prefix), num_threads=os.cpu_count() or 1,
                                       input_sentence_size=400_000, shuffle_input_sentence=True,
                                       minloglevel=2, **SP_SETTINGS)
        files.write_bytes(model_path, Path(str(prefix) + ".model").read_bytes())


def _encode(docs: list[str], sp) -> np.ndarray:
    ids = sp.encode(docs)
    out = []
    for seq in ids:
        out.append(data.BOS_ID)
        out.extend(seq)
    return np.asarray(out, dtype=np.uint16)


def _write_split(tokens: np.ndarray, out_dir: Path, split: str, shard_tokens: int) -> list[Path]:
    paths = []
    for i, lo in enumerate(range(0, max(len(tokens), 1), shard_tokens)):
        p = out_dir / f"fineweb_{split}_{i:06d}.bin"
        data.write_shard(p, tokens[lo: lo + shard_tokens])
        paths.append(p)
    return paths


def _manifest_matches(manifest_path: Path, root: Path) -> bool:
    try:
        m = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if (m.get("python") != sys.version.split()[0] or m.get("sp_settings") != SP_SETTINGS
            or m.get("format") != EMBEDDED_FORMAT):
        return False
    return all((root / rel).is_file() and files.sha256_file(root / rel) == h for rel, h in m.get("sha256", {}).items())


def build_embedded(root: str | Path = "data", force: bool = False, log=print) -> dict:
    """Make (or reuse) the embedded corpus under `root`; return its manifest."""
    root = Path(root)
    ds = root / "datasets" / EMBEDDED_NAME
    manifest_path = ds / "manifest.json"
    if not force and manifest_path.is_file() and _manifest_matches(manifest_path, root):
        log(f"embedded corpus: reusing {ds} (manifest matches)")
        return json.loads(manifest_path.read_text())
    t0 = time.perf_counter()
    docs = embedded_documents()
    val_docs, tune_docs, train_docs = split_documents(docs)
    tok_path = root / "tokenizers" / EMBEDDED_TOKENIZER
    _train_tokenizer(train_docs, tok_path)  # never on val or tune documents
    sp = data.load_tokenizer(tok_path)
    ds.mkdir(parents=True, exist_ok=True)
    for old in ds.glob("fineweb_*.bin"):
        old.unlink()
    train_tokens, val_tokens, tune_tokens = _encode(train_docs, sp), _encode(val_docs, sp), _encode(tune_docs, sp)
    written = [tok_path] + _write_split(train_tokens, ds, "train", EMBEDDED_SHARD_TOKENS) \
        + _write_split(val_tokens, ds, "val", EMBEDDED_SHARD_TOKENS) \
        + _write_split(tune_tokens, ds, "tune", EMBEDDED_SHARD_TOKENS)
    lut = data.build_byte_lut(tok_path, sp.vocab_size())
    import torch

    val_bytes = data.count_bytes(torch.from_numpy(val_tokens.astype(np.int64)), lut)
    manifest = {
        "name": EMBEDDED_NAME, "format": EMBEDDED_FORMAT, "python": sys.version.split()[0], "sp_settings": SP_SETTINGS,
        "docs": {"train": len(train_docs), "val": len(val_docs), "tune": len(tune_docs)},
        "tokens": {"train": int(train_tokens.size), "val": int(val_tokens.size), "tune": int(tune_tokens.size)},
        "val_bytes": val_bytes, "val_bytes_per_token": val_bytes / max(val_tokens.size - 1, 1),
        "tokenizer": str(tok_path.relative_to(root)),
        "sha256": {str(f.relative_to(root)): files.sha256_file(f) for f in written},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    files.write_json(manifest_path, manifest)
    log(f"embedded corpus: {len(docs)} docs, {train_tokens.size:,} train + {val_tokens.size:,} val + "
        f"{tune_tokens.size:,} tune tokens, "
        f"{manifest['val_bytes_per_token']:.3f} bytes/token, in {manifest['seconds']:.1f} s -> {ds}")
    return manifest


# ----------------------------------------------------------------------------------------------
# The challenge's FineWeb export

def hub_reachable(timeout: float = 5.0) -> str | None:
    """None when the Hub endpoint answers a TCP connect, else why not (so offline fails at once, no retries)."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return "HF_HUB_OFFLINE is set"
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
    except OSError as e:
        return f"{url.hostname} unreachable: {e}"
    return None


def hub_fetch(remote: str, dest: Path) -> None:
    """Download `datasets/<remote>` of the Hub dataset repository to `dest` (resumable, atomic)."""
    from huggingface_hub import hf_hub_download

    staging = dest.parent / ".download"
    staging.mkdir(parents=True, exist_ok=True)
    path = hf_hub_download(repo_id=HUB_REPO, repo_type="dataset", filename=f"{HUB_PREFIX}/{remote}",
                           local_dir=staging)
    os.replace(path, dest)


def _dataset_entry(manifest: dict, name: str) -> tuple[int, int, list[str]]:
    """(train shards available, val shards, tokenizer files) from the export's manifest."""
    entry = next((d for d in manifest.get("datasets", []) if d.get("name") == name), None)
    if entry is None:
        raise ValueError(f"manifest.json lists no dataset {name!r}")
    stats = entry.get("stats", entry)
    n_train, n_val = int(stats["files_train"]), int(stats["files_val"])
    tok_name = entry.get("tokenizer_name")
    tok = next((t for t in manifest.get("tokenizers", []) if t.get("name") == tok_name), {})
    tok_files = [tok[k] for k in ("model_path", "vocab_path", "path") if tok.get(k)]
    return n_train, n_val, tok_files


def _verified_shard(path: Path, expect: dict | None) -> bool:
    if not path.is_file():
        return False
    try:
        data.read_header(path)
    except data.ShardError:
        return False
    if expect and "bytes" in expect and path.stat().st_size != int(expect["bytes"]):
        return False
    return True


def download_fineweb(root: str | Path = "data", variant: str = "sp1024", train_shards: int = 1,
                     fetch=hub_fetch, log=print, tune: bool = False) -> dict:
    """Fetch the manifest, the tokenizer, all val shards and the first `train_shards` train shards,
    and with `tune` the tuning shard `data.FINEWEB_TUNE_SHARD` (the last train shard; `sweep` scores on it).

    Files already present and verified (shard header consistent with size; sizes from the manifest
    when it gives them) are skipped; a file that fails verification after download is removed and
    reported. `fetch(remote, dest)` is the transport (the Hub by default; tests pass a local stand-in).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: choose one of {sorted(VARIANTS)}")
    name, tok_file = VARIANTS[variant]
    root = Path(root)
    ds = root / "datasets" / name
    ds.mkdir(parents=True, exist_ok=True)
    (root / "tokenizers").mkdir(parents=True, exist_ok=True)
    manifest_path = root / "manifest.json"
    try:
        why = hub_reachable() if fetch is hub_fetch else None
        if why:
            raise ConnectionError(why)
        fetch("manifest.json", manifest_path)
    except Exception as e:  # the transport's own errors are many; all end here with one line
        raise ConnectionError(
            f"could not fetch datasets/manifest.json from the Hub dataset {HUB_REPO} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}). Offline? Download "
            f"{HUB_PREFIX}/datasets/{name}/ and {HUB_PREFIX}/tokenizers/ by hand into {ds} and {root / 'tokenizers'}, "
            f"or pass --data-path and --tokenizer-path (or --env with DATA_PATH / TOKENIZER_PATH) to an existing copy") from None
    manifest = json.loads(manifest_path.read_text())
    n_train, n_val, tok_files = _dataset_entry(manifest, name)
    if train_shards > n_train:
        raise ValueError(f"--train-shards {train_shards}: the export has only {n_train} train shards")
    sizes = manifest.get("files", {})
    todo = [(t, root / t) for t in (tok_files or [f"tokenizers/{tok_file}"])]
    todo += [(f"datasets/{name}/fineweb_val_{i:06d}.bin", ds / f"fineweb_val_{i:06d}.bin") for i in range(n_val)]
    train_names = [f"fineweb_train_{i:06d}.bin" for i in range(train_shards)]
    if tune and data.FINEWEB_TUNE_SHARD not in train_names:
        if data.FINEWEB_TUNE_SHARD not in {f"fineweb_train_{i:06d}.bin" for i in range(n_train)}:
            raise ValueError(f"--tune: the export lists only {n_train} train shards, so it has no "
                             f"{data.FINEWEB_TUNE_SHARD} to tune on")
        train_names.append(data.FINEWEB_TUNE_SHARD)
    todo += [(f"datasets/{name}/{n}", ds / n) for n in train_names]
    fetched, skipped = 0, 0
    progress = _progress(len(todo), log)
    for remote, dest in todo:
        is_shard = dest.suffix == ".bin"
        if (_verified_shard(dest, sizes.get(remote)) if is_shard else dest.is_file()):
            skipped += 1
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fetch(remote, dest)
            if is_shard and not _verified_shard(dest, sizes.get(remote)):
                bad = dest.with_name(dest.name + ".bad")
                os.replace(dest, bad)
                raise ValueError(f"{dest}: downloaded shard failed verification (header or size wrong); "
                                 f"moved to {bad.name}: run the command again")
            fetched += 1
        progress(remote)
    log(f"fineweb {variant}: {fetched} fetched, {skipped} already present -> {ds}")
    return {"dataset": str(ds), "tokenizer": str(root / (tok_files[0] if tok_files else f"tokenizers/{tok_file}")),
            "fetched": fetched, "skipped": skipped, "train_shards": train_shards, "val_shards": n_val,
            "tune_shard": data.FINEWEB_TUNE_SHARD if data.FINEWEB_TUNE_SHARD in train_names else None}


def _progress(total: int, log):
    """Plain-text progress (works under papermill and in a terminal)."""
    state = {"done": 0, "t0": time.perf_counter()}

    def tick(what: str) -> None:
        state["done"] += 1
        log(f"[{state['done']}/{total}] {what} ({time.perf_counter() - state['t0']:.0f} s)")

    return tick


def existing_copy(data_path: str | Path, tokenizer_path: str | Path) -> dict:
    """Accept a local copy: validate every shard header and the tokenizer file."""
    shards = data.shard_files(data.val_pattern(data_path)) + data.shard_files(data.train_pattern(data_path))
    for f in shards:
        data.read_header(f)
    data.load_tokenizer(tokenizer_path)
    return {"dataset": str(data_path), "tokenizer": str(tokenizer_path), "shards": len(shards)}
