"""VQAv2 and VizWiz: their published files, written here, load as VQA records; VQA accuracy on them is what the
annotators' counts give by hand; bad input names the file, the record and the field."""
import json

import pytest

from compodistill.benchmarks import BenchmarkFormatError, MissingImagesError
from compodistill.evaluate import evaluate, load_records
from compodistill.vqa import load_benchmark, load_vizwiz, load_vqav2
from test_benchmarks import img, records, write

SUFFIX = "\nAnswer the question using a single word or phrase."
INSUFFICIENT = "\nWhen the provided information is insufficient, respond with 'Unanswerable'." + SUFFIX


class Answers:
    "Replies by the question's first line (the prompt without LLaVA's instructions)."
    def __init__(self, replies): self.replies = replies
    def generate(self, images, prompts): return [self.replies[p.split("\n")[0]] for p in prompts]


# ---------------------------------------------------------------- VQAv2

def answers(*counts):
    "VQAv2's answer objects: `counts` are (answer, how many annotators gave it)."
    flat = [a for a, k in counts for _ in range(k)]
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(flat)]


VQAV2 = [  # question_id, image_id, question, answers, answer_type
    (458752000, 458752, "What is this photo taken looking through?", answers(("net", 8), ("netting", 2)), "other"),
    (458752001, 458752, "Is the player catching the ball?", answers(("yes", 10)), "yes/no"),
    (262146000, 262146, "How many people are there?", answers(("2", 7), ("two", 2), ("3", 1)), "number"),
    (262146001, 262146, "How many bats are there?", answers(("1", 2), ("2", 8)), "number")]


def vqav2(root, split="val2014"):
    "The official question and annotation files of `split` and its COCO images."
    paths = {iid: img(root / split / f"COCO_{split}_{iid:012d}.jpg") for iid in (458752, 262146)}
    write(root / f"v2_OpenEnded_mscoco_{split}_questions.json", {
        "info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": split,
        "questions": [{"image_id": iid, "question": q, "question_id": qid} for qid, iid, q, _, _ in VQAV2]})
    write(root / f"v2_mscoco_{split}_annotations.json", {
        "info": {}, "license": {}, "data_subtype": split, "data_type": "mscoco", "annotations": [
            {"question_type": "what", "multiple_choice_answer": a[0]["answer"], "answers": a, "image_id": iid,
             "answer_type": t, "question_id": qid} for qid, iid, _, a, t in VQAV2]})
    return paths


def test_vqav2_official_files(tmp_path):
    paths = vqav2(tmp_path)
    ds = load_vqav2(tmp_path)
    assert records(ds)[0] == {"id": "458752000", "image": paths[458752], "question": VQAV2[0][2],
                              "answer": ["net"] * 8 + ["netting"] * 2, "category": "other"}
    assert ds["category"] == ["other", "yes/no", "number", "number"]
    assert [len(a) for a in ds["answer"]] == [10] * 4


def test_vqav2_llava_question_file(tmp_path):
    paths = vqav2(tmp_path)
    write(tmp_path / "llava_vqav2_mscoco_val2014.jsonl", [
        {"question_id": 262146001, "image": "COCO_val2014_000000262146.jpg", "text": VQAV2[3][2] + SUFFIX,
         "category": "default"}], lines=True)
    assert records(load_vqav2(tmp_path, question_file="llava_vqav2_mscoco_val2014.jsonl")) == [
        {"id": "262146001", "image": paths[262146], "question": VQAV2[3][2] + SUFFIX,
         "answer": ["1"] * 2 + ["2"] * 8, "category": "number"}]


def test_vqav2_accuracy_by_hand(tmp_path):
    """VQA accuracy is min(h/3, 1) over the 10 leave-one-out sets of 9, h the matching answers in the set:
    h = 2 of 10 → (2·1/3 + 8·2/3)/10 = 0.6; 'Two' normalises to '2', so 9 of 10 match → 1.0; 'No' → 0."""
    vqav2(tmp_path)
    model = Answers({VQAV2[0][2]: "Netting.", VQAV2[1][2]: "No", VQAV2[2][2]: "Two", VQAV2[3][2]: "1"})
    r = evaluate(model, load_records("vqav2", str(tmp_path)), progress=False)
    assert r["kind"] == "vqa" and r["n"] == 4
    assert r["per_category"] == pytest.approx({"other": 0.6, "yes/no": 0.0, "number": (1.0 + 0.6) / 2})
    assert r["accuracy"] == pytest.approx((0.6 + 0.0 + 1.0 + 0.6) / 4)   # the mean over questions, as VQA's evaluator


def test_vqav2_errors(tmp_path):
    vqav2(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"v2_mscoco_test-dev2015_annotations.json: no such annotation file; "
                                                r"the answers of VQAv2's and VizWiz's test splits are not public"):
        load_vqav2(tmp_path, split="test-dev2015")
    write(tmp_path / "llava_other.jsonl", [{"question_id": 5, "image": "a.jpg", "text": "?", "category": "d"}], lines=True)
    with pytest.raises(BenchmarkFormatError, match=r"llava_other.jsonl, line 1: question_id '5' has no annotation in "
                                                   r".*v2_mscoco_val2014_annotations.json"):
        load_vqav2(tmp_path, question_file="llava_other.jsonl")
    qfile = tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json"
    q = json.loads(qfile.read_text())
    q["questions"].append({"image_id": 458752, "question": "Why?", "question_id": 1})
    write(qfile, q)
    with pytest.raises(BenchmarkFormatError, match=r"questions.json, question 4: question_id '1' has no annotation"):
        load_vqav2(tmp_path)
    q["questions"][4] = {"image_id": "458752", "question": "Why?", "question_id": 1}
    write(qfile, q)
    with pytest.raises(BenchmarkFormatError, match=r"questions.json, question 4: field 'image_id' must be a non-empty int"):
        load_vqav2(tmp_path)
    write(qfile, q["questions"])
    with pytest.raises(BenchmarkFormatError, match="expected a JSON object with a 'questions' list"):
        load_vqav2(tmp_path)
    afile = tmp_path / "v2_mscoco_val2014_annotations.json"
    a = json.loads(afile.read_text())
    del a["annotations"][1]["answers"][3]["answer"]
    write(afile, a)
    with pytest.raises(BenchmarkFormatError, match=r"annotations.json, annotation 1, answer 3: missing field 'answer'"):
        load_vqav2(tmp_path, question_file="llava_other.jsonl")
    del a["annotations"][1]["answer_type"]
    a["annotations"][1]["answers"][3]["answer"] = "yes"
    write(afile, a)
    with pytest.raises(BenchmarkFormatError, match=r"annotations.json, annotation 1: missing field 'answer_type'"):
        load_vqav2(tmp_path, question_file="llava_other.jsonl")


def test_vqav2_missing_images(tmp_path):
    vqav2(tmp_path)
    (tmp_path / "val2014/COCO_val2014_000000262146.jpg").unlink()
    with pytest.raises(MissingImagesError, match=r"1 of 2 image files are missing:\n  .*COCO_val2014_000000262146.jpg"):
        load_vqav2(tmp_path)


# ---------------------------------------------------------------- VizWiz

def workers(*counts):
    "VizWiz's answer objects: `counts` are (answer, how many workers gave it)."
    return [{"answer": a, "answer_confidence": c} for a, k in counts for c in ["yes"] * (k - 1) + ["maybe"]]


VIZWIZ = [  # question, answers, answerable, answer_type
    ("What color is this shirt?", workers(("red", 7), ("dark red", 3)), 1, "other"),
    ("What is the expiration date?", workers(("unanswerable", 9), ("march 2", 1)), 0, "unanswerable"),
    ("Is this coffee?", workers(("yes", 5), ("no", 5)), 1, "yes/no"),
    ("How many pills are left?", workers(("3", 1), ("4", 9)), 1, "number")]


def vizwiz(root, split="val"):
    "The release's `<split>.json` (LLaVA layout) and its images."
    paths = [img(root / split / f"VizWiz_{split}_{i:08d}.jpg") for i in range(len(VIZWIZ))]
    write(root / f"{split}.json", [{"image": f"VizWiz_{split}_{i:08d}.jpg", "question": q, "answers": a,
                                    "answerable": ok, "answer_type": t} for i, (q, a, ok, t) in enumerate(VIZWIZ)])
    return paths


def test_vizwiz_val_file(tmp_path):
    paths = vizwiz(tmp_path)
    ds = load_vizwiz(tmp_path)
    assert records(ds)[1] == {"id": "VizWiz_val_00000001", "image": paths[1], "question": VIZWIZ[1][0],
                              "answer": ["unanswerable"] * 9 + ["march 2"], "category": "unanswerable"}
    assert ds["category"] == ["other", "unanswerable", "yes/no", "number"]


def test_vizwiz_llava_question_file(tmp_path):
    vizwiz(tmp_path)
    write(tmp_path / "llava_val.jsonl", [{"question_id": 0, "image": "VizWiz_val_00000003.jpg",
                                          "text": VIZWIZ[3][0] + INSUFFICIENT, "category": "default"}], lines=True)
    ds = load_vizwiz(tmp_path, question_file="llava_val.jsonl")
    assert ds["id"] == ["VizWiz_val_00000003"] and ds[0]["question"] == VIZWIZ[3][0] + INSUFFICIENT
    assert ds[0]["answer"] == ["3"] + ["4"] * 9


def test_vizwiz_accuracy_by_hand(tmp_path):
    """h = 3 of 10 ('Dark red') → (3·2/3 + 7·1)/10 = 0.9; 'Unanswerable' matches 9 → 1.0; 'unanswerable' to a yes/no
    question → 0; 'three' normalises to '3', 1 of 10 → 9·(1/3)/10 = 0.3."""
    vizwiz(tmp_path)
    model = Answers({VIZWIZ[0][0]: "Dark red", VIZWIZ[1][0]: "Unanswerable", VIZWIZ[2][0]: "unanswerable",
                     VIZWIZ[3][0]: "three"})
    r = evaluate(model, list(load_benchmark("vizwiz", tmp_path)), progress=False)
    assert r["per_category"] == pytest.approx({"other": 0.9, "unanswerable": 1.0, "yes/no": 0.0, "number": 0.3})
    assert r["accuracy"] == pytest.approx((0.9 + 1.0 + 0.0 + 0.3) / 4)


def test_vizwiz_errors(tmp_path):
    vizwiz(tmp_path)
    write(tmp_path / "test.json", [{"image": "VizWiz_test_00000000.jpg", "question": "What is this?"}])
    with pytest.raises(BenchmarkFormatError, match=r"test.json, item 0: missing field 'answers'; the answers of VQAv2's "
                                                   r"and VizWiz's test splits are not public"):
        load_vizwiz(tmp_path, split="test")
    write(tmp_path / "llava_bad.jsonl", [{"question_id": 0, "image": "VizWiz_val_00000009.jpg", "text": "?",
                                          "category": "default"}], lines=True)
    with pytest.raises(BenchmarkFormatError, match=r"llava_bad.jsonl, line 1: image 'VizWiz_val_00000009.jpg' has no "
                                                   r"annotation in .*val.json"):
        load_vizwiz(tmp_path, question_file="llava_bad.jsonl")
    items = json.loads((tmp_path / "val.json").read_text())
    items[2]["answers"][4] = {"answer_confidence": "yes"}
    write(tmp_path / "val.json", items)
    with pytest.raises(BenchmarkFormatError, match=r"val.json, item 2, answer 4: missing field 'answer'"):
        load_vizwiz(tmp_path)
    items[2]["answers"][4]["answer"] = "yes"
    items[3]["answer_type"] = ""
    write(tmp_path / "val.json", items)
    with pytest.raises(BenchmarkFormatError, match=r"val.json, item 3: field 'answer_type' must be a non-empty str"):
        load_vizwiz(tmp_path)
    write(tmp_path / "val.json", {"annotations": items})
    with pytest.raises(BenchmarkFormatError, match=r"val.json: expected a JSON array of records"):
        load_vizwiz(tmp_path)
