"""The evaluator: exact scores on a model with known preferences; every benchmark loader feeds it."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from compodistill.evaluate import (evaluate, load_records, parse_choice, record_kind, score_caption_matching,
                                   score_vqa, score_winoground, vqa_score)


class Prefers:
    """Picks the option whose caption contains `word` (else B); says yes to white images for captions with `word` and
    to black images for the others; answers `answer` to questions."""
    def __init__(self, word="red", answer="red"): self.word, self.answer = word, answer
    def generate(self, images, prompts):
        out = []
        for p in prompts:
            if "(A)" not in p: out.append(self.answer); continue
            a = p.split("(A) ")[1].split("\n")[0]
            out.append("(A)" if self.word in a else "(B)")
        return out
    def yes_probability(self, images, prompts):
        return [0.8 if (im.getpixel((0, 0))[0] > 128) == (self.word in p) else 0.2 for im, p in zip(images, prompts)]


@pytest.fixture
def imgs(tmp_path):
    Image.new("RGB", (8, 8), "white").save(tmp_path / "w.png")
    Image.new("RGB", (8, 8), "black").save(tmp_path / "k.png")
    return tmp_path


def test_caption_matching_scores_are_exact(imgs):
    recs = [dict(image=str(imgs / "w.png"), positive="a red circle", negative="a blue circle", category="swap_att"),
            dict(image=str(imgs / "w.png"), positive="a blue square", negative="a red square", category="replace_att"),
            dict(image=str(imgs / "k.png"), positive="a red cube", negative="a green cube", category="swap_att")]
    r = score_caption_matching(Prefers("red"), recs, batch_size=4, progress=False)
    assert (r["accuracy_true_as_A"], r["accuracy_true_as_B"], r["accuracy"]) == (2 / 3, 2 / 3, 2 / 3)
    assert r["per_category"] == {"replace_att": 0.0, "swap_att": 1.0}


def test_winoground_scores_are_exact(imgs):
    w, k = str(imgs / "w.png"), str(imgs / "k.png")
    recs = [dict(images=[w, k], captions=["red left", "blue left"], category="r"),
            dict(images=[k, w], captions=["blue up", "red up"], category="r"),
            dict(images=[w, k], captions=["blue", "green"], category="s")]
    r = score_winoground(Prefers("red"), recs, batch_size=3, progress=False)
    # text: every pair has an image whose true caption lacks "red", which the model never picks -> 0
    # image: "red" captions pick the white image, others the black one -> pairs 0 and 1 right, pair 2 wrong
    assert (r["text"], r["image"], r["group"], r["n"]) == (0.0, 2 / 3, 0.0, 3)
    assert r["per_category"]["s"]["image"] == 0.0 and r["per_category"]["r"]["image"] == 1.0


def test_vqa_scores_and_normalisation(imgs):
    recs = [dict(image=str(imgs / "w.png"), question="q", answer=a, category=c)
            for a, c in (("red", "colour"), ("Red.", "colour"), ("blue", "colour"), (["red", "red", "x"], "multi"))]
    r = score_vqa(Prefers(answer="the red"), recs, progress=False)
    assert r["accuracy"] == pytest.approx((1 + 1 + 0 + 2 / 3) / 4)
    assert vqa_score("2", ["2"] * 10) == 1.0 and vqa_score("an apple", "apple") == 1.0


def test_parse_and_kind():
    assert parse_choice("B") == "B" and parse_choice("a") == "A" and parse_choice("a red circle") is None
    assert record_kind({"image": "x", "question": "q", "answer": "a"}) == "vqa"
    with pytest.raises(ValueError, match="matches no evaluation schema"): record_kind({"image": "x"})
    with pytest.raises(ValueError, match="several schemas"):
        evaluate(Prefers(), [{"image": "x", "question": "q", "answer": "a"}, {"images": ["a", "b"], "captions": ["c", "d"]}])


def test_benchmark_loaders_feed_the_evaluator(tmp_path):
    """SugarCrepe (caption matching) and Winoground (pairs) records, as loaded by 01a_benchmarks, are scored."""
    import test_benchmarks as tb
    from compodistill.benchmarks import load_benchmark
    tb.sugarcrepe(tmp_path / "sc")
    tb.winoground(tmp_path / "wg", n=2)
    sc = list(load_benchmark("sugarcrepe", tmp_path / "sc", categories=("swap_obj", "add_att")))
    wg = list(load_benchmark("winoground", tmp_path / "wg"))
    r_sc, r_wg = evaluate(Prefers("dog"), sc, progress=False), evaluate(Prefers(), wg, progress=False)
    assert r_sc["kind"] == "caption_matching" and r_sc["n"] == 3
    assert r_sc["per_category"]["swap_obj"] == 0.5      # "dog" is in both captions: always (A), right once in two orders
    assert r_wg["kind"] == "winoground" and r_wg["n"] == 2


def test_world_file_and_eval_command(imgs):
    recs = [dict(id="1", image="w.png", positive="a red circle", negative="a blue circle", category="swap_att")]
    (imgs / "cr.json").write_text(json.dumps(recs))
    loaded = load_records(f"world:{imgs / 'cr.json'}")
    assert loaded[0]["image"] == str(imgs / "w.png")
    with pytest.raises(FileNotFoundError, match="no such evaluation file"): load_records(f"world:{imgs / 'nope.json'}")
    with pytest.raises(ValueError, match="needs --root"): load_records("sugarcrepe")
