"""The evaluator: exact scores on a model with known preferences; every benchmark loader feeds it."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from compodistill.cli import main
from compodistill.data import DataError
from compodistill.evaluate import (LlavaAnswerer, check_images, evaluate, load_records, record_kind,
                                   score_caption_likelihood, score_caption_margin, score_caption_matching, score_mme,
                                   score_pope, score_vqa, score_winoground, score_winoground_likelihood)
from compodistill.scoring import mme_answer, normalize_answer, parse_choice, pope_answer, vqa_score, yes_no_metrics


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
    """Caption token log-probabilities with known preferences: -1 per word, plus 1 on the first when the caption
    has `word` and the image is white or has not and the image is black, plus `black_prior` for black images."""
    def __init__(self, word="red", black_prior=0.0): self.word, self.black_prior = word, black_prior
    def caption_token_logprobs(self, images, captions):
        white = [im.getpixel((0, 0))[0] > 128 for im in images]
        return [[-1.0 + float(w == (self.word in c)) + (0.0 if w else self.black_prior)] + [-1.0] * (len(c.split()) - 1)
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
    # the overall and the per-order figures are means over the two categories; the record mean is named as such
    assert (r["accuracy_true_as_A"], r["accuracy_true_as_B"], r["accuracy"]) == (0.5, 0.5, 0.5)
    assert r["accuracy_records"] == 2 / 3 and r["unparsed"] == 0
    assert r["per_category"] == {"replace_att": 0.0, "swap_att": 1.0}
    assert r["per_category_detail"]["swap_att"] == dict(true_as_A=1.0, true_as_B=1.0, unparsed_share=0.0)


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
    assert r["accuracy"] == pytest.approx((1 + 1 + 0 + 4 / 9) / 4)  # 2 of 3 references: (1/3 + 1/3 + 2/3) / 3
    assert vqa_score("2", ["2"] * 10) == 1.0 and vqa_score("an apple", "apple") == 1.0


def test_parse_and_kind():
    assert parse_choice("B") == "B" and parse_choice("a") == "A" and parse_choice("a red circle") is None
    assert record_kind({"image": "x", "question": "q", "answer": "a", "metric": "pope"}) == "pope"
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        record_kind({"id": "q", "image": "x", "question": "q", "answer": "a", "metric": "bleu"})
    assert record_kind({"image": "x", "question": "q", "answer": "a"}) == "vqa"
    with pytest.raises(ValueError, match="matches no evaluation schema"): record_kind({"image": "x"})
    with pytest.raises(ValueError, match="several schemas"):
        evaluate(Prefers(), [{"image": "x", "question": "q", "answer": "a"}, {"images": ["a", "b"], "captions": ["c", "d"]}])


def test_benchmark_loaders_feed_the_evaluator(tmp_path):
    """SugarCrepe (caption matching) and Winoground (pairs) records, as loaded by 01a_benchmarks, are scored."""
    import test_benchmarks as tb
    from compodistill.vqa import load_benchmark
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
    r = score_caption_likelihood(Likes("red"), recs, batch_size=3, progress=False, normalization="sum")
    assert (r["n"], r["accuracy_records"], r["mean_margin"], r["margins"]) == (4, 0.5, 0.75, [1.0, -1.0, 0.0, 3.0])
    assert r["per_category"] == {"add_att": 0.0, "replace_att": 0.0, "swap_att": 1.0}
    assert r["accuracy"] == pytest.approx(1 / 3)  # the unweighted mean over the three categories
    # per token: the sum's tie (-3 over 4 tokens against -3 over 3) becomes a win for the longer caption
    mean = score_caption_likelihood(Likes("red"), recs, progress=False)
    assert mean["normalization"] == "mean" and mean["margins"] == pytest.approx([1 / 3, -1 / 3, 0.25, 1.0])
    assert mean["by_normalization"]["sum"]["margins"] == r["margins"]


def test_winoground_likelihood_scores_are_exact(imgs):
    w, k = str(imgs / "w.png"), str(imgs / "k.png")
    recs = [dict(images=[w, k], captions=["red left", "blue left"], category="r"),  # all right
            dict(images=[w, k], captions=["red", "blue up"], category="r"),  # black image: -1 vs -1, text tie
            dict(images=[w, k], captions=["blue", "green"], category="s")]  # no "red": nothing right
    r = score_winoground_likelihood(Likes("red"), recs, batch_size=5, progress=False, normalization="sum")
    assert (r["text"], r["image"], r["group"], r["n"]) == (1 / 3, 2 / 3, 1 / 3, 3)
    assert r["per_category"]["r"] == dict(text=0.5, image=1.0, group=0.5, n=2)
    assert r["per_category"]["s"] == dict(text=0.0, image=0.0, group=0.0, n=1)
    # a prior for black images cancels in the text score (same image) but not in the image score (same caption)
    r = score_winoground_likelihood(Likes("red", black_prior=1.5), recs[:1], progress=False, normalization="sum")
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
    with pytest.raises(ValueError, match="vqa records have no margin protocol; theirs: choice"):
        evaluate(Likes(), vqa, protocol="margin")


@pytest.fixture(scope="module")
def tiny_answerer():
    from compodistill.checkpoints import make_processor, word_tokenizer
    from compodistill.models import build_pair
    tok = word_tokenizer("a b red blue circle square left of the above".split())
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
    alone = a.caption_token_logprobs([white], ["a red circle"])[0]
    assert len(alone) == 4 and sum(alone) == pytest.approx(direct, abs=1e-4)
    batch = a.caption_token_logprobs([black, white, black], ["a blue square left of the red circle", "a red circle", "red"])
    assert batch[1] == pytest.approx(alone, abs=1e-4)
    assert batch[2] == pytest.approx(a.caption_token_logprobs([black], ["red"])[0], abs=1e-4)


def test_eval_command_likelihood_protocol(tiny_answerer, imgs):
    from compodistill.checkpoints import save_llava
    save_llava(tiny_answerer.model, tiny_answerer.processor, imgs / "model")
    recs = [dict(id="1", image="w.png", positive="a red circle", negative="a blue circle", category="swap_att")]
    (imgs / "cr.json").write_text(json.dumps(recs))
    main(["eval", "--model", str(imgs / "model"), "--benchmark", f"world:{imgs / 'cr.json'}", "--protocol", "likelihood",
                  "--out", str(imgs / "r.json")])
    r = json.loads((imgs / "r.json").read_text())
    assert (r["kind"], r["protocol"], r["n"]) == ("caption_matching", "likelihood", 1) and "mean_margin" in r


# ---------------------------------------------------------------- reading replies as the benchmarks' authors do

def test_the_article_is_not_option_a():
    assert parse_choice("A cat sits on the plant.") is None
    assert [parse_choice(r) for r in ("A", "(A)", "A.", "A)", "Answer: A", "The answer is B.", "a", "b", "(B) a dog")] \
        == ["A", "A", "A", "A", "A", "B", "A", "B", "B"]
    assert [parse_choice(r) for r in ("A man rides a horse", "Both", "B is wrong, it is A", "")] == [None] * 4


class Echoes:
    "Replies with the (A) caption, as a sentence: SugarCrepe's true captions mostly start with 'A '."
    def generate(self, images, prompts): return [p.split("(A) ")[1].split("\n")[0] for p in prompts]


def test_sugarcrepe_reply_that_is_a_caption_is_unparsed_not_a(tmp_path):
    import test_benchmarks as tb
    from compodistill.benchmarks import load_sugarcrepe
    tb.write(tmp_path / "swap_obj.json", {"0": {"filename": "000000000139.jpg", "caption": "A cat sits on the plant.",
                                                "negative_caption": "A plant sits on the cat."}})
    tb.img(tmp_path / "val2017/000000000139.jpg")
    r = evaluate(Echoes(), list(load_sugarcrepe(tmp_path, categories="swap_obj")), progress=False)
    assert (r["accuracy"], r["accuracy_true_as_A"], r["unparsed"], r["unparsed_share"]) == (0.0, 0.0, 2, 1.0)
    assert r["per_category_detail"]["swap_obj"]["unparsed_share"] == 1.0


def test_sugarcrepe_overall_is_the_unweighted_subset_mean(tmp_path):
    import test_benchmarks as tb
    from compodistill.vqa import load_benchmark
    tb.sugarcrepe(tmp_path)  # swap_obj: 1 pair with "dog" in both captions; add_att: 2 pairs
    recs = list(load_benchmark("sugarcrepe", tmp_path, categories="swap_obj,add_att"))
    # Prefers("red") picks the option with "red", else (B): swap_obj right once in two orders; add_att's first pair
    # ("a car" / "a red car") wrong in both orders, its second right once
    r = evaluate(Prefers("red"), recs, progress=False)
    assert r["per_category"] == {"add_att": 0.25, "swap_obj": 0.5}
    assert r["accuracy"] == (0.25 + 0.5) / 2
    assert r["accuracy_records"] == pytest.approx((2 * 0.25 + 0.5) / 3)


def test_pope_reading_and_metrics():
    assert [pope_answer(r) for r in ("Yes, there is a snowboard in the image.", "No.", "There is no dog.",
                                     "It is not there.", "Nope", "", "Yes. No.")] == \
        ["yes", "no", "no", "no", "yes", "yes", "yes"]
    m = yes_no_metrics(["yes", "yes", "no", "no"], ["yes", "no", "no", "yes"])
    assert (m["accuracy"], m["precision"], m["recall"], m["f1"], m["yes_ratio"]) == (0.5, 0.5, 0.5, 0.5, 0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (1, 1, 1, 1)
    assert yes_no_metrics(["no"], ["yes"])["precision"] != yes_no_metrics(["no"], ["yes"])["precision"]  # NaN


class SaysYes:
    "Answers every question with a sentence that says yes."
    def generate(self, images, prompts): return ["Yes, there is a thing in the image." for _ in prompts]


def test_pope_always_yes_has_recall_one_and_precision_the_positive_share(tmp_path):
    import test_benchmarks as tb
    from compodistill.vqa import load_pope
    tb.pope(tmp_path)   # COCO JSON lines: random 1 yes + 1 no; popular 1 no
    tb.img(tmp_path / "images/2405722.jpg")
    tb.write(tmp_path / "seem/gqa/gqa_pope_seem_adversarial.json", [
        {"question_id": k, "image": "2405722.jpg", "text": f"Is there a {o} in the image?", "label": lab}
        for k, (o, lab) in enumerate([("bird", "yes"), ("wall", "yes"), ("dog", "no"), ("car", "no")], 1)])
    coco = evaluate(SaysYes(), list(load_pope(tmp_path, splits="random")), progress=False)
    gqa = evaluate(SaysYes(), list(load_pope(tmp_path, source="gqa", splits="adversarial")), progress=False)
    for r, positive_share in ((coco, 0.5), (gqa, 0.5)):
        split = next(iter(r["per_category"].values()))
        assert r["kind"] == "pope"
        assert (split["recall"], split["precision"], split["yes_ratio"]) == (1.0, positive_share, 1.0)
        assert split["f1"] == pytest.approx(2 * positive_share / (1 + positive_share))
    both = score_pope(SaysYes(), list(load_pope(tmp_path, splits=["random", "popular"])), progress=False)
    assert both["per_category"]["popular"]["precision"] == 0.0   # its one question is a no
    assert both["per_category"]["popular"]["recall"] != both["per_category"]["popular"]["recall"]  # no yes labels: NaN
    assert both["per_category"]["popular"]["accuracy"] == 0.0 and both["per_category"]["random"]["accuracy"] == 0.5


class Says:
    "Answers every question with `reply`."
    def __init__(self, reply): self.reply = reply
    def generate(self, images, prompts): return [self.reply for _ in prompts]


def test_textvqa_vqa_accuracy_on_llava_files(tmp_path):
    from compodistill.vqa import load_textvqa
    import test_benchmarks as tb
    tb.textvqa(tmp_path)
    recs = list(load_textvqa(tmp_path))
    assert evaluate(Says("Nikon."), recs[:1], progress=False)["accuracy"] == pytest.approx(0.9)  # 3 of 10 say nikon
    assert evaluate(Says("dakota"), recs[:1], progress=False)["accuracy"] == 1.0
    assert normalize_answer("The Two  Dogs!") == "2 dogs" and vqa_score("two dogs", ["2 dogs"] * 10) == 1.0


def test_mme_scores_per_subtask_on_release_layout(tmp_path):
    from compodistill.vqa import load_mme
    import test_benchmarks as tb
    tb.mme(tmp_path)  # existence: 2 images; landmark: 1 image (images/ + questions_answers_YN/)
    r = evaluate(Says("Yes"), list(load_mme(tmp_path, subtasks="existence,landmark")), progress=False)
    assert r["kind"] == "mme"
    assert r["per_category"]["existence"] == dict(acc=0.5, acc_plus=0.0, score=50.0, n=4, other=0)
    assert (r["perception"], r["cognition"]) == (100.0, 0)
    assert [mme_answer(x) for x in ("Yes", "no.", "Not sure", "I think yes")] == ["yes", "no", "no", "other"]


# ---------------------------------------------------------------- the option margin and the length bias

class LikesA:
    "Option logits: 3 for A whatever it says, plus 1 for the option that says `word`."
    def __init__(self, word="red"): self.word = word
    def option_logits(self, images, prompts):
        first = [self.word in p.split("(A) ")[1].split("\n")[0] for p in prompts]
        return [[3.0 + f, float(not f)] for f in first]


def test_option_margin_cancels_a_letter_bias(imgs):
    recs = [dict(image=str(imgs / "w.png"), positive="a red circle", negative="a blue circle", category="swap_att"),
            dict(image=str(imgs / "w.png"), positive="a blue cube", negative="a red cube", category="swap_att")]
    r = score_caption_margin(LikesA(), recs, progress=False)
    assert (r["accuracy"], r["margins"]) == (0.5, [2.0, -2.0])  # (4 - 0) - (3 - 1); the bias of 3 cancels
    assert evaluate(LikesA(), recs, protocol="margin", progress=False)["protocol"] == "margin"


def test_option_logits_are_the_last_position_logits(tiny_answerer, imgs):
    from compodistill.checkpoints import CHOICE_PROMPT
    from compodistill.data import chat_batch
    a = tiny_answerer
    white = Image.open(imgs / "w.png").convert("RGB")
    prompt = CHOICE_PROMPT.format(a="a red circle", b="a blue circle")
    with torch.no_grad(): last = a.model(**chat_batch(a.processor, [white], [prompt])).logits[0, -1].float()
    assert a.option_ids == [a.tok.convert_tokens_to_ids("a"), a.tok.convert_tokens_to_ids("b")]
    got = a.option_logits([white, white], [prompt, "a red circle"])
    assert got[0] == pytest.approx(last[a.option_ids].tolist(), abs=1e-4)
    assert len(got) == 2 and len(got[1]) == 2


def test_sum_favours_the_shorter_caption_on_add_pairs(tmp_path):
    """An untrained model on SugarCrepe-format add_* pairs (negatives one word longer): the sum is always right."""
    from compodistill.benchmarks import load_sugarcrepe
    from compodistill.checkpoints import make_processor, word_tokenizer
    from compodistill.models import build_pair
    import test_benchmarks as tb
    tb.img(tmp_path / "val2017/1.jpg")
    words, things = ["red", "blue", "big", "old"], ["circle", "square", "cube"]
    tb.write(tmp_path / "add_att.json", {str(k): {"filename": "1.jpg", "caption": f"a {t}", "negative_caption": f"a {w} {t}"}
                                         for k, (w, t) in enumerate((w, t) for w in words for t in things)})
    tok = word_tokenizer(words + things + ["a"])
    model, _ = build_pair("tiny", vocab_size=len(tok), image_token_id=tok.image_token_id)
    r = evaluate(LlavaAnswerer(model, make_processor(tok, model.config.vision_config)),
                 list(load_sugarcrepe(tmp_path, categories="add_att")), protocol="likelihood", progress=False)
    assert r["by_normalization"]["sum"]["accuracy"] == 1.0
    assert r["normalization"] == "mean" and r["accuracy"] < 1.0 and len(r["margins"]) == 12


# ---------------------------------------------------------------- bad images name their record

@pytest.mark.parametrize("content", [b"", "truncated"])
def test_a_bad_image_names_its_record_before_scoring(imgs, content):
    if content == "truncated":
        Image.new("RGB", (64, 64), "red").save(imgs / "full.jpg")
        content = (imgs / "full.jpg").read_bytes()[:200]
    (imgs / "bad.jpg").write_bytes(content)
    recs = [dict(id="ok", image=str(imgs / "w.png"), positive="a red circle", negative="a blue circle", category="c"),
            dict(id="swap_obj/7", image=str(imgs / "bad.jpg"), positive="a red circle", negative="a blue circle",
                 category="c")]
    class Never:
        def generate(self, images, prompts): raise AssertionError("scoring started before the images were checked")
    with pytest.raises(DataError, match=r"record 'swap_obj/7': corrupt image: .*bad.jpg cannot be decoded"):
        evaluate(Never(), recs, progress=False)
    with pytest.raises(DataError, match=r"record 'w1': missing image"):
        check_images([dict(id="w1", images=[str(imgs / "w.png"), str(imgs / "nope.png")])])


# ---------------------------------------------------------------- issue 26: a benchmark user can trust

class SeesWhitespace:
    "Blind: picks the option whose caption has surrounding whitespace, else A."
    def generate(self, images, prompts):
        options = [p.split("\n(A) ", 1)[1].rsplit("\nAnswer with", 1)[0].split("\n(B) ", 1) for p in prompts]
        return ["B" if b != b.strip() and a == a.strip() else "A" for a, b in options]


def sugarcrepe_with_whitespace(root):
    """SugarCrepe's published format (per-category files keyed by index) with its whitespace pattern: some positives
    start with a space or end with a newline or spaces, no negative does."""
    import test_benchmarks as tb
    tb.img(root / "val2017/000000000139.jpg")
    tb.img(root / "val2017/000000000285.jpg", "blue")
    tb.write(root / "swap_att.json", {
        "0": {"filename": "000000000139.jpg", "caption": " A white dog lying on a brown couch.",
              "negative_caption": "A brown dog lying on a white couch."},
        "1": {"filename": "000000000285.jpg", "caption": "A big bear sitting in the green grass.\n",
              "negative_caption": "A green bear sitting in the big grass."},
        "2": {"filename": "000000000139.jpg", "caption": "A small cat on a red chair.",
              "negative_caption": "A red cat on a small chair."}})
    tb.write(root / "replace_rel.json", {
        "5": {"filename": "000000000285.jpg", "caption": "A man riding a wave on a surfboard.  ",
              "negative_caption": "A man standing next to a wave on a surfboard."},
        "9": {"filename": "000000000139.jpg", "caption": "A cat sleeping under a table.",
              "negative_caption": "A cat sleeping on a table."}})


def test_blind_whitespace_answerer_scores_exactly_50_on_the_published_format(tmp_path):
    from compodistill.vqa import load_benchmark
    sugarcrepe_with_whitespace(tmp_path)
    recs = list(load_benchmark("sugarcrepe", tmp_path, categories="swap_att,replace_rel"))
    assert all(r["positive"] == r["positive"].strip() for r in recs)
    assert 100 * evaluate(SeesWhitespace(), recs, progress=False)["accuracy"] == 50.0
    files = {c: json.loads((tmp_path / f"{c}.json").read_text()) for c in ("swap_att", "replace_rel")}
    verbatim = [dict(r, positive=files[r["category"]][r["id"].split("/")[1]]["caption"]) for r in recs]
    assert evaluate(SeesWhitespace(), verbatim, progress=False)["accuracy"] > 0.5   # what reading verbatim gave


def test_world_file_text_is_stripped_and_ids_default_to_the_item(imgs):
    (imgs / "q.json").write_text(json.dumps([dict(image="w.png", question=" what colour ?\n", answer="red", category="c")]))
    r = load_records(f"world:{imgs / 'q.json'}")[0]
    assert (r["question"], r["id"], r["image"]) == ("what colour ?", "q/0", str(imgs / "w.png"))


GOOD = dict(id="q1", image="w.png", question="what colour ?", answer="red", category="colour")
BAD_FILES = {
    "no_category": ([{k: v for k, v in GOOD.items() if k != "category"}], "item 0: vqa record 'q1': missing field 'category'"),
    "numeric_answer": ([dict(GOOD, answer=3)], "item 0: vqa record 'q1': field 'answer' must be a non-empty str | list[str], got 3"),
    "negative_null": ([dict(id="c1", image="w.png", positive="a red circle", negative=None, category="a")],
                      "item 0: caption_matching record 'c1': field 'negative' must be a non-empty str, got None"),
    "no_negative": ([dict(id="c1", image="w.png", positive="a red circle", category="a")],
                    "item 0: caption_matching record 'c1': missing field 'negative'"),
    "bad_metric": ([dict(GOOD, metric="bleu")], "item 0: record 'q1': unknown metric 'bleu'"),
    "empty": (None, "no_such_records"),
}


def _eval_fails(capsys, argv, message):
    "`compodistill eval` with `argv` (model folder absent) exits 2 with one line containing `message`."
    with pytest.raises(SystemExit) as e: main(["eval", "--model", "/nonexistent/model", *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and message in err, err
    return err.strip()


@pytest.mark.parametrize("name", BAD_FILES)
def test_eval_names_a_bad_world_record_before_the_model_loads(imgs, capsys, name):
    records, message = BAD_FILES[name]
    (imgs / "bad.json").write_text("" if records is None else json.dumps(records))
    if records is None: message = f"{imgs / 'bad.json'}: no records"
    err = _eval_fails(capsys, ["--benchmark", f"world:{imgs / 'bad.json'}"], message)
    assert str(imgs / "bad.json") in err


@pytest.mark.parametrize("argv, message", [
    (["--limit", "0"], "--limit must be at least 1, got 0"),
    (["--limit", "-1"], "--limit must be at least 1, got -1"),
    (["--limit-per-category", "0"], "--limit-per-category must be at least 1, got 0"),
    (["--out", "{dir}"], "is a folder; give a file name"),
    (["--out", "{dir}/good.json/r.json"], "good.json is a file, not a folder"),
    (["--out", "{dir}/good.json"], "pass --overwrite to replace it"),
    (["--pope-source", "gqa"], "--pope-source does not apply to world:"),
    (["--question-file", "q.jsonl"], "--question-file does not apply to world:"),
    (["--protocol", "margin"], "vqa records have no margin protocol"),
])
def test_eval_refuses_bad_options_before_the_model_loads(imgs, capsys, argv, message):
    (imgs / "good.json").write_text(json.dumps([GOOD]))
    argv = [a.replace("{dir}", str(imgs)) for a in argv]
    _eval_fails(capsys, ["--benchmark", f"world:{imgs / 'good.json'}", *argv], message)
    assert (imgs / "good.json").read_text() == json.dumps([GOOD])  # --out naming it did not replace it


def test_eval_options_reach_the_loaders(tmp_path, capsys):
    import test_benchmarks as tb
    tb.sugarcrepe(tmp_path / "sc")
    _eval_fails(capsys, ["--benchmark", "sugarcrepe", "--root", str(tmp_path / "sc"), "--pope-source", "gqa"],
                "--pope-source does not apply to sugarcrepe; it does to pope")
    _eval_fails(capsys, ["--benchmark", "pope", "--root", str(tmp_path), "--pope-source", "gqa"],
                "gqa_pope_seem_adversarial.json: no such file")   # the GQA set's file, looked for before the model
    _eval_fails(capsys, ["--benchmark", "pope", "--root", str(tmp_path), "--question-file", "llava_pope_test.jsonl"],
                "llava_pope_test.jsonl: no such file")
    with pytest.raises(SystemExit) as e: main(["eval", "--model", "m", "--benchmark", "pope", "--pope-source", "vqa"])
    assert e.value.code == 2 and "invalid choice: 'vqa'" in capsys.readouterr().err


def test_short_answer_line_and_strict_json_end_to_end(tiny_answerer, tmp_path, capsys):
    """A POPE split with no 'yes' label (recall undefined) through `compodistill eval`: the questions carry LLaVA-1.5's
    line, the file and the summary line are strict JSON with null where a metric is undefined, and say where."""
    import test_benchmarks as tb
    from compodistill.checkpoints import save_llava
    from compodistill.vqa import SHORT_ANSWER
    tb.pope(tmp_path)   # popular: one question, labelled no
    tb.write(tmp_path / "coco/coco_pope_adversarial.json", [{"question_id": 1, "image": "COCO_val2014_000000000042.jpg",
                                                            "text": "Is there a cat in the image?", "label": "no"}], lines=True)
    save_llava(tiny_answerer.model, tiny_answerer.processor, tmp_path / "model")
    main(["eval", "--model", str(tmp_path / "model"), "--benchmark", "pope", "--root", str(tmp_path),
          "--categories", "popular", "--out", str(tmp_path / "r.json"), "--device", "cpu"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1], parse_constant=lambda c: pytest.fail(c))
    r = json.loads((tmp_path / "r.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the file"))
    assert r["per_category"]["popular"]["recall"] is None and "per_category.popular.recall" in r["undefined"]
    assert summary["undefined"] == r["undefined"] and summary["recall"] is None
    assert r["prompt_suffix"] == SHORT_ANSWER
