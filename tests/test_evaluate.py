"""The evaluator: exact scores on a model with known preferences; every benchmark loader feeds it."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from compodistill.cli import main
from compodistill.evaluate import (LlavaAnswerer, evaluate, load_records, parse_choice, record_kind,
                                   score_caption_likelihood, score_caption_matching, score_vqa, score_winoground,
                                   score_winoground_likelihood, vqa_score)


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


class Likes:
    """Caption log-likelihoods with known preferences: minus the caption's length in words, plus 1 when the caption
    has `word` and the image is white or has not and the image is black, plus `black_prior` for black images."""
    def __init__(self, word="red", black_prior=0.0): self.word, self.black_prior = word, black_prior
    def caption_logprob(self, images, captions):
        white = [im.getpixel((0, 0))[0] > 128 for im in images]
        return [-len(c.split()) + float(w == (self.word in c)) + (0.0 if w else self.black_prior)
                for w, c in zip(white, captions)]


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


def test_caption_likelihood_scores_are_exact(imgs):
    w = str(imgs / "w.png")
    recs = [dict(image=w, positive="a red circle", negative="a blue circle", category="swap_att"),   # -2 vs -3
            dict(image=w, positive="a blue square", negative="a red square", category="replace_att"),  # -3 vs -2
            dict(image=w, positive="a big red cube", negative="a green cube", category="add_att"),  # -3 vs -3: a tie
            dict(image=w, positive="red", negative="a blue circle", category="swap_att")]  # 0 vs -3
    r = score_caption_likelihood(Likes("red"), recs, batch_size=3, progress=False)
    assert (r["n"], r["accuracy"], r["mean_margin"]) == (4, 0.5, 0.75)
    assert r["per_category"] == {"add_att": 0.0, "replace_att": 0.0, "swap_att": 1.0}


def test_winoground_likelihood_scores_are_exact(imgs):
    w, k = str(imgs / "w.png"), str(imgs / "k.png")
    recs = [dict(images=[w, k], captions=["red left", "blue left"], category="r"),  # all right
            dict(images=[w, k], captions=["red", "blue up"], category="r"),  # black image: -1 vs -1, text tie
            dict(images=[w, k], captions=["blue", "green"], category="s")]  # no "red": nothing right
    r = score_winoground_likelihood(Likes("red"), recs, batch_size=5, progress=False)
    assert (r["text"], r["image"], r["group"], r["n"]) == (1 / 3, 2 / 3, 1 / 3, 3)
    assert r["per_category"]["r"] == dict(text=0.5, image=1.0, group=0.5, n=2)
    assert r["per_category"]["s"] == dict(text=0.0, image=0.0, group=0.0, n=1)
    # a prior for black images cancels in the text score (same image) but not in the image score (same caption)
    r = score_winoground_likelihood(Likes("red", black_prior=1.5), recs[:1], progress=False)
    assert (r["text"], r["image"], r["group"]) == (1.0, 0.0, 0.0)


def test_evaluate_protocols(imgs):
    cm = [dict(image=str(imgs / "w.png"), positive="a red circle", negative="a blue circle", category="swap_att")]
    r = evaluate(Likes(), cm, protocol="likelihood", progress=False)
    assert (r["kind"], r["protocol"], r["accuracy"]) == ("caption_matching", "likelihood", 1.0)
    assert evaluate(Prefers(), cm, progress=False)["protocol"] == "choice"
    vqa = [dict(image=str(imgs / "w.png"), question="q", answer="red", category="colour")]
    with pytest.raises(ValueError, match="vqa records have no likelihood protocol"):
        evaluate(Likes(), vqa, protocol="likelihood")
    with pytest.raises(ValueError, match="unknown protocol"): evaluate(Likes(), cm, protocol="ranking")


@pytest.fixture(scope="module")
def tiny_answerer():
    from compodistill.checkpoints import make_processor, word_tokenizer
    from compodistill.models import build_pair
    tok = word_tokenizer("a red blue circle square left of the above".split())
    teacher, _ = build_pair("tiny", vocab_size=len(tok), image_token_id=tok.image_token_id)
    return LlavaAnswerer(teacher, make_processor(tok, teacher.config.vision_config))


def test_caption_logprob_is_the_direct_sum_and_ignores_padding(tiny_answerer, imgs):
    a, proc = tiny_answerer, tiny_answerer.processor
    white, black = (Image.open(imgs / f).convert("RGB") for f in ("w.png", "k.png"))
    n = a.n_image_tokens
    ids = [proc.image_token_id] * n + a.tok("a red circle", add_special_tokens=False)["input_ids"] + [a.tok.eos_token_id]
    pixels = proc.image_processor(images=white, return_tensors="pt")["pixel_values"]
    with torch.no_grad(): logp = a.model(input_ids=torch.tensor([ids]), pixel_values=pixels).logits[0].float().log_softmax(-1)
    direct = sum(logp[t - 1, ids[t]].item() for t in range(n, len(ids)))  # caption words and the end token
    alone = a.caption_logprob([white], ["a red circle"])[0]
    assert alone == pytest.approx(direct, abs=1e-4)
    batch = a.caption_logprob([black, white, black], ["a blue square left of the red circle", "a red circle", "red"])
    assert batch[1] == pytest.approx(alone, abs=1e-4)
    assert batch[2] == pytest.approx(a.caption_logprob([black], ["red"])[0], abs=1e-4)


def test_eval_command_likelihood_protocol(tiny_answerer, imgs):
    from compodistill.checkpoints import save_llava
    save_llava(tiny_answerer.model, tiny_answerer.processor, imgs / "model")
    recs = [dict(id="1", image="w.png", positive="a red circle", negative="a blue circle", category="swap_att")]
    (imgs / "cr.json").write_text(json.dumps(recs))
    main(["eval", "--model", str(imgs / "model"), "--benchmark", f"world:{imgs / 'cr.json'}", "--protocol", "likelihood",
                  "--out", str(imgs / "r.json")])
    r = json.loads((imgs / "r.json").read_text())
    assert (r["kind"], r["protocol"], r["n"]) == ("caption_matching", "likelihood", 1) and "mean_margin" in r
