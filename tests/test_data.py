"""Shards, streams, byte accounting, the embedded corpus and the FineWeb downloader."""

import json
import shutil
import time

import numpy as np
import pytest
import torch

from dyneval import corpus, data


def test_write_then_read_round_trips(tmp_path):
    tok = np.random.default_rng(0).integers(0, 1024, 5000).astype(np.uint16)
    data.write_shard(tmp_path / "fineweb_val_000000.bin", tok)
    assert np.array_equal(np.asarray(data.read_shard(tmp_path / "fineweb_val_000000.bin")), tok)


def _shard(tmp_path, name="fineweb_train_000000.bin", n=100):
    p = tmp_path / name
    data.write_shard(p, np.arange(n) % 1000)
    return p


@pytest.mark.parametrize("corruption,message", [
    ("magic", "wrong magic"), ("version", "unsupported shard version"), ("count", "header declares"),
    ("odd", "odd body length"), ("short", "shorter than"),
])
def test_each_shard_corruption_is_refused_with_a_message_naming_the_file(tmp_path, corruption, message):
    p = _shard(tmp_path)
    raw = bytearray(p.read_bytes())
    if corruption == "magic":
        raw[0:4] = np.int32(123).tobytes()
    elif corruption == "version":
        raw[4:8] = np.int32(2).tobytes()
    elif corruption == "count":
        raw[8:12] = np.int32(101).tobytes()
    elif corruption == "odd":
        raw += b"\x00"
    elif corruption == "short":
        raw = raw[:100]
    p.write_bytes(bytes(raw))
    with pytest.raises(data.ShardError, match=f"{p.name}.*{message}"):
        data.read_shard(p)


def test_an_empty_glob_names_the_pattern(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no shards match .*fineweb_train_\*\.bin"):
        data.TokenStream(data.train_pattern(tmp_path))


def test_the_training_stream_reads_shards_in_order_and_wraps_around(tmp_path):
    data.write_shard(tmp_path / "fineweb_train_000000.bin", np.arange(10))
    data.write_shard(tmp_path / "fineweb_train_000001.bin", np.arange(100, 105))
    s = data.TokenStream(data.train_pattern(tmp_path))
    got = s.take(23).tolist()
    assert got == list(range(10)) + list(range(100, 105)) + list(range(8))


def test_two_ranks_spans_concatenate_to_the_one_rank_stream(tmp_path):
    data.write_shard(tmp_path / "fineweb_train_000000.bin", np.arange(3000) % 997)
    pat = data.train_pattern(tmp_path)
    one = data.DistributedTokenLoader(pat, 0, 1)
    two = [data.DistributedTokenLoader(pat, r, 2) for r in range(2)]
    for _ in range(3):  # one step: world 1 takes 2 micro-steps, world 2 one micro-step per rank
        ones = [one.next_batch(64, 32) for _ in range(2)]
        twos = [loader.next_batch(64, 32) for loader in two]
        for (x1, y1), (x2, y2) in zip(ones, twos):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_validation_tokens_are_trimmed_to_a_multiple_of_seq_len_plus_one(fixture_dir):
    v = data.load_validation_tokens(str(fixture_dir / "fineweb_val_*.bin"), 128)
    assert (v.numel() - 1) % 128 == 0


def test_byte_accounting_on_the_fixture_val_shard_matches_the_run(fixture_dir):
    exp = json.loads((fixture_dir / "expected.json").read_text())
    v = data.load_validation_tokens(str(fixture_dir / "fineweb_val_*.bin"), 128)
    lut = data.build_byte_lut(fixture_dir / "tokenizer.model", 1024)
    assert data.count_bytes(v, lut) == exp["byte_count_val"]


def test_the_embedded_corpus_has_the_challenge_layout_and_is_cached(corpus_root):
    ds = corpus_root / "datasets" / "embedded_sp1024"
    m = json.loads((ds / "manifest.json").read_text())
    assert m["tokens"]["train"] > 300_000 and m["tokens"]["val"] > 20_000
    val = np.asarray(data.read_shard(ds / "fineweb_val_000000.bin"))
    assert val[0] == data.BOS_ID and (val == data.BOS_ID).sum() == m["docs"]["val"]
    sp = data.load_tokenizer(corpus_root / "tokenizers" / "embedded_1024_bpe.model")
    assert sp.vocab_size() == 1024 and sp.id_to_piece(1) == "<s>" and sp.pad_id() == 0 and sp.unk_id() == 3
    before = (ds / "fineweb_val_000000.bin").stat().st_mtime_ns
    t0 = time.perf_counter()
    again = corpus.build_embedded(corpus_root, log=lambda *_: None)
    assert again == m and (ds / "fineweb_val_000000.bin").stat().st_mtime_ns == before
    assert time.perf_counter() - t0 < 5


class StandInHub:
    """A local stand-in for the Hub's `datasets/` folder, with the export's manifest layout."""

    def __init__(self, root, n_train=4, n_val=1, tokenizer=None):
        self.root = root
        self.calls = []
        ds = root / "datasets" / "fineweb10B_sp1024"
        ds.mkdir(parents=True)
        (root / "tokenizers").mkdir()
        shutil.copyfile(tokenizer, root / "tokenizers" / "fineweb_1024_bpe.model")
        for i in range(n_train):
            data.write_shard(ds / f"fineweb_train_{i:06d}.bin", np.arange(1000 + i) % 1024)
        for i in range(n_val):
            data.write_shard(ds / f"fineweb_val_{i:06d}.bin", np.arange(500) % 1024)
        (root / "manifest.json").write_text(json.dumps({
            "datasets": [{"name": "fineweb10B_sp1024", "tokenizer_name": "sp_bpe_1024",
                          "stats": {"files_train": n_train, "files_val": n_val}}],
            "tokenizers": [{"name": "sp_bpe_1024", "model_path": "tokenizers/fineweb_1024_bpe.model"}]}))
        self.fail_after = None

    def fetch(self, remote, dest):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise ConnectionError("connection reset")
        self.calls.append(remote)
        shutil.copyfile(self.root / remote, dest)


def test_the_downloader_follows_the_manifest_and_resumes_after_a_partial_download(tmp_path, fixture_dir):
    hub = StandInHub(tmp_path / "hub", n_train=4, tokenizer=fixture_dir / "tokenizer.model")
    hub.fail_after = 3  # manifest, tokenizer, val shard, then the connection drops
    with pytest.raises(ConnectionError):
        corpus.download_fineweb(tmp_path / "data", train_shards=2, fetch=hub.fetch, log=lambda *_: None)
    hub.fail_after, hub.calls = None, []
    got = corpus.download_fineweb(tmp_path / "data", train_shards=2, fetch=hub.fetch, log=lambda *_: None)
    assert got["skipped"] == 2 and got["fetched"] == 2  # tokenizer and val kept; two train shards fetched
    assert hub.calls == ["manifest.json", "datasets/fineweb10B_sp1024/fineweb_train_000000.bin",
                         "datasets/fineweb10B_sp1024/fineweb_train_000001.bin"]
    shards = sorted(p.name for p in (tmp_path / "data" / "datasets" / "fineweb10B_sp1024").glob("*.bin"))
    assert shards == ["fineweb_train_000000.bin", "fineweb_train_000001.bin", "fineweb_val_000000.bin"]
    with pytest.raises(ValueError, match="only 4 train shards"):
        corpus.download_fineweb(tmp_path / "data", train_shards=9, fetch=hub.fetch, log=lambda *_: None)


def test_the_downloader_refuses_a_shard_whose_header_or_size_is_wrong(tmp_path, fixture_dir):
    hub = StandInHub(tmp_path / "hub", n_train=1, tokenizer=fixture_dir / "tokenizer.model")
    bad = hub.root / "datasets" / "fineweb10B_sp1024" / "fineweb_train_000000.bin"
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"fineweb_train_000000\.bin: downloaded shard failed verification"):
        corpus.download_fineweb(tmp_path / "data", train_shards=1, fetch=hub.fetch, log=lambda *_: None)
    # a corrupt local file is not trusted: it is fetched again
    hub2 = StandInHub(tmp_path / "hub2", n_train=1, tokenizer=fixture_dir / "tokenizer.model")
    local = tmp_path / "data2" / "datasets" / "fineweb10B_sp1024"
    local.mkdir(parents=True)
    (local / "fineweb_train_000000.bin").write_bytes(b"garbage")
    got = corpus.download_fineweb(tmp_path / "data2", train_shards=1, fetch=hub2.fetch, log=lambda *_: None)
    assert "datasets/fineweb10B_sp1024/fineweb_train_000000.bin" in hub2.calls and got["fetched"] == 3


def test_offline_the_real_downloader_fails_at_once_with_one_line_saying_what_to_do(tmp_path):
    from conftest import run_cli
    t0 = time.perf_counter()
    r = run_cli("data", "fineweb", "--out", tmp_path, env={"HF_HUB_OFFLINE": "1"}, timeout=120)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "willdepueoai/parameter-golf" in err[0] and "--data-path" in err[0]
    assert time.perf_counter() - t0 < 60


def test_an_existing_local_copy_is_accepted_through_the_run_environment_variables_with_env(corpus_root, tmp_path):
    from conftest import run_cli
    ds = corpus_root / "datasets" / "embedded_sp1024"
    tok = corpus_root / "tokenizers" / "embedded_1024_bpe.model"
    r = run_cli("data", "fineweb", "--env", env={"DATA_PATH": str(ds), "TOKENIZER_PATH": str(tok)})
    assert r.returncode == 0 and "'shards': 2" in r.stdout, r.stderr
    bad = tmp_path / "copy"
    shutil.copytree(ds, bad)
    (bad / "fineweb_val_000000.bin").write_bytes(b"\x00" * 2000)
    r = run_cli("data", "fineweb", "--data-path", bad, "--tokenizer-path", tok)
    assert r.returncode == 2 and "fineweb_val_000000.bin: wrong magic" in r.stderr


def test_the_fineweb_download_fetches_the_challenges_80_train_shards_by_default():
    from dyneval.__main__ import build_parser
    assert build_parser().parse_args(["data", "fineweb"]).train_shards == 80
