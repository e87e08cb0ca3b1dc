"""The misalignment analysis and `compodistill analyze` on tiny checkpoints saved to disk."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from compodistill.attention import middle_band
from compodistill.misalignment import analyze_attention, attention_profiles, depth_matched, layer_similarity, read_records
from compodistill.checkpoints import make_processor, save_llava, word_tokenizer
from compodistill.models import build_llava, build_pair, preset_config

WORDS = "what colour is the circle square left red blue ?".split()


def _records(folder: Path, n=5, side=32):
    folder.mkdir(parents=True, exist_ok=True)
    recs = []
    for i in range(n):
        Image.new("RGB", (side, side), ["red", "blue"][i % 2]).save(folder / f"{i}.png")
        recs.append({"id": f"q{i}", "image": f"{i}.png", "question": "what colour is the circle ?"})
    (folder / "eval.json").write_text(json.dumps(recs))
    return folder / "eval.json"


@pytest.fixture
def pair():
    tok = word_tokenizer(WORDS)
    teacher, student = build_pair("tiny", vocab_size=len(tok), image_token_id=tok.image_token_id)
    return teacher, student, make_processor(tok, teacher.config.vision_config)


def test_profiles_are_distributions_over_patches(pair, tmp_path):
    teacher, _, proc = pair
    recs = read_records(_records(tmp_path), limit=3)
    enc = proc(images=[Image.open(r["image"]) for r in recs], return_tensors="pt", padding=True,
               text=[proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r["question"]}]}], add_generation_prompt=True) for r in recs])
    for queries in ("text", "visual"):
        prof, mass = attention_profiles(teacher, enc, queries)
        assert prof.shape == (6, 3, 16) and mass.shape == (6, 3)
        assert torch.allclose(prof.sum(-1), mass, atol=1e-5) and (mass > 0).all() and (mass <= 1 + 1e-5).all()


def test_identical_student_has_similarity_one_everywhere(pair, tmp_path):
    teacher, _, proc = pair
    recs = read_records(_records(tmp_path))
    twin = build_pair("tiny", vocab_size=teacher.config.text_config.vocab_size,
                      image_token_id=teacher.config.image_token_id)[0]
    rep = analyze_attention(teacher, {"twin": twin}, proc, recs, batch_size=2, progress=False)
    s = rep["students"]["twin"]
    for m in ("cosine", "pearson"):
        assert torch.allclose(torch.tensor(s["matrix"][m]).diagonal(), torch.ones(6), atol=1e-4)
        assert abs(s["band_similarity"][m] - 1) < 1e-4
    assert len(s["band_cosine_per_sample"]) == 5 and rep["teacher"]["band_layers"] == middle_band(6)


def test_similarity_and_depth_matching_by_hand():
    t = torch.tensor([[[1., 0, 0]], [[0, 1, 0]], [[1, 1, 0]]])        # 3 teacher layers, 1 sample
    s = torch.tensor([[[1., 0, 0]], [[1, 1, 0]]])                      # 2 student layers
    sim = layer_similarity(t, s)[..., 0]
    assert torch.allclose(sim, torch.tensor([[1, 2 ** -.5], [0, 2 ** -.5], [2 ** -.5, 1]]))
    assert depth_matched(sim).tolist() == [1.0, 1.0]                   # student 0 ↔ teacher 0, student 1 ↔ teacher 2
    with pytest.raises(ValueError, match="measure must be one of"): layer_similarity(t, s, "kl")
    with pytest.raises(ValueError, match="need 0 <= lo < hi <= 1"): middle_band(10, .7, .3)


def test_analysis_refuses_samples_without_image(pair):
    teacher, _, proc = pair
    enc = proc.tokenizer(["what colour is the circle ?"], return_tensors="pt")
    with pytest.raises(ValueError, match="needs an image"): attention_profiles(teacher, dict(enc), "text")


def test_read_records_errors_name_file_and_record(tmp_path):
    data = _records(tmp_path, n=2)
    (tmp_path / "1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"record 'q1': image .*1.png not found"): read_records(data)
    (tmp_path / "bad.jsonl").write_text('{"id": "x", "image": "0.png"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: record 'x' has no string field 'question'"):
        read_records(tmp_path / "bad.jsonl")


def _cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(Path(sys.executable).parent / "compodistill"), "analyze", *args],
                          capture_output=True, text=True, env=env, timeout=1800)


def test_analyze_command_writes_report_and_figures(pair, tmp_path):
    teacher, student, proc = pair
    save_llava(teacher, proc, tmp_path / "t"); save_llava(student, proc, tmp_path / "s")
    data = _records(tmp_path / "data")
    r = _cli("--teacher", str(tmp_path / "t"), "--student", f"kd={tmp_path / 's'}", "--data", str(data),
             "--out", str(tmp_path / "out"), "--batch-size", "2")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["n_samples"] == 5 and rep["students"]["kd"]["layers"] == 4
    for f in ("depth_curves.png", "matrix_kd.png", "attention_maps.png"):
        assert (tmp_path / "out" / f).stat().st_size > 1000


def test_analyze_command_refuses_incompatible_pair(pair, tmp_path):
    teacher, _, proc = pair
    tok = proc.tokenizer
    other = build_llava(preset_config("small", "student", vocab_size=len(tok), image_token_id=tok.image_token_id))
    save_llava(teacher, proc, tmp_path / "t")
    save_llava(other, make_processor(tok, other.config.vision_config), tmp_path / "s")
    r = _cli("--teacher", str(tmp_path / "t"), "--student", f"x={tmp_path / 's'}", "--data",
             str(_records(tmp_path / "data")), "--out", str(tmp_path / "out"))
    assert r.returncode != 0 and "visual tokens per image: teacher 16 != student 64" in r.stderr
