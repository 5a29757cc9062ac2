"""Data: the challenge's token shards, the run's token streams, and SentencePiece byte accounting.

Owns the on-disk format (`fineweb_{train,val}_NNNNNN.bin`: a 256-word little-endian int32 header
(magic 20240520, version 1, token count) then uint16 tokens), reading it memory-mapped, writing and
validating it; the training stream and the distributed loader in the run's exact order; the
validation tokens; and the bytes each target token stands for. Making or fetching a dataset lives in
`corpus.py`.
"""

from __future__ import annotations

import glob
import json
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import files

SHARD_MAGIC = 20240520  # the challenge's shard header
SHARD_VERSION = 1
HEADER_WORDS = 256
HEADER_BYTES = HEADER_WORDS * 4
BOS_ID = 1  # every document opens with BOS (pad 0 / bos 1 / eos 2 / unk 3)


class ShardError(ValueError):
    """A token shard that is not in the challenge's format."""


def read_header(path: str | Path) -> int:
    """Validate a shard's header against its size; return its token count."""
    path = Path(path)
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ShardError(f"{path}: {size} bytes is shorter than the {HEADER_BYTES}-byte shard header")
    header = np.fromfile(path, dtype="<i4", count=HEADER_WORDS)
    if int(header[0]) != SHARD_MAGIC:
        raise ShardError(f"{path}: wrong magic {int(header[0])} (expected {SHARD_MAGIC}): not a token shard")
    if int(header[1]) != SHARD_VERSION:
        raise ShardError(f"{path}: unsupported shard version {int(header[1])} (expected {SHARD_VERSION})")
    count = int(header[2])
    body = size - HEADER_BYTES
    if body % 2:
        raise ShardError(f"{path}: odd body length {body} bytes: uint16 tokens need an even length (truncated?)")
    if count < 0 or body != 2 * count:
        raise ShardError(f"{path}: header declares {count} tokens but the body holds {body // 2}: "
                         f"truncated or corrupt, download it again")
    return count


def read_shard(path: str | Path) -> np.ndarray:
    """The shard's tokens as a read-only uint16 memory map (80 shards of 100 M tokens stay on disk)."""
    count = read_header(path)
    if count == 0:
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(count,))


def write_shard(path: str | Path, tokens) -> None:
    """Write tokens (< 65,536) atomically in the challenge's format."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise ValueError(f"{path}: token ids must lie in [0, 65535] for uint16 shards")
    header = np.zeros(HEADER_WORDS, dtype="<i4")
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, tokens.size)
    with files.atomic_open(path) as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2").tobytes())


def shard_files(pattern: str) -> list[Path]:
    files = [Path(p) for p in sorted(glob.glob(pattern))]
    if not files:
        raise FileNotFoundError(f"no shards match {pattern}: run `python -m dyneval data embedded` "
                                f"or `python -m dyneval data fineweb`, or point data_path at a shard folder")
    return files


def train_pattern(data_path: str | Path) -> str:
    return str(Path(data_path) / "fineweb_train_*.bin")


def val_pattern(data_path: str | Path) -> str:
    return str(Path(data_path) / "fineweb_val_*.bin")


# The tuning stream of `sweep`, seen by neither training nor validation. The embedded corpus has a tune split
# of whole documents (corpus.py); FineWeb's export has none, so it is the last of its 80 train shards of
# 100 M tokens: the record's 5,604 steps x (786,432 + 8) tokens = 4.41 B tokens end inside shard 44
# (`shards_read`), and `TokenStream` refuses to open this one, so training can never silently read it.
FINEWEB_TUNE_SHARD = "fineweb_train_000079.bin"


def tune_pattern(data_path: str | Path) -> str:
    """The tune split's shards (`fineweb_tune_*.bin`) where the folder has them, else FineWeb's `FINEWEB_TUNE_SHARD`."""
    own = Path(data_path) / "fineweb_tune_*.bin"
    return str(own) if glob.glob(str(own)) else str(Path(data_path) / FINEWEB_TUNE_SHARD)


def tokens_per_step(train_batch_tokens: int, grad_accum_total: int) -> int:
    """Tokens the loader takes per optimizer step: each of the 8 micro-step spans (all ranks) carries one
    token more than it trains on (x and y overlap), for every world size (`DistributedTokenLoader`)."""
    return train_batch_tokens + grad_accum_total


def shards_read(shard_tokens: list[int], tokens: int) -> int:
    """How many shards (in sorted order, from the first) a stream of `tokens` tokens opens, wrapping included."""
    total = sum(shard_tokens)
    if tokens <= 0 or total <= 0:
        return 1 if shard_tokens else 0
    if tokens > total:  # it wraps: every shard is read
        return len(shard_tokens)
    return int(np.searchsorted(np.cumsum(shard_tokens), tokens, side="left")) + 1


def check_tune_unread(pattern: str, steps: int, step_tokens: int, capped: bool, log=print) -> None:
    """Refuse a training run whose `steps` would reach the tuning shard; only warn when a wall-clock cap
    (`capped`) stops it earlier (`steps` is then an upper bound; `TokenStream` still refuses on arrival)."""
    shards = shard_files(pattern)
    if FINEWEB_TUNE_SHARD not in [f.name for f in shards]:
        return
    stop = [f.name for f in shards].index(FINEWEB_TUNE_SHARD)
    opened = shards_read([read_header(f) for f in shards], steps * step_tokens)
    if opened > stop:
        msg = (f"{shards[stop]}: {steps} steps x {step_tokens:,} tokens would reach the tuning shard of `sweep` "
               f"(the loader opens {opened} of {len(shards)} shards): lower train.iterations or remove it from the train folder")
        if not capped:
            raise ValueError(msg)
        log(f"warning: {msg} (the wall-clock cap may stop training first; the loader refuses to open it)")


def check_token_ids(tokens: np.ndarray, vocab_size: int | None, path, offset: int = 0) -> None:
    """Refuse token ids the model has no embedding for (a shard made with another tokenizer)."""
    if vocab_size and tokens.size and int(tokens.max()) >= vocab_size:
        i = int(np.argmax(tokens >= vocab_size))
        raise ShardError(f"{path}: token id {int(tokens[i])} at position {offset + i} is outside the vocabulary "
                         f"of {vocab_size} pieces: the shards were made with another tokenizer")


def load_validation_tokens(pattern: str, seq_len: int, max_tokens: int = 0,
                           vocab_size: int | None = None) -> torch.Tensor:
    """All val shards concatenated, capped at `max_tokens` (0: all), trimmed to k*seq_len + 1 tokens.

    With `vocab_size`, an id outside the vocabulary is refused naming its shard.
    """
    shards = []
    for f in shard_files(pattern):
        shards.append(np.asarray(read_shard(f)))
        check_token_ids(shards[-1], vocab_size, f)
    tokens = np.concatenate(shards)
    if max_tokens:
        tokens = tokens[:max_tokens]
    usable = ((tokens.size - 1) // seq_len) * seq_len
    if usable <= 0:
        raise ValueError(f"{pattern}: {tokens.size} validation tokens are too few for seq_len {seq_len}")
    return torch.from_numpy(tokens[: usable + 1].astype(np.int64))


class TokenStream:
    """The run's training stream: shards in sorted order, read front to back, wrapping around.

    With `vocab_size`, every id taken is checked against the vocabulary (a shard is too large to scan
    up front; a batch costs a max).
    """

    def __init__(self, pattern: str, vocab_size: int | None = None):
        self.files = shard_files(pattern)
        self.vocab_size = vocab_size
        for f in self.files:
            if read_header(f) == 0:  # take() would wrap around empty shards forever
                raise ShardError(f"{f}: the training shard holds no tokens: remove it or make the data again")
        self.file_idx, self.pos = 0, 0
        self._refuse_tune_shard()
        self.tokens = read_shard(self.files[0])

    def _refuse_tune_shard(self) -> None:
        if self.files[self.file_idx].name == FINEWEB_TUNE_SHARD:
            raise ShardError(f"{self.files[self.file_idx]}: the training stream reached the tuning shard of `sweep`, "
                             f"which training must never read: lower train.iterations or remove it from the train folder")

    def state(self) -> dict:
        return {"file_idx": self.file_idx, "pos": self.pos}

    def load_state(self, state: dict) -> None:
        self.file_idx, self.pos = int(state["file_idx"]), int(state["pos"])
        self._refuse_tune_shard()
        self.tokens = read_shard(self.files[self.file_idx])

    def take(self, n: int) -> torch.Tensor:
        chunks, remaining = [], n
        while remaining > 0:
            avail = self.tokens.size - self.pos
            if avail <= 0:
                self.file_idx = (self.file_idx + 1) % len(self.files)
                self._refuse_tune_shard()
                self.tokens, self.pos = read_shard(self.files[self.file_idx]), 0
                continue
            k = min(remaining, avail)
            chunks.append(np.asarray(self.tokens[self.pos: self.pos + k]))
            check_token_ids(chunks[-1], self.vocab_size, self.files[self.file_idx], self.pos)
            self.pos += k
            remaining -= k
        return torch.from_numpy(np.concatenate(chunks).astype(np.int64))


class DistributedTokenLoader:
    """Each micro-step takes the next (local+1)*world tokens; rank r gets the r-th span of local+1.

    x = span[:-1], y = span[1:], shaped (-1, seq_len). With world W and accumulation 8/W, the spans
    of one step are the same tokens in the same order for every W (the run's loader).
    """

    def __init__(self, pattern: str, rank: int, world_size: int, device: torch.device | str = "cpu",
                 vocab_size: int | None = None):
        self.stream = TokenStream(pattern, vocab_size)
        self.rank, self.world_size, self.device = rank, world_size, device

    def next_batch(self, local_tokens: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        span = local_tokens + 1
        chunk = self.stream.take(span * self.world_size)
        local = chunk[self.rank * span: (self.rank + 1) * span]
        x = local[:-1].reshape(-1, seq_len)
        y = local[1:].reshape(-1, seq_len)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


# ----------------------------------------------------------------------------------------------
# Byte accounting

@dataclass(frozen=True)
class ByteLUT:
    """Per-piece byte counts from the SentencePiece model (the run's build_sentencepiece_luts).

    bytes(target t | previous p) = base[t] + (leading_space[t] and not boundary[p]): the UTF-8 length
    of t's piece without its leading "▁" (byte-fallback pieces 1; control, unknown, unused 0), plus
    the space the "▁" stands for unless the previous token is a control/unknown/unused piece.
    """

    base: torch.Tensor  # (V,) int64
    leading_space: torch.Tensor  # (V,) bool
    boundary: torch.Tensor  # (V,) bool

    def target_bytes(self, prev: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Bytes per target token (same shape as target), float64."""
        b = self.base[target] + (self.leading_space[target] & ~self.boundary[prev]).long()
        return b.double()

    def to(self, device) -> "ByteLUT":
        return ByteLUT(self.base.to(device), self.leading_space.to(device), self.boundary.to(device))


def check_tokenizer(tokenizer_path: str | Path, data_path: str | Path, run_meta: str | Path | None = None) -> str:
    """Refuse a tokenizer other than the one the data (or the run) was made with; return its sha256.

    The same vocabulary size is no proof: another tokenizer of 1024 pieces gives the same loss and a
    wrong bpb. The dataset's `manifest.json` (corpus.py writes one) records its tokenizer's sha256;
    where there is none (the challenge's own download), training records the hash in the run's
    `meta.json` (`tokenizer_sha256`), and evaluation of that run checks it there.
    """
    tokenizer_path = Path(tokenizer_path)
    if not tokenizer_path.is_file():
        load_tokenizer(tokenizer_path)  # its one-line "not found"
    sha = files.sha256_file(tokenizer_path)
    recorded = []
    manifest = Path(data_path) / "manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        if m.get("tokenizer") in m.get("sha256", {}):
            recorded.append((manifest, m["tokenizer"], m["sha256"][m["tokenizer"]]))
    if run_meta is not None and Path(run_meta).is_file():
        m = json.loads(Path(run_meta).read_text())
        if m.get("tokenizer_sha256"):
            recorded.append((Path(run_meta), m.get("config", {}).get("train", {}).get("tokenizer_path"),
                             m["tokenizer_sha256"]))
    for source, name, want in recorded:
        if sha != want:
            raise ValueError(f"{tokenizer_path} (sha256 {sha[:12]}) is not the tokenizer {source} records "
                             f"({name}, sha256 {want[:12]}): its bpb would be wrong; pass the matching tokenizer")
    return sha


class ValidationInputs(typing.NamedTuple):
    """What training's periodic validation and the export's round-trip score with (rank-local batch size)."""

    lut: ByteLUT
    tokens: torch.Tensor
    batch_seqs: int  # sequences per batch on each rank
    tokenizer_sha256: str


def validation_inputs(train_cfg, vocab_size: int, device, world_size: int) -> ValidationInputs:
    """The validation stream at `train_seq_len` under training's settings (`train.val_batch_size_tokens` split
    over ranks and accumulation steps, as the run's eval_val); the tokenizer is checked against the data's."""
    tc = train_cfg
    lut = build_byte_lut(tc.tokenizer_path, vocab_size).to(device)  # vocab size first
    sha = check_tokenizer(tc.tokenizer_path, tc.data_path)  # another tokenizer gives a wrong bpb
    tokens = load_validation_tokens(val_pattern(tc.data_path), tc.train_seq_len, tc.max_val_tokens, vocab_size)
    batch_seqs = max(1, tc.val_batch_size_tokens // (world_size * tc.grad_accum_steps(world_size) * tc.train_seq_len))
    return ValidationInputs(lut, tokens.to(device), batch_seqs, sha)


def load_tokenizer(path: str | Path):
    import sentencepiece as spm

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tokenizer model not found: run `python -m dyneval data embedded` "
                                f"or pass --tokenizer-path")
    sp = spm.SentencePieceProcessor()
    try:
        sp.load(str(path))
    except Exception as e:  # sentencepiece raises OSError/RuntimeError with a C++ message
        raise ValueError(f"{path}: not a SentencePiece model ({str(e).splitlines()[0][:120]})") from None
    return sp


def build_byte_lut(tokenizer_path: str | Path, vocab_size: int) -> ByteLUT:
    """The byte LUT; refuses a tokenizer whose vocabulary differs from the model's."""
    sp = load_tokenizer(tokenizer_path)
    n = int(sp.vocab_size())
    if n != vocab_size:
        raise ValueError(f"{tokenizer_path}: tokenizer has {n} pieces but the model's vocab_size is {vocab_size}: "
                         f"use the tokenizer the shards were made with")
    base = np.zeros(n, dtype=np.int64)
    space = np.zeros(n, dtype=bool)
    boundary = np.ones(n, dtype=bool)
    for i in range(n):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith("\u2581"):
            space[i] = True
            piece = piece[1:]
        base[i] = len(piece.encode("utf-8"))
    return ByteLUT(torch.from_numpy(base), torch.from_numpy(space), torch.from_numpy(boundary))


def count_bytes(tokens: torch.Tensor, lut: ByteLUT) -> float:
    """Bytes of every target of a token stream (targets tokens[1:], contexts tokens[:-1])."""
    return float(lut.target_bytes(tokens[:-1], tokens[1:]).sum())
