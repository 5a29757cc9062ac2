"""The int6 artifact: byte compatibility with the run, round trips, safe loading, bad input."""

import io
from pathlib import Path

import pytest
import torch
import zstandard

from dyneval import quant
from dyneval.config import ModelConfig
from dyneval.model import GPT


def test_writing_the_fixture_checkpoint_gives_the_runs_artifact_byte_for_byte(fixture_dir):
    sd = torch.load(fixture_dir / "trained.pt", weights_only=True)
    assert quant.artifact_bytes(sd) == (fixture_dir / "final_model.int6.ptz").read_bytes()


def test_quantize_write_read_gives_bitwise_the_same_dequantized_tensors(tmp_path):
    cfg = ModelConfig(vocab_size=1024, num_layers=2, model_dim=256, num_heads=4, num_kv_heads=2,
                      bigram_vocab_size=512, bigram_dim=128, xsa_last_n=1)
    torch.manual_seed(0)
    m = GPT(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.03)
    sd = m.state_dict()
    tensors, meta = quant.quantize_state_dict(sd)
    direct = quant.dequantize_state_dict(tensors, meta, sd)
    quant.write_artifact(tmp_path / "a.ptz", sd)
    back = quant.load_artifact(tmp_path / "a.ptz", sd)
    assert {m if isinstance(m, str) else m["type"] for m in meta.values()} >= {"passthrough", "int6", "int8"}
    for k in sd:
        assert torch.equal(direct[k], back[k]), k
    report = quant.size_report(tmp_path / "a.ptz")
    assert report["total_bytes"] == report["model_bytes"] + report["code_bytes"] and report["under_cap"]


def test_int6_rows_use_the_fp16_scale_and_the_minus32_to_31_range():
    t = torch.randn(70000 // 64, 64) * 2
    q, s = quant.quantize_absmax(t)
    assert q.dtype == torch.int8 and s.dtype == torch.float16 and q.min() >= -32 and q.max() <= 31
    assert torch.equal(q, torch.clamp(torch.round(t / s.float()[:, None]), -32, 31).to(torch.int8))


def _bad(tmp_path, name, blob):
    p = tmp_path / name
    p.write_bytes(blob)
    return p


def test_an_artifact_that_is_not_zstd_is_refused_naming_the_file(tmp_path):
    p = _bad(tmp_path, "plain.ptz", b"PK\x03\x04 not zstd")
    with pytest.raises(ValueError, match=r"plain\.ptz: not a zstd stream"):
        quant.read_artifact(p)


def test_a_zstd_artifact_of_something_else_is_refused_naming_the_file(tmp_path):
    p = _bad(tmp_path, "junk.ptz", zstandard.ZstdCompressor().compress(b"hello"))
    with pytest.raises(ValueError, match=r"junk\.ptz: not a torch.save archive"):
        quant.read_artifact(p)
    buf = io.BytesIO()
    torch.save({"weights": {}}, buf)
    p = _bad(tmp_path, "other.ptz", zstandard.ZstdCompressor().compress(buf.getvalue()))
    with pytest.raises(ValueError, match=r"other\.ptz: not the run's artifact format"):
        quant.read_artifact(p)


def test_an_artifact_holding_pickled_code_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pwned')",))

    import pickle
    # protocol 2, torch.save's own: the refusal is tested, not torch's warning about other protocols
    payload = pickle.dumps({"w": Evil(), "m": {}}, protocol=2)
    p = _bad(tmp_path, "evil.ptz", zstandard.ZstdCompressor().compress(payload))
    with pytest.raises(ValueError, match=r"evil\.ptz"):
        quant.read_artifact(p)


def test_an_artifact_for_another_model_shape_is_refused(fixture_dir):
    cfg = ModelConfig(vocab_size=1024, num_layers=2, model_dim=320, num_heads=4, num_kv_heads=2,
                      bigram_vocab_size=512, bigram_dim=32, xsa_last_n=2)
    with pytest.raises(ValueError, match=r"final_model\.int6\.ptz: artifact does not match the model config"):
        quant.load_artifact(fixture_dir / "final_model.int6.ptz", GPT(cfg).state_dict())


def test_the_size_report_says_which_files_its_code_bytes_count(tmp_path):
    from dyneval import quant
    art = tmp_path / "a.ptz"
    art.write_bytes(b"x" * 10)
    r = quant.size_report(art)
    assert r["code_files"] and all(f.startswith("dyneval/") and f.endswith(".py") for f in r["code_files"])
    root = Path(quant.__file__).resolve().parent.parent
    assert r["code_bytes"] == sum((root / f).stat().st_size for f in r["code_files"])
    assert "77,946" in r["code_definition"]  # the run's single script, for comparison
