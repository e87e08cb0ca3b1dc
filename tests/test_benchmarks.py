"""Benchmark loaders: each published format, written here, gives valid records; bad input gives named errors."""
import io
import json
import os
from pathlib import Path

import datasets
import pytest
from PIL import Image

from compodistill.benchmarks import (BenchmarkFormatError, MissingImagesError, load_bivlc, load_caption_matching_json,
                                     load_sugarcrepe, load_winoground, validate_record)
from compodistill.vqa import BENCHMARKS, load_benchmark, load_gqa, load_mme, load_pope, load_textvqa

datasets.disable_progress_bars()


def img(path, colour="red", fmt=None):
    "Write a tiny image to `path` (format from the extension unless `fmt`); return its absolute path as str."
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), colour).save(path, format=fmt)
    return str(path.absolute())


def write(path, obj, lines=False):
    "Write `obj` as JSON, or each item as a JSON line."
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(o) for o in obj) + "\n" if lines else json.dumps(obj))
    return path


def records(ds):
    return [ds[i] for i in range(len(ds))]


# ---------------------------------------------------------------- validate_record

VQA = {"id": "1", "image": "/x/1.jpg", "question": "q?", "answer": "yes", "category": "c"}
WINO = {"id": "w", "images": ["/a.png", "/b.png"], "captions": ["a", "b"], "category": "c"}


def test_validate_record_accepts_each_kind_and_extra_keys():
    assert validate_record("vqa", VQA) is VQA
    assert validate_record("vqa", {**VQA, "answer": ["2", "two"], "extra": 1})["extra"] == 1
    assert validate_record("caption_matching", {"id": "s", "image": "/a.jpg", "positive": "p", "negative": "n",
                                                "category": "c"})["negative"] == "n"
    assert validate_record("winoground", WINO)["captions"] == ["a", "b"]


@pytest.mark.parametrize("kind, record, message", [
    ("vqa", {k: v for k, v in VQA.items() if k != "question"}, "vqa record '1': missing field 'question'"),
    ("vqa", {**VQA, "answer": 3}, "field 'answer' must be a non-empty str | list[str]"),
    ("vqa", {**VQA, "answer": []}, "field 'answer' must be a non-empty"),
    ("vqa", {**VQA, "category": ""}, "field 'category' must be a non-empty str"),
    ("vqa", {**VQA, "question": "  \t"}, "field 'question' must be a non-empty str"),
    ("vqa", {**VQA, "image": "rel/1.jpg"}, "image path 'rel/1.jpg' is not absolute"),
    ("winoground", {**WINO, "captions": ["a", "b", "c"]}, "field 'captions' must hold exactly 2 items"),
    ("winoground", {**WINO, "images": ["/a.png", 5]}, "field 'images' must be a non-empty list[str]"),
])
def test_validate_record_names_record_and_field(kind, record, message):
    with pytest.raises(BenchmarkFormatError) as e:
        validate_record(kind, record)
    assert message in str(e.value)


def test_validate_record_unknown_kind():
    with pytest.raises(ValueError, match="known kinds: vqa, caption_matching, winoground"):
        validate_record("pairs", VQA)


# ---------------------------------------------------------------- SugarCrepe

def sugarcrepe(root):
    a, b = img(root / "val2017/000000000139.jpg"), img(root / "val2017/000000000285.jpg", "blue")
    write(root / "swap_obj.json", {"0": {"filename": "000000000139.jpg", "caption": "a dog on a cat",
                                         "negative_caption": "a cat on a dog"}})
    write(root / "add_att.json", {"4": {"filename": "000000000285.jpg", "caption": "a car",
                                        "negative_caption": "a red car"},
                                  "9": {"filename": "000000000139.jpg", "caption": "a dog",
                                        "negative_caption": "a small dog"}})
    return a, b


def test_sugarcrepe_records(tmp_path):
    a, b = sugarcrepe(tmp_path)
    ds = load_sugarcrepe(tmp_path, categories=["swap_obj", "add_att"])
    assert isinstance(ds, datasets.Dataset)
    assert records(ds) == [
        {"id": "swap_obj/0", "image": a, "positive": "a dog on a cat", "negative": "a cat on a dog",
         "category": "swap_obj"},
        {"id": "add_att/4", "image": b, "positive": "a car", "negative": "a red car", "category": "add_att"},
        {"id": "add_att/9", "image": a, "positive": "a dog", "negative": "a small dog", "category": "add_att"}]
    for r in records(ds): validate_record("caption_matching", r)


def test_sugarcrepe_absolute_image_dir(tmp_path):
    a, _ = sugarcrepe(tmp_path / "coco")
    write(tmp_path / "ann/swap_obj.json", {"0": {"filename": "000000000139.jpg", "caption": "x",
                                                 "negative_caption": "y"}})
    ds = load_sugarcrepe(tmp_path / "ann", image_dir=tmp_path / "coco/val2017", categories=["swap_obj"])
    assert ds[0]["image"] == a


def test_sugarcrepe_all_seven_files_by_default(tmp_path):
    sugarcrepe(tmp_path)
    with pytest.raises(FileNotFoundError, match="add_obj.json: no such file"):
        load_sugarcrepe(tmp_path)


@pytest.mark.parametrize("content, message", [
    ({"3": {"filename": "000000000139.jpg", "caption": "a"}},
     "swap_obj.json, key '3': missing field 'negative_caption'"),
    ({"3": {"filename": 139, "caption": "a", "negative_caption": "b"}},
     "key '3': field 'filename' must be a non-empty str"),
    ({"3": ["000000000139.jpg", "a", "b"]}, "key '3': expected a JSON object"),
    ([{"filename": "000000000139.jpg"}], "swap_obj.json: expected a JSON object keyed by index"),
])
def test_sugarcrepe_bad_entries(tmp_path, content, message):
    sugarcrepe(tmp_path)
    write(tmp_path / "swap_obj.json", content)
    with pytest.raises(BenchmarkFormatError) as e:
        load_sugarcrepe(tmp_path, categories=["swap_obj"])
    assert message in str(e.value)


def test_sugarcrepe_categories_as_a_comma_string(tmp_path):
    sugarcrepe(tmp_path)
    ds = load_sugarcrepe(tmp_path, categories="swap_obj, add_att")
    assert ds["category"] == ["swap_obj", "add_att", "add_att"]


def test_sugarcrepe_unknown_category_is_named(tmp_path):
    sugarcrepe(tmp_path)
    with pytest.raises(ValueError, match="unknown SugarCrepe category 'swap-obj'; known: add_att, add_obj"):
        load_sugarcrepe(tmp_path, categories="add_att,swap-obj")


@pytest.mark.parametrize("item, message", [
    ({"filename": "000000000139.jpg", "caption": "   ", "negative_caption": "a cat"},
     "swap_obj.json, key '3': field 'caption' must be a non-empty str"),
    ({"filename": "000000000139.jpg", "caption": "a cat", "negative_caption": " \n"},
     "swap_obj.json, key '3': field 'negative_caption' must be a non-empty str"),
    ({"filename": "000000000139.jpg", "caption": "a dog on a cat", "negative_caption": "a dog on a cat "},
     "swap_obj.json, key '3': field 'negative_caption' is the same caption as 'caption'"),
])
def test_sugarcrepe_blank_or_identical_captions(tmp_path, item, message):
    sugarcrepe(tmp_path)
    write(tmp_path / "swap_obj.json", {"3": item})
    with pytest.raises(BenchmarkFormatError) as e:
        load_sugarcrepe(tmp_path, categories=["swap_obj"])
    assert message in str(e.value)


def test_sugarcrepe_invalid_json_names_line(tmp_path):
    (tmp_path / "swap_att.json").write_text('{\n"0": {"filename": "a.jpg",,}\n}')
    with pytest.raises(BenchmarkFormatError, match=r"swap_att.json: invalid JSON at line 2"):
        load_sugarcrepe(tmp_path, categories=["swap_att"])


# ---------------------------------------------------------------- Winoground

def winoground(root, n=1):
    rows = []
    for i in range(n):
        img(root / f"images/ex_{i}_img_0.png"), img(root / f"images/ex_{i}_img_1.png", "blue")
        rows.append({"id": i, "caption_0": f"an old person kisses a young person {i}",
                     "caption_1": f"a young person kisses an old person {i}", "image_0": f"ex_{i}_img_0",
                     "image_1": f"ex_{i}_img_1", "tag": "Object", "secondary_tag": "Symbolic", "num_main_preds": 1,
                     "collapsed_tag": "Relation"})
    write(root / "examples.jsonl", rows, lines=True)


def test_winoground_records(tmp_path):
    winoground(tmp_path, 2)
    ds = load_winoground(tmp_path)
    r = ds[1]
    assert r == {"id": "1", "images": [str(tmp_path / f"images/ex_1_img_{j}.png") for j in (0, 1)],
                 "captions": ["an old person kisses a young person 1", "a young person kisses an old person 1"],
                 "category": "Object"}
    assert Image.open(r["images"][1]).getpixel((0, 0)) == (0, 0, 255)
    assert load_winoground(tmp_path, category_field="collapsed_tag")["category"] == ["Relation", "Relation"]


def test_winoground_missing_field_names_line(tmp_path):
    winoground(tmp_path, 2)
    lines = (tmp_path / "examples.jsonl").read_text().splitlines()
    bad = json.loads(lines[1]); del bad["caption_1"]
    (tmp_path / "examples.jsonl").write_text(lines[0] + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(BenchmarkFormatError, match=r"examples.jsonl, line 3: missing field 'caption_1'"):
        load_winoground(tmp_path)


def test_winoground_identical_captions(tmp_path):
    winoground(tmp_path, 1)
    row = json.loads((tmp_path / "examples.jsonl").read_text())
    write(tmp_path / "examples.jsonl", [{**row, "caption_1": row["caption_0"]}], lines=True)
    with pytest.raises(BenchmarkFormatError, match=r"examples.jsonl, line 1: field 'caption_1' is the same caption"):
        load_winoground(tmp_path)


def test_winoground_broken_line(tmp_path):
    (tmp_path / "examples.jsonl").write_text('{"id": 0, "caption_0": "a"\n')
    with pytest.raises(BenchmarkFormatError, match=r"examples.jsonl, line 1: invalid JSON"):
        load_winoground(tmp_path)


def test_missing_images_are_listed_never_skipped(tmp_path):
    winoground(tmp_path, 4)
    gone = [tmp_path / f"images/ex_{i}_img_{j}.png" for i in (0, 2, 3) for j in (0, 1)]
    gone.append(tmp_path / "images/ex_1_img_1.png")
    for p in gone: p.unlink()
    with pytest.raises(MissingImagesError) as e:
        load_winoground(tmp_path)
    assert isinstance(e.value, FileNotFoundError)
    assert sorted(e.value.missing) == sorted(map(str, gone))
    message = str(e.value)
    assert "examples.jsonl: 7 of 8 image files are missing" in message
    assert message.count(str(tmp_path / "images")) == 5 and message.endswith("...")


# ---------------------------------------------------------------- BiVLC

FEATURES = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string"),
                              "negative_caption": datasets.Value("string"), "negative_image": datasets.Image(),
                              "type": datasets.Value("string"), "subtype": datasets.Value("string")})


def encoded(colour, fmt):
    "An image cell holding only the bytes of an 8x6 image in `fmt`, as the hub's parquet shards do."
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buf, format=fmt)
    return {"bytes": buf.getvalue(), "path": None}


def bivlc_rows(n=3):
    colours = ["red", "green", "blue", "yellow"]
    return datasets.Dataset.from_dict({
        "image": [encoded(colours[i], "PNG") for i in range(n)],
        "caption": [f"caption {i}" for i in range(n)],
        "negative_caption": [f"negative caption {i}" for i in range(n)],
        "negative_image": [encoded(colours[i + 1], "JPEG") for i in range(n)],
        "type": ["Replace", "Swap", "Add"][:n], "subtype": ["Object", "Attribute", "Relation"][:n]}, features=FEATURES)


def check_bivlc(ds, n=3):
    assert len(ds) == n
    r = ds[1]
    assert r["id"] == "1" and r["captions"] == ["caption 1", "negative caption 1"]
    assert r["category"] == "Swap_Attribute"
    assert Image.open(r["images"][0]).getpixel((0, 0)) == (0, 128, 0)  # PNG: exact colour
    assert Path(r["images"][1]).suffix == ".jpg"  # JPEG bytes are kept as .jpg
    assert ds["category"] == ["Replace_Object", "Swap_Attribute", "Add_Relation"]
    for rec in records(ds): validate_record("winoground", rec)


def test_bivlc_from_save_to_disk(tmp_path):
    bivlc_rows().save_to_disk(str(tmp_path / "bivlc"))
    ds = load_bivlc(tmp_path / "bivlc")
    check_bivlc(ds)
    assert Path(ds[0]["images"][0]).parent == tmp_path / "bivlc/images"


def test_bivlc_from_dataset_dict_and_split(tmp_path):
    datasets.DatasetDict({"test": bivlc_rows()}).save_to_disk(str(tmp_path / "bivlc"))
    check_bivlc(load_bivlc(tmp_path / "bivlc", image_cache=tmp_path / "cache"))
    assert len(list((tmp_path / "cache").iterdir())) == 6
    with pytest.raises(BenchmarkFormatError, match="no split 'validation' \\(splits: test\\)"):
        load_bivlc(tmp_path / "bivlc", split="validation")


def test_bivlc_from_hub_parquet_shards(tmp_path):
    rows = bivlc_rows()
    (tmp_path / "hub/data").mkdir(parents=True)
    rows.select([0, 1]).to_parquet(str(tmp_path / "hub/data/test-00000-of-00002.parquet"))
    rows.select([2]).to_parquet(str(tmp_path / "hub/data/test-00001-of-00002.parquet"))
    check_bivlc(load_bivlc(tmp_path / "hub"))
    single = load_bivlc(tmp_path / "hub/data/test-00001-of-00002.parquet", image_cache="one")
    assert single[0]["id"] == "0"  # ids are row numbers of the loaded table
    assert single[0]["captions"] == ["caption 2", "negative caption 2"]
    assert Path(single[0]["images"][0]).parent == tmp_path / "hub/data/one"


def test_bivlc_cells_with_only_a_path_point_at_that_file(tmp_path):
    source = img(tmp_path / "coco/000000000139.jpg", "green")
    rows = bivlc_rows().cast_column("image", datasets.Image(decode=False))
    rows = rows.map(lambda r, i: {"image": {"bytes": None, "path": source} if i == 1 else r["image"]},
                    with_indices=True, features=rows.features)
    rows.to_parquet(str(tmp_path / "bivlc/test-0.parquet"))  # save_to_disk would embed the file's bytes
    ds = load_bivlc(tmp_path / "bivlc")
    assert ds[1]["images"][0] == source
    assert Path(ds[0]["images"][0]).parent == tmp_path / "bivlc/images"


def test_bivlc_image_cache_is_reused(tmp_path):
    bivlc_rows().save_to_disk(str(tmp_path / "bivlc"))
    first = load_bivlc(tmp_path / "bivlc")[0]["images"][0]
    before = os.stat(first).st_mtime_ns
    assert load_bivlc(tmp_path / "bivlc")[0]["images"][0] == first
    assert os.stat(first).st_mtime_ns == before


def test_bivlc_missing_column(tmp_path):
    bivlc_rows().remove_columns("negative_image").to_parquet(str(tmp_path / "test-x.parquet"))
    with pytest.raises(BenchmarkFormatError, match=r"test-x.parquet: missing column\(s\) \['negative_image'\]"):
        load_bivlc(tmp_path / "test-x.parquet")


def test_bivlc_unreadable_image_names_row_and_column(tmp_path):
    rows = bivlc_rows().cast_column("negative_image", datasets.Image(decode=False))
    broken = {"bytes": b"not an image", "path": None}
    rows = rows.map(lambda r, i: {"negative_image": broken if i == 2 else r["negative_image"]},
                    with_indices=True, features=rows.features)
    rows.to_parquet(str(tmp_path / "test-y.parquet"))
    with pytest.raises(BenchmarkFormatError, match=r"test-y.parquet, row 2, column 'negative_image': image bytes"):
        load_bivlc(tmp_path / "test-y.parquet")


def test_bivlc_no_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a save_to_disk folder nor parquet files test-\\*.parquet"):
        load_bivlc(tmp_path)


# ---------------------------------------------------------------- generic caption matching (SADE etc.)

def test_caption_matching_json_and_jsonl(tmp_path):
    a = img(tmp_path / "images/a.png")
    items = [{"image": "a.png", "positive": "p0", "negative": "n0"},
             {"image": a, "positive": "p1", "negative": "n1", "category": "relation", "id": 17}]
    write(tmp_path / "sade.json", items)
    write(tmp_path / "sade.jsonl", items, lines=True)
    for name in ("sade.json", "sade.jsonl"):
        ds = load_caption_matching_json(tmp_path / name, image_dir="images")
        assert records(ds) == [
            {"id": "sade/0", "image": a, "positive": "p0", "negative": "n0", "category": "sade"},
            {"id": "17", "image": a, "positive": "p1", "negative": "n1", "category": "relation"}]
    ds = load_caption_matching_json(tmp_path / "sade.json", "images", category="SADE")
    assert ds["category"] == ["SADE", "relation"]


def test_caption_matching_errors(tmp_path):
    img(tmp_path / "a.png")
    write(tmp_path / "x.jsonl", [{"image": "a.png", "positive": "p", "negative": "n"},
                                 {"image": "a.png", "negative": "n"}], lines=True)
    with pytest.raises(BenchmarkFormatError, match=r"x.jsonl, line 2: missing field 'positive'"):
        load_caption_matching_json(tmp_path / "x.jsonl")
    write(tmp_path / "y.json", {"image": "a.png"})
    with pytest.raises(BenchmarkFormatError, match=r"y.json: expected a JSON array"):
        load_caption_matching_json(tmp_path / "y.json")
    write(tmp_path / "dup.json", [{"image": "a.png", "positive": "p", "negative": "n", "id": 1}] * 2)
    with pytest.raises(BenchmarkFormatError, match=r"dup.json: duplicate record id '1'"):
        load_caption_matching_json(tmp_path / "dup.json")
    write(tmp_path / "same.json", [{"image": "a.png", "positive": "p", "negative": "p"}])
    with pytest.raises(BenchmarkFormatError, match=r"same.json, item 0: field 'negative' is the same caption as 'positive'"):
        load_caption_matching_json(tmp_path / "same.json")
    write(tmp_path / "blank.json", [{"image": "a.png", "positive": " ", "negative": "n"}])
    with pytest.raises(BenchmarkFormatError, match=r"blank.json, item 0: field 'positive' must be a non-empty str"):
        load_caption_matching_json(tmp_path / "blank.json")
    write(tmp_path / "empty.json", [])
    with pytest.raises(BenchmarkFormatError, match=r"empty.json: no records"):
        load_caption_matching_json(tmp_path / "empty.json")


# ---------------------------------------------------------------- POPE

SUFFIX = "\nAnswer the question using a single word or phrase."


def pope(root):
    a, b = img(root / "val2014/COCO_val2014_000000000042.jpg"), img(root / "val2014/COCO_val2014_000000000073.jpg")
    write(root / "coco/coco_pope_random.json", [
        {"question_id": 1, "image": "COCO_val2014_000000000042.jpg", "text": "Is there a dog in the image?",
         "label": "yes"},
        {"question_id": 2, "image": "COCO_val2014_000000000073.jpg", "text": "Is there a cat in the image?",
         "label": "no"}],
        lines=True)
    write(root / "coco/coco_pope_popular.json", [
        {"question_id": 1, "image": "COCO_val2014_000000000073.jpg", "text": "Is there a person in the image?",
         "label": "no"}], lines=True)
    write(root / "llava_pope_test.jsonl", [
        {"question_id": 10, "image": "COCO_val2014_000000000073.jpg",
         "text": "Is there a person in the image?" + SUFFIX, "category": "popular"},
        {"question_id": 20, "image": "COCO_val2014_000000000042.jpg", "text": "Is there a dog in the image?" + SUFFIX,
         "category": "random"},
        {"question_id": 21, "image": "COCO_val2014_000000000073.jpg", "text": "Is there a cat in the image?" + SUFFIX,
         "category": "random"}], lines=True)
    return a, b


def test_pope_from_annotation_files(tmp_path):
    a, b = pope(tmp_path)
    ds = load_pope(tmp_path, splits=["random", "popular"])
    assert records(ds) == [
        {"id": "random/1", "image": a, "question": "Is there a dog in the image?", "answer": "yes",
         "category": "random", "metric": "pope"},
        {"id": "random/2", "image": b, "question": "Is there a cat in the image?", "answer": "no",
         "category": "random", "metric": "pope"},
        {"id": "popular/1", "image": b, "question": "Is there a person in the image?", "answer": "no",
         "category": "popular", "metric": "pope"}]


def test_pope_with_llava_question_file_pairs_by_position(tmp_path):
    pope(tmp_path)
    ds = load_pope(tmp_path, question_file="llava_pope_test.jsonl", splits=["random", "popular"])
    assert ds["id"] == ["20", "21", "10"]
    assert ds["answer"] == ["yes", "no", "no"]
    assert ds[1]["question"] == "Is there a cat in the image?" + SUFFIX
    assert ds["category"] == ["random", "random", "popular"]


def test_pope_label_count_mismatch(tmp_path):
    pope(tmp_path)
    lines = (tmp_path / "llava_pope_test.jsonl").read_text().splitlines()
    (tmp_path / "llava_pope_test.jsonl").write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(BenchmarkFormatError, match=r"llava_pope_test.jsonl: 1 questions of category 'random', but "
                                                   r".*coco_pope_random.json has 2 labels"):
        load_pope(tmp_path, question_file="llava_pope_test.jsonl", splits=["random"])


def test_pope_image_mismatch(tmp_path):
    pope(tmp_path)
    rows = [json.loads(l) for l in (tmp_path / "llava_pope_test.jsonl").read_text().splitlines()]
    rows[1], rows[2] = rows[2], rows[1]  # the random questions in the wrong order
    write(tmp_path / "llava_pope_test.jsonl", rows, lines=True)
    with pytest.raises(BenchmarkFormatError,
                       match=r"llava_pope_test.jsonl, line 2: image 'COCO_val2014_000000000073.jpg' differs from "
                             r"'COCO_val2014_000000000042.jpg' at .*coco_pope_random.json, line 1"):
        load_pope(tmp_path, question_file="llava_pope_test.jsonl", splits=["random"])


def test_pope_bad_label(tmp_path):
    pope(tmp_path)
    write(tmp_path / "coco/coco_pope_adversarial.json", [
        {"question_id": 1, "image": "COCO_val2014_000000000042.jpg", "text": "Is there a dog?", "label": "maybe"}],
        lines=True)
    with pytest.raises(BenchmarkFormatError,
                       match=r"coco_pope_adversarial.json, line 1: field 'label' must be 'yes' or 'no'"):
        load_pope(tmp_path, splits=["adversarial"])


@pytest.mark.parametrize("source, folder, name, images", [
    ("aokvqa", "seem/aokvqa", "aokvqa_pope_seem_{}.json", "val2014"), ("gqa", "seem/gqa", "gqa_pope_seem_{}.json", "images")])
def test_pope_repository_sets_are_json_arrays(tmp_path, source, folder, name, images):
    a = img(tmp_path / images / "2405722.jpg")
    rows = [{"question_id": 1, "image": "2405722.jpg", "text": "Is there a bird in the image?", "label": "yes"},
            {"question_id": 2, "image": "2405722.jpg", "text": "Is there a car in the image?", "label": "no"}]
    for split in ("random", "adversarial"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / name.format(split)).write_text(json.dumps(rows, indent=4))  # as the POPE repository has them
    ds = load_pope(tmp_path, source=source, splits="random,adversarial")
    assert ds["id"] == ["random/1", "random/2", "adversarial/1", "adversarial/2"]
    assert ds["answer"] == ["yes", "no"] * 2 and ds[0]["image"] == a and set(ds["metric"]) == {"pope"}


def test_pope_unknown_source_or_split(tmp_path):
    pope(tmp_path)
    with pytest.raises(ValueError, match="unknown POPE source 'vg'; known: coco, aokvqa, gqa"):
        load_pope(tmp_path, source="vg")
    with pytest.raises(ValueError, match="unknown POPE split 'rand'"):
        load_pope(tmp_path, splits="rand")


# ---------------------------------------------------------------- TextVQA

OCR = "\nReference OCR token: dakota, digital, nikon\nAnswer the question using a single word or phrase."


def textvqa(root):
    "LLaVA's question file and TextVQA's annotations, in their published formats."
    a = img(root / "train_images/003a8ae2ef43b901.jpg")
    write(root / "llava_textvqa_val_v051_ocr.jsonl", [
        {"question_id": "003a8ae2ef43b901", "image": "003a8ae2ef43b901.jpg",
         "text": "what is the brand of this camera?" + OCR, "category": "default"},
        {"question_id": "003a8ae2ef43b901", "image": "003a8ae2ef43b901.jpg", "text": "what does the small white text spell?" + OCR,
         "category": "default"}], lines=True)
    write(root / "TextVQA_0.5.1_val.json", {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1",
                                            "data": [
        {"question": "what does the small white text spell?", "image_id": "003a8ae2ef43b901", "question_id": 34603,
         "answers": ["copenhagen"] * 8 + ["thursday", "copenhagen "], "set_name": "val", "image_classes": ["Camera"]},
        {"question": "what is the brand of this camera?", "image_id": "003a8ae2ef43b901", "question_id": 34602,
         "answers": ["nikon"] * 3 + ["dakota"] * 7, "set_name": "val", "image_classes": ["Camera"]}]})
    return a


def test_textvqa_joins_llava_questions_with_ten_answers(tmp_path):
    a = textvqa(tmp_path)
    ds = load_textvqa(tmp_path)
    assert records(ds)[0] == {"id": "34602", "image": a, "question": "what is the brand of this camera?" + OCR,
                              "answer": ["nikon"] * 3 + ["dakota"] * 7, "category": "default"}
    assert ds["id"] == ["34602", "34603"]


def test_textvqa_errors(tmp_path):
    textvqa(tmp_path)
    write(tmp_path / "q.jsonl", [{"question_id": 1, "image": "003a8ae2ef43b901.jpg", "text": "who?" + OCR,
                                  "category": "default"}], lines=True)
    with pytest.raises(BenchmarkFormatError, match=r"q.jsonl, line 1: no annotation in .*TextVQA_0.5.1_val.json"):
        load_textvqa(tmp_path, question_file="q.jsonl")
    write(tmp_path / "TextVQA_0.5.1_val.json", [{"question": "x"}])
    with pytest.raises(BenchmarkFormatError, match="expected a JSON object with a 'data' list"):
        load_textvqa(tmp_path)


# ---------------------------------------------------------------- MME

def mme(root):
    "Two subtasks of MME's release: existence (images beside their .txt) and landmark (images/ + questions_answers_YN/)."
    for name in ("000000006040", "000000018150"):
        img(root / f"existence/{name}.jpg")
        (root / f"existence/{name}.txt").write_text("Is there a dog in this image? Please answer yes or no.\tYes\n"
                                                    "Is there a cat in this image? Please answer yes or no.\tNo\n")
    img(root / "landmark/images/0001.png")
    (root / "landmark/questions_answers_YN").mkdir(parents=True)
    (root / "landmark/questions_answers_YN/0001.txt").write_text(
        "Is this a photo of Big Ben? Please answer yes or no.\tYes\nIs this a photo of the Louvre? Please answer yes or no.\tNo\n")


def test_mme_release_layout(tmp_path):
    mme(tmp_path)
    ds = load_mme(tmp_path, subtasks="existence,landmark")
    assert ds["id"] == ["existence/000000006040/0", "existence/000000006040/1", "existence/000000018150/0",
                        "existence/000000018150/1", "landmark/0001/0", "landmark/0001/1"]
    assert ds["answer"] == ["yes", "no"] * 3 and set(ds["metric"]) == {"mme"}
    assert ds[4]["image"] == str(tmp_path / "landmark/images/0001.png")
    assert ds[0]["question"] == "Is there a dog in this image? Please answer yes or no."


def test_mme_errors(tmp_path):
    mme(tmp_path)
    with pytest.raises(ValueError, match="unknown MME subtask 'colour'"):
        load_mme(tmp_path, subtasks="colour")
    with pytest.raises(FileNotFoundError, match="count: no such MME subtask folder"):
        load_mme(tmp_path, subtasks="count")
    (tmp_path / "existence/000000006040.txt").write_text("Is there a dog?\tMaybe\nIs there a cat?\tNo\n")
    with pytest.raises(BenchmarkFormatError, match=r"000000006040.txt, line 1: expected 'question<TAB>Yes\|No'"):
        load_mme(tmp_path, subtasks="existence")
    (tmp_path / "existence/000000006040.txt").write_text("Is there a dog?\tYes\n")
    with pytest.raises(BenchmarkFormatError, match=r"000000006040.txt: expected 2 question lines, got 1"):
        load_mme(tmp_path, subtasks="existence")
    os.remove(tmp_path / "landmark/images/0001.png")
    with pytest.raises(MissingImagesError, match="1 of 1 image files are missing"):
        load_mme(tmp_path, subtasks="landmark")


# ---------------------------------------------------------------- GQA

def gqa(root):
    a = img(root / "data/images/n161313.jpg")
    b = img(root / "data/images/2354786.jpg", "blue")
    write(root / "data/testdev_balanced_questions.json", {
        "201307251": {"imageId": "n161313", "question": "Is it overcast?", "answer": "no",
                      "fullAnswer": "No, it is clear.",
                      "types": {"structural": "verify", "semantic": "global", "detailed": "weatherVerify"}},
        "20968379": {"imageId": "2354786", "question": "Who is wearing the shirt?", "answer": "girl",
                     "fullAnswer": "The girl is wearing a shirt.",
                     "types": {"structural": "query", "semantic": "rel", "detailed": "relS"}}})
    write(root / "llava_gqa_testdev_balanced.jsonl", [
        {"question_id": "20968379", "image": "2354786.jpg", "text": "Who is wearing the shirt?" + SUFFIX,
         "category": "default"}], lines=True)
    return a, b


def test_gqa_from_questions_file(tmp_path):
    a, b = gqa(tmp_path)
    assert records(load_gqa(tmp_path)) == [
        {"id": "201307251", "image": a, "question": "Is it overcast?", "answer": "no", "category": "verify"},
        {"id": "20968379", "image": b, "question": "Who is wearing the shirt?", "answer": "girl", "category": "query"}]


def test_gqa_with_llava_question_file(tmp_path):
    _, b = gqa(tmp_path)
    ds = load_gqa(tmp_path, question_file="llava_gqa_testdev_balanced.jsonl")
    assert records(ds) == [{"id": "20968379", "image": b, "question": "Who is wearing the shirt?" + SUFFIX,
                            "answer": "girl", "category": "default"}]


def test_gqa_errors(tmp_path):
    gqa(tmp_path)
    write(tmp_path / "llava_bad.jsonl", [{"question_id": 5, "image": "2354786.jpg", "text": "?", "category": "d"}],
          lines=True)
    with pytest.raises(BenchmarkFormatError, match=r"llava_bad.jsonl, line 1: question_id '5' is not in .*testdev"):
        load_gqa(tmp_path, question_file="llava_bad.jsonl")
    q = json.loads((tmp_path / "data/testdev_balanced_questions.json").read_text())
    del q["20968379"]["answer"]
    write(tmp_path / "data/testdev_balanced_questions.json", q)
    with pytest.raises(BenchmarkFormatError,
                       match=r"testdev_balanced_questions.json, key '20968379': missing field 'answer'"):
        load_gqa(tmp_path)
    write(tmp_path / "data/testdev_balanced_questions.json", [q["201307251"]])
    with pytest.raises(BenchmarkFormatError, match=r"expected a JSON object keyed by question id"):
        load_gqa(tmp_path)


def test_gqa_missing_images(tmp_path):
    gqa(tmp_path)
    os.remove(tmp_path / "data/images/n161313.jpg")
    with pytest.raises(MissingImagesError, match=r"1 of 2 image files are missing:\n  .*n161313.jpg") as e:
        load_gqa(tmp_path)
    assert e.value.missing == [str(tmp_path / "data/images/n161313.jpg")]


# ---------------------------------------------------------------- dispatcher

def test_load_benchmark_dispatches(tmp_path):
    gqa(tmp_path / "gqa")
    winoground(tmp_path / "wino")
    assert load_benchmark("gqa", tmp_path / "gqa")["id"] == load_gqa(tmp_path / "gqa")["id"]
    assert load_benchmark("winoground", tmp_path / "wino", category_field="collapsed_tag")["category"] == ["Relation"]
    assert set(BENCHMARKS) == {"sugarcrepe", "winoground", "bivlc", "caption_matching", "pope", "gqa", "textvqa", "mme",
                               "vqav2", "vizwiz"}


def test_load_benchmark_limit_per_category(tmp_path):
    sugarcrepe(tmp_path)
    ds = load_benchmark("sugarcrepe", tmp_path, categories="swap_obj,add_att", limit_per_category=1)
    assert ds["id"] == ["swap_obj/0", "add_att/4"]


def test_load_benchmark_unknown_name_lists_known():
    with pytest.raises(ValueError, match="unknown benchmark 'sade'; known benchmarks: bivlc, caption_matching, gqa, "
                                         "mme, pope, sugarcrepe, textvqa, vizwiz, vqav2, winoground"):
        load_benchmark("sade", "/nowhere")
