"""The grid world (02b_grid, 02c_grid_corpus): twins keep the bag of patches and flip the answer, every answer and
every cell checked by an independent reader of the scene graphs, sizes and balance of the evaluation sets,
determinism, the writer's refusal of a foreign folder, and files the package's readers take."""
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compodistill.grid import COLUMNS, ROWS, GridScene, Piece, sample_grid_scene
from compodistill.grid_corpus import (BINDING_MIX, EVAL_FILES, GRID_VOCAB, MIX, TRAIN_FILES, build_grid_world,
                                      write_grid_world)
from compodistill.world import COLOURS, SHAPES

SMALL = dict(n_train=300, n_binding=60, n_dev=10, n_eval=30, n_vision=250)
RELATIONS = ("left", "right", "above", "below")


@pytest.fixture(scope="module")
def world():
    return build_grid_world(seed=3, n_train=1500, n_binding=300, n_dev=50, n_eval=500)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    return out, write_grid_world(out, seed=1, **SMALL)


def scenes_of(world) -> dict:
    return {s.id: s for split in world.scenes.values() for s in split}


def scene_of(scenes, record):
    return scenes[re.fullmatch(r"images/(\w+)\.png", record["image"])[1]]


# --- an independent reader of the questions, working on the objects' columns and rows ------------------------------

def one(scene, **attr):
    (key, value), = attr.items()
    found = [o for o in scene.objects if getattr(o, key) == value]
    assert len(found) == 1, (scene.id, attr)
    return found[0]


def answer(question: str, scene) -> tuple[str, list[int]]:
    "The answer to a question and the cells of the objects it names, worked out from the scene's objects."
    cell = lambda o: 4 * o.row + o.col
    if m := re.fullmatch(r"is there (\w+) \?", question):
        key = "colour" if m[1] in COLOURS else "shape"
        found = [o for o in scene.objects if getattr(o, key) == m[1]]
        return ("yes" if found else "no"), [cell(o) for o in found]
    if m := re.fullmatch(r"(colour|column|row) (\w+) \?", question):
        o = one(scene, shape=m[2])
        return {"colour": o.colour, "column": ("alpha", "beta", "gamma", "delta")[o.col], "row": "1234"[o.row]}[m[1]], [cell(o)]
    if m := re.fullmatch(r"shape (\w+) \?", question):
        o = one(scene, colour=m[1])
        return o.shape, [cell(o)]
    if m := re.fullmatch(r"(\w+) (left|right|above|below) (\w+) \?", question):
        a, b = one(scene, shape=m[1]), one(scene, shape=m[3])
        axis = "col" if m[2] in ("left", "right") else "row"
        assert getattr(a, axis) != getattr(b, axis), question  # asked only where the coordinate differs
        holds = getattr(a, axis) < getattr(b, axis) if m[2] in ("left", "above") else getattr(a, axis) > getattr(b, axis)
        return ("yes" if holds else "no"), [cell(a), cell(b)]
    raise AssertionError(f"unknown question form: {question!r}")


def kind_of(question: str) -> str:
    words = question.split()
    if words[0] == "is": return "existence"
    return words[0] if words[0] in ("colour", "shape", "column", "row") else words[1]


def blocks(image) -> list[bytes]:
    a = np.asarray(image)
    return [a[16 * r:16 * r + 16, 16 * c:16 * c + 16].tobytes() for r in range(4) for c in range(4)]


# --- scenes and twins ------------------------------------------------------------------------------------------------

def test_scenes_are_valid(world):
    for scene in scenes_of(world).values():
        n = len(scene.objects)
        assert 3 <= n <= 5
        assert len({o.colour for o in scene.objects}) == len({o.shape for o in scene.objects}) == n
        assert len({(o.col, o.row) for o in scene.objects}) == n and all(0 <= o.col < 4 and 0 <= o.row < 4 for o in scene.objects)
    assert Counter(len(s.objects) for s in world.scenes["train"]).keys() == {3, 4, 5}


def test_image_and_mask_follow_the_scene_graph():
    scene = sample_grid_scene(__import__("random").Random(0), "s", 5)
    image, mask = np.asarray(scene.image()), np.asarray(scene.mask())
    assert image.shape == (64, 64, 3) and mask.shape == (64, 64) and scene.mask().mode == "L"
    for k, o in enumerate(scene.objects):
        block = mask[16 * o.row:16 * o.row + 16, 16 * o.col:16 * o.col + 16]
        assert set(np.unique(block)) == {0, k + 1}  # the object's own value, background at the corners
        assert tuple(image[16 * o.row + 8, 16 * o.col + 8]) == COLOURS[o.colour]
    assert (mask > 0).sum() == sum((mask == k + 1).sum() for k in range(5))
    empty = {4 * r + c for r in range(4) for c in range(4)} - {4 * o.row + o.col for o in scene.objects}
    for cell in empty: assert not blocks(mask)[cell].strip(b"\0")  # empty cells are background


def test_invalid_scenes_are_refused():
    with pytest.raises(ValueError, match="share a shape"):
        GridScene("x", (Piece("red", "circle", 0, 0), Piece("blue", "circle", 1, 0)))
    with pytest.raises(ValueError, match="share a cell"):
        GridScene("x", (Piece("red", "circle", 0, 0), Piece("blue", "cross", 0, 0)))
    with pytest.raises(ValueError, match="off the 4x4 grid"):
        GridScene("x", (Piece("red", "circle", 0, 4),))


def test_twins_keep_the_bag_of_patches_and_flip_the_answer(world):
    scenes, records = scenes_of(world), world.files["eval_relation"]
    by_id = {r["id"]: r for r in records}
    for r in records[::2]:
        t = by_id[r["twin"]]
        assert t["twin"] == r["id"] and t["question"] == r["question"] and t["category"] == r["category"]
        s, u = scene_of(scenes, r), scene_of(scenes, t)
        assert s.id != u.id
        assert sorted(blocks(s.image())) == sorted(blocks(u.image())) and blocks(s.image()) != blocks(u.image())
        assert {(o.col, o.row) for o in s.objects} == {(o.col, o.row) for o in u.objects}
        assert {r["answer"], t["answer"]} == {"yes", "no"}
        assert answer(r["question"], s)[0] == r["answer"] and answer(t["question"], u)[0] == t["answer"]
        a, _, b = r["question"].split()[:3]
        where = lambda sc, shape: (one(sc, shape=shape).col, one(sc, shape=shape).row)
        assert {(o.colour, o.shape) for o in s.objects} == {(o.colour, o.shape) for o in u.objects}
        assert where(u, a) == where(s, b) and where(u, b) == where(s, a)  # the named objects swapped cells
        assert all(where(u, o.shape) == (o.col, o.row) for o in s.objects if o.shape not in (a, b))  # nothing else moved


def test_twins_on_disk(written):
    out, paths = written
    records = json.loads(paths["eval_relation"].read_text())
    by_id = {r["id"]: r for r in records}
    for r in records[::2]:
        with Image.open(out / r["image"]) as a, Image.open(out / by_id[r["twin"]]["image"]) as b:
            assert sorted(blocks(a.convert("RGB"))) == sorted(blocks(b.convert("RGB")))


# --- every answer and every cell --------------------------------------------------------------------------------

def test_every_answer_and_cell_is_right(world):
    scenes, n = scenes_of(world), 0
    for stem in TRAIN_FILES:
        side = world.files[f"{stem}_questions"]
        for r in world.files[stem]:
            turns = r["conversations"]
            assert len(side[r["id"]]) == len(turns) // 2
            for q, a, meta in zip(turns[::2], turns[1::2], side[r["id"]]):
                text = q["value"].removeprefix("<image>\n")
                expected, cells = answer(text, scene_of(scenes, r))
                assert (a["value"], meta["cells"], meta["kind"]) == (expected, cells, kind_of(text)), (r["id"], text)
                n += 1
    for split in ("dev", "eval"):
        for family in EVAL_FILES:
            for r in world.files[f"{split}_{family}"]:
                expected, cells = answer(r["question"], scene_of(scenes, r))
                assert (r["answer"], r["cells"], r["category"]) == (expected, cells, kind_of(r["question"])), r
                assert r["conversations"][0]["value"] == "<image>\n" + r["question"]
                assert r["conversations"][1]["value"] == r["answer"]
                n += 1
    assert n > 20_000


def test_training_sequences_follow_the_mix(world):
    families = {"existence": "existence", "colour": "binding", "shape": "binding", "column": "where", "row": "where",
                **{r: "relation" for r in RELATIONS}}
    for stem, mix in (("train", MIX), ("train_binding", BINDING_MIX)):
        for meta in world.files[f"{stem}_questions"].values():
            assert Counter(families[m["kind"]] for m in meta) == Counter(mix)
    assert all(r["conversations"][0]["value"].startswith("<image>\n") for r in world.files["train"])
    assert not any("<image>" in t["value"] for r in world.files["train"] for t in r["conversations"][1:])
    train_ids = [s.id for s in world.scenes["train"]]
    assert len(set(train_ids)) == len(train_ids) and not any("twin" in i for i in train_ids)  # no twin pairs in training
    relation_answers = Counter(a["value"] for r in world.files["train"]
                               for a, m in zip(r["conversations"][1::2], world.files["train_questions"][r["id"]])
                               if m["kind"] in RELATIONS)
    assert 0.45 < relation_answers["yes"] / sum(relation_answers.values()) < 0.55


# --- sizes and balance of the evaluation sets ------------------------------------------------------------------

def test_eval_sizes_and_balance(world):
    kinds = {f: Counter(r["category"] for r in world.files[f"eval_{f}"]) for f in EVAL_FILES}
    assert kinds == {"existence": {"existence": 500}, "binding": {"colour": 500, "shape": 500},
                     "where": {"column": 500, "row": 500}, "relation": {r: 1000 for r in RELATIONS}}
    assert {f: len(world.files[f"dev_{f}"]) for f in EVAL_FILES} == {"existence": 50, "binding": 100, "where": 100, "relation": 400}
    for kind, words in (("existence", ("yes", "no")), *[(r, ("yes", "no")) for r in RELATIONS], ("colour", COLOURS),
                        ("shape", SHAPES), ("column", COLUMNS), ("row", ROWS)):
        counts = Counter(r["answer"] for f in EVAL_FILES for r in world.files[f"eval_{f}"] if r["category"] == kind)
        assert set(counts) == set(words), kind  # every answer word present
        if kind == "existence" or kind in RELATIONS: assert counts["yes"] == counts["no"], kind
    ids = [r["id"] for f in EVAL_FILES for r in world.files[f"eval_{f}"]]
    assert len(ids) == len(set(ids))
    assert not {s.id for s in world.scenes["eval"]} & {s.id for s in world.scenes["dev"]}
    images = lambda split: {tuple(blocks(s.image())) for s in world.scenes[split]}
    assert len(images("eval") & images("dev")) < 5  # hardly any scene of the development split is an evaluation scene


# --- determinism and files ------------------------------------------------------------------------------------

def test_same_seed_gives_identical_files(written, tmp_path):
    out, paths = written
    again = write_grid_world(tmp_path / "again", seed=1, **SMALL)
    assert set(paths) == set(again)
    for stem, p in paths.items():
        if p.suffix == ".json": assert p.read_bytes() == again[stem].read_bytes(), stem
    names = sorted(p.name for p in paths["images"].iterdir())
    assert names == sorted(p.name for p in again["images"].iterdir())
    masks = sorted(p.name for p in paths["masks"].iterdir())
    assert masks == sorted(p.name for p in again["masks"].iterdir())
    for folder, some in (("images", names[::7]), ("masks", masks[::7])):
        for name in some: assert (out / folder / name).read_bytes() == (tmp_path / "again" / folder / name).read_bytes()
    other = write_grid_world(tmp_path / "other", seed=2, **SMALL)
    assert other["train"].read_bytes() != paths["train"].read_bytes()
    assert other["eval_relation"].read_bytes() != paths["eval_relation"].read_bytes()


def test_layout_and_manifest(written):
    out, paths = written
    manifest = json.loads(paths["world"].read_text())
    assert manifest["vocab"] == GRID_VOCAB and manifest["mix"] == MIX
    for stem, n in manifest["counts"].items():
        if stem != "world": assert len(json.loads(paths[stem].read_text())) == n, stem
    refs = {r["image"] for stem in (*TRAIN_FILES, *[f"{s}_{f}" for s in ("dev", "eval") for f in EVAL_FILES])
            for r in json.loads(paths[stem].read_text())}
    assert refs == {f"images/{p.name}" for p in (out / "images").iterdir()}  # every image used, every reference exists
    masks = {r["mask"] for split in ("train", "dev", "eval") for r in json.loads(paths[f"{split}_scenes"].read_text())}
    assert masks == {f"masks/{p.name}" for p in (out / "masks").iterdir()}
    train_graphs = json.loads(paths["train_scenes"].read_text())
    assert len(train_graphs) == 250 and train_graphs[0]["id"] == "train_000000"  # the first n_vision training scenes
    assert not list(out.rglob("*.tmp"))
    with Image.open(out / "images" / "eval_0000.png") as im: assert im.size == (64, 64) and im.mode == "RGB"


def test_writer_refuses_a_foreign_folder_and_removes_its_own_stale_files(tmp_path):
    from compodistill.guards import MANIFEST
    out = tmp_path / "w"
    write_grid_world(out, seed=0, n_train=20, n_binding=5, n_dev=2, n_eval=3)
    (out / "notes.txt").write_text("mine")
    before = sorted(p.name for p in (out / "images").iterdir())
    with pytest.raises(FileExistsError, match="notes.txt"):
        write_grid_world(out, seed=1, n_train=10, n_binding=0, n_dev=0, n_eval=1)
    assert sorted(p.name for p in (out / "images").iterdir()) == before and (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    (out / "images" / "photo.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="images/photo.jpg"):
        write_grid_world(out, seed=1, n_train=10, n_binding=0, n_dev=0, n_eval=1)
    (out / "images" / "photo.jpg").unlink()
    paths = write_grid_world(out, seed=1, n_train=10, n_binding=0, n_dev=0, n_eval=1)  # its own earlier write is fine
    referenced = {r["image"] for stem in ("train", "eval_relation", "eval_existence") for r in json.loads(paths[stem].read_text())}
    assert {f"images/{p.name}" for p in (out / "images").iterdir()} == referenced  # the larger write's images are gone
    assert {p.name for p in out.iterdir()} == {p.name for p in paths.values()} | {MANIFEST}


# --- the package's readers --------------------------------------------------------------------------------------

def test_files_are_read_by_the_data_reader_and_the_evaluator(written):
    from compodistill.data import check_data, load_conversations
    from compodistill.evaluate import load_records, record_kind
    out, paths = written
    for stem in TRAIN_FILES:
        assert check_data(paths[stem], open_images=True).counts == {}
        assert len(load_conversations(paths[stem])) == json.loads(paths["world"].read_text())["counts"][stem]
    extra = ("question", "answer", "category", "cells", "twin")
    for split in ("dev", "eval"):
        for f in EVAL_FILES:
            assert check_data(paths[f"{split}_{f}"], ignore_keys=extra).counts == {}, f
            records = load_records(f"world:{paths[f'{split}_{f}']}")
            assert {record_kind(r) for r in records} == {"vqa"} and all(Path(r["image"]).is_file() for r in records)


def test_conversations_tokenize_with_the_word_tokenizer(written):
    from compodistill.checkpoints import word_tokenizer
    out, paths = written
    tok = word_tokenizer(GRID_VOCAB)
    words = {w for p in paths.values() if p.suffix == ".json" and p.stem != "world"
             for r in (json.loads(p.read_text()) if isinstance(json.loads(p.read_text()), list) else [])
             for t in r.get("conversations", []) for w in t["value"].replace("<image>", "").split()}
    assert words == set(GRID_VOCAB)
    ids = tok(" ".join(sorted(words)), add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids and len(ids) == len(words)  # one token per word


def test_scene_graphs_give_the_vision_stage_column_and_row_targets(written):
    from compodistill.vision import load_scenes, patch_targets
    out, paths = written
    records, vocab = load_scenes(paths["eval_scenes"])
    assert vocab == {"col": sorted(COLUMNS), "colour": sorted(COLOURS), "row": sorted(ROWS), "shape": sorted(SHAPES)}
    keys = list(vocab)
    for r in records[:50]:
        targets = patch_targets(Image.open(out / r["mask"]), r["objects"], vocab, 64, 16)
        assert int((targets[:, 0] > 0).sum()) == len(r["objects"])
        for o in r["objects"]:
            row = targets[o["cell"]].tolist()
            assert row == [vocab[k].index(o[k]) + 1 for k in keys]
            column, line = vocab["col"][row[keys.index("col")] - 1], vocab["row"][row[keys.index("row")] - 1]
            assert (COLUMNS.index(column), ROWS.index(line)) == (o["cell"] % 4, o["cell"] // 4)  # the patch's own place


def test_every_answer_survives_the_evaluators_normalisation(world):
    from compodistill.scoring import vqa_score
    words = sorted({r["answer"] for f in EVAL_FILES for r in world.files[f"eval_{f}"]})
    assert len(words) == 2 + 6 + 5 + 4 + 4
    for w in words:
        assert vqa_score(w, w) == 1.0 and vqa_score("", w) == 0.0 and vqa_score("the", w) == 0.0, w
        assert not [v for v in words if v != w and vqa_score(v, w)], w  # no other answer word counts as this one


def test_sequences_tokenize_with_one_visual_token_per_cell_and_answer_labels(written):
    from transformers import SiglipVisionConfig

    from compodistill.checkpoints import make_processor, word_tokenizer
    from compodistill.data import ConversationDataset
    out, paths = written
    tok = word_tokenizer(GRID_VOCAB)
    processor = make_processor(tok, SiglipVisionConfig(image_size=64, patch_size=16))
    data = ConversationDataset(paths["train"], processor)
    records = json.loads(paths["train"].read_text())
    for i in (0, 1, 2):
        sample = data[i]
        assert int((sample["input_ids"] == tok.image_token_id).sum()) == 16 and sample["pixel_values"].shape == (3, 64, 64)
        labels = tok.convert_ids_to_tokens([t for t in sample["labels"].tolist() if t != -100])
        assert labels == [w for a in records[i]["conversations"][1::2] for w in (a["value"], tok.eos_token)]


def test_writer_never_replaces_a_users_file_of_a_world_name_and_completes_a_killed_write(tmp_path, monkeypatch):
    from compodistill.guards import MANIFEST
    tiny = dict(n_train=10, n_binding=2, n_dev=1, n_eval=1, n_vision=5)
    out = tmp_path / "data"
    out.mkdir()
    (out / "eval_binding.json").write_text("the user's own")   # a name the writer uses, no manifest of its own
    with pytest.raises(FileExistsError, match="eval_binding.json was not written by write_grid_world") as e:
        write_grid_world(out, **tiny)
    assert "\n" not in str(e.value) and (out / "eval_binding.json").read_text() == "the user's own"
    assert write_grid_world(out, overwrite=True, **tiny)["eval_binding"].read_text() != "the user's own"
    whole = write_grid_world(tmp_path / "whole", **tiny)
    calls, mask = [0], GridScene.mask
    def dies(self, *a, **k):
        calls[0] += 1
        if calls[0] > 3: raise KeyboardInterrupt
        return mask(self, *a, **k)
    monkeypatch.setattr(GridScene, "mask", dies)
    with pytest.raises(KeyboardInterrupt): write_grid_world(tmp_path / "killed", **tiny)
    assert json.loads((tmp_path / "killed" / MANIFEST).read_text())["complete"] is False
    monkeypatch.setattr(GridScene, "mask", mask)
    again = write_grid_world(tmp_path / "killed", **tiny)
    for stem in ("world", "eval_binding", "train"): assert whole[stem].read_bytes() == again[stem].read_bytes()
    assert sorted(p.name for p in again["masks"].iterdir()) == sorted(p.name for p in whole["masks"].iterdir())
