"""The synthetic world (02_world, 02a_corpus): determinism, truth of every caption/answer/negative checked by an
independent reader of the scene graphs, Winoground pairs, held-out compositions, LLaVA format, vocabulary and speed."""
import json
import re

import pytest
from PIL import Image

from compodistill.corpus import (FORMATS, NEGATIVE_TYPES, PERCEPTION, RECOGNITION, TRAIN_FILES, WORLD_VOCAB, balance,
                                 build_world, write_world)
from compodistill.guards import MANIFEST
from compodistill.world import COLOURS, DEFAULT_HELDOUT, NUMBERS, OPPOSITE, PLURALS, SHAPES, Obj, Scene

SMALL = dict(n_train=400, n_eval=150, n_heldout=80)


@pytest.fixture(scope="module")
def world():
    return build_world(seed=3, n_train=3000, n_eval=600, n_heldout=300)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    return out, write_world(out, seed=1, **SMALL)


# --- an independent reader of the world's sentences, working on grid cells only --------------------------------

PHRASE = r"(\w+) (\w+)"
REL = r"(left of|right of|above|below)"


def holds_rel(a: Obj, rel: str, b: Obj) -> bool:
    return {"left of": a.col < b.col, "right of": a.col > b.col, "above": a.row < b.row, "below": a.row > b.row}[rel]


def find(scene: Scene, colour=None, shape=None) -> list[Obj]:
    return [o for o in scene.objects if colour in (None, o.colour) and shape in (None, o.shape)]


def parse_relation(text: str):
    m = re.fullmatch(f"the {PHRASE} is {REL} the {PHRASE}", text)
    assert m, text
    return (m[1], m[2]), m[3], (m[4], m[5])


def true_of(text: str, scene: Scene) -> bool:
    (c1, s1), rel, (c2, s2) = parse_relation(text)
    a, b = find(scene, c1, s1), find(scene, c2, s2)
    return len(a) == 1 and len(b) == 1 and holds_rel(a[0], rel, b[0])


def answer(question: str, scene: Scene) -> str:
    "The answer to a question of the world, worked out from the scene graph."
    objs = scene.objects
    if m := re.fullmatch(r"what colour is the (\w+)\?", question):
        (o,) = find(scene, shape=m[1])
        return o.colour
    if m := re.fullmatch(r"what shape is the (\w+) object\?", question):
        (o,) = find(scene, colour=m[1])
        return o.shape
    if m := re.fullmatch(f"what size is the {PHRASE}\\?", question):
        (o,) = find(scene, m[1], m[2])
        return o.size
    if m := re.fullmatch(r"is there an? (\w+) (\w+)\?", question):
        return "yes" if find(scene, m[1], m[2]) else "no"
    if question == "how many objects are there?":
        return NUMBERS[len(objs) - 1]
    if m := re.fullmatch(r"how many (\w+) are there\?", question):
        shape = {p: s for s, p in PLURALS.items()}[m[1]]
        return NUMBERS[len(find(scene, shape=shape)) - 1]
    if m := re.fullmatch(f"which object is {REL} the {PHRASE}\\?", question):
        (ref,) = find(scene, m[2], m[3])
        (o,) = [o for o in objs if holds_rel(o, m[1], ref)]
        return f"{o.colour} {o.shape}"
    if m := re.fullmatch(f"what (colour|shape) is the (\\w+)(?: object)? that is {REL} the {PHRASE}\\?", question):
        (ref,) = find(scene, m[4], m[5])
        named = dict(colour=m[2]) if m[1] == "shape" else dict(shape=m[2])
        (o,) = [o for o in find(scene, **named) if holds_rel(o, m[3], ref)]
        return getattr(o, m[1])
    if m := re.fullmatch(f"is the {PHRASE} {REL} the {PHRASE}\\?", question):
        return "yes" if true_of(f"the {m[1]} {m[2]} is {m[3]} the {m[4]} {m[5]}", scene) else "no"
    if m := re.fullmatch(r"Which caption best describes the image\?\n\(A\) (.+)\n\(B\) (.+)\n"
                         r"Answer with the option's letter from the given choices directly\.", question):
        truth = (true_of(m[1], scene), true_of(m[2], scene))
        assert truth in ((True, False), (False, True)), (question, truth)  # exactly one true caption
        return "A" if truth[0] else "B"
    if m := re.fullmatch(r"Does this caption describe the image\? (.+)\nAnswer yes or no\.", question):
        return "yes" if true_of(m[1], scene) else "no"
    raise AssertionError(f"unknown question form: {question!r}")


def scene_of(world, record) -> Scene:
    return world.scenes[re.fullmatch(r"images/(\w+)\.png", record["image"])[1]]


# --- determinism and files --------------------------------------------------------------------------------------

def test_same_seed_gives_identical_files(written, tmp_path):
    out, paths = written
    again = write_world(tmp_path, seed=1, **SMALL)
    assert set(paths) == set(again)
    for stem, p in paths.items():
        if stem != "images": assert p.read_bytes() == again[stem].read_bytes(), stem
    images = sorted(x.name for x in paths["images"].iterdir())
    assert images == sorted(x.name for x in again["images"].iterdir())
    for name in images[::25]:
        assert (paths["images"] / name).read_bytes() == (again["images"] / name).read_bytes(), name
    other = write_world(tmp_path / "other", seed=2, **SMALL)
    assert paths["train_instruct"].read_bytes() != other["train_instruct"].read_bytes()


def test_text_corpus_is_the_training_text_without_images(written):
    from compodistill.data import check_data
    out, paths = written
    text = json.loads(paths["train_text"].read_text())
    assert all(set(r) == {"id", "conversations"} and r["conversations"][0] == {"from": "human", "value": ""}
               for r in text)
    captions = [r["conversations"][1]["value"] for r in json.loads(paths["train_captions"].read_text())]
    qa = [f"{q['value'].replace('<image>', '').strip()} {a['value']}"
          for r in json.loads(paths["train_instruct"].read_text())
          for q, a in zip(r["conversations"][::2], r["conversations"][1::2])]
    assert [r["conversations"][1]["value"] for r in text] == captions + qa
    assert len({r["id"] for r in text}) == len(text)
    assert check_data(paths["train_text"]).counts == {}


def test_layout_counts_and_no_temporary_files(written):
    out, paths = written
    assert paths["images"] == out / "images"
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == sorted([MANIFEST, *(f"{s}.json" for s in paths if s != "images")])
    assert not list(out.rglob("*.tmp"))
    manifest = json.loads(paths["world"].read_text())
    assert manifest["heldout"] == [list(p) for p in DEFAULT_HELDOUT] and manifest["vocab"] == WORLD_VOCAB
    assert manifest["counts"]["train_captions"] == manifest["counts"]["train_instruct"] == SMALL["n_train"]
    assert manifest["counts"]["train_text"] > 2 * SMALL["n_train"]  # every caption and every question-answer pair
    for stem, n in manifest["counts"].items():
        if stem != "world": assert len(json.loads(paths[stem].read_text())) == n, stem
    refs = {p for stem, path in paths.items() if stem not in ("images", "world", "train_instruct_categories")
            for r in json.loads(path.read_text()) for p in r.get("images", [r.get("image")]) if p}
    assert refs == {f"images/{p.name}" for p in paths["images"].iterdir()}  # every image used, every reference exists
    with Image.open(paths["images"] / "train_00000.png") as im: assert im.size == (64, 64) and im.mode == "RGB"
    masks = {r["mask"] for split in ("train", "eval", "heldout") for r in json.loads(paths[f"{split}_scenes"].read_text())}
    assert masks == {f"masks/{p.name}" for p in (out / "masks").iterdir()}  # one instance mask per image, each referenced
    with Image.open(out / "masks" / "train_00000.png") as m: assert m.size == (64, 64) and m.mode == "L"


def test_written_records_are_the_built_ones(written):
    out, paths = written
    world = build_world(seed=1, **SMALL)
    for stem, records in world.files.items():
        on_disk = json.loads(paths[stem].read_text())
        assert on_disk == [{k: v for k, v in r.items() if k != "categories"} for r in records], stem
    cats = json.loads(paths["train_instruct_categories"].read_text())
    assert cats == {r["id"]: r["categories"] for r in world.files["train_instruct"]}


@pytest.mark.parametrize("size", [32, 64, 128])
def test_render_sizes_and_colours(size):
    scene = Scene("s", (Obj("red", "square", "large", 0, 0), Obj("blue", "circle", "large", 2, 2)))
    im = scene.render(size)
    assert im.size == (size, size)
    cell = size / 3
    assert im.getpixel((int(cell / 2), int(cell / 2))) == COLOURS["red"]
    assert im.getpixel((int(2.5 * cell), int(2.5 * cell))) == COLOURS["blue"]
    assert im.getpixel((int(2.5 * cell), int(cell / 2))) == im.getpixel((0, size - 1)) != COLOURS["red"]


# --- LLaVA format ------------------------------------------------------------------------------------------------

def test_training_files_are_llava_format(written):
    from compodistill.data import check_data
    out, paths = written
    cats = json.loads(paths["train_instruct_categories"].read_text())
    for stem in TRAIN_FILES:
        records = json.loads(paths[stem].read_text())
        assert len({r["id"] for r in records}) == len(records)
        for r in records:
            assert set(r) == {"id", "image", "conversations"}
            turns = r["conversations"]
            assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
            assert sum(t["value"].count("<image>") for t in turns) == 1 and turns[0]["value"].startswith("<image>")
            if stem == "train_captions":
                assert turns[0]["value"] == "<image>" and len(turns) == 2
            else:
                assert 1 <= len(turns) // 2 <= 4 and len(cats[r["id"]]) == len(turns) // 2
                assert set(cats[r["id"]]) <= set(RECOGNITION) | set(PERCEPTION) | set(FORMATS)
                assert sum(c in FORMATS for c in cats[r["id"]]) <= 1
        assert check_data(paths[stem], open_images=True).counts == {}


def test_eval_record_fields(written):
    out, paths = written
    fields = {"recognition": {"id", "image", "question", "answer", "category"},
              "perception": {"id", "image", "question", "answer", "category"},
              "caption_matching": {"id", "image", "positive", "negative", "category"},
              "winoground": {"id", "images", "captions", "category"}}
    for split in ("eval", "heldout"):
        for kind, keys in fields.items():
            records = json.loads(paths[f"{split}_{kind}"].read_text())
            assert records and all(set(r) == keys for r in records), (split, kind)


# --- truth of everything the world says ----------------------------------------------------------------------------

def test_scenes_are_valid(world):
    for scene in world.scenes.values():
        assert 1 <= len(scene.objects) <= 4
        n = len(scene.objects)
        assert len({(o.col, o.row) for o in scene.objects}) == len({o.pair for o in scene.objects}) == n
    assert {len(s.objects) for k, s in world.scenes.items() if k.startswith("train")} == {1, 2, 3, 4}
    assert all(len(s.objects) >= 2 for k, s in world.scenes.items() if not k.startswith("train"))


def test_captions_are_true(world):
    for r in world.files["train_captions"]:
        scene, caption = scene_of(world, r), r["conversations"][1]["value"]
        listing, *relations = caption.split(". ")
        things = re.findall(r"an? (small|large) (\w+) (\w+)", listing)
        assert sorted(things) == sorted((o.size, o.colour, o.shape) for o in scene.objects), caption
        assert len(relations) == min(2, len(things) * (len(things) - 1) // 2)
        assert all(true_of(rel.rstrip("."), scene) for rel in relations), caption


def test_every_answer_is_right(world):
    n = 0
    for r in world.files["train_instruct"]:
        turns = r["conversations"]
        for q, a in zip(turns[::2], turns[1::2]):
            assert answer(q["value"].replace("<image>\n", ""), scene_of(world, r)) == a["value"], (r["id"], q, a)
            n += 1
    for split in ("eval", "heldout"):
        for kind in ("recognition", "perception"):
            for r in world.files[f"{split}_{kind}"]:
                assert answer(r["question"], scene_of(world, r)) == r["answer"], r
                assert r["category"] in (RECOGNITION if kind == "recognition" else PERCEPTION)
                n += 1
    assert n > 5000


def test_yes_no_questions_include_swapped_attributes(world):
    nos = [r for r in world.files["eval_perception"] if r["category"] == "relation_yesno" and r["answer"] == "no"]
    swapped = 0
    for r in nos:
        m = re.fullmatch(f"is the {PHRASE} {REL} the {PHRASE}\\?", r["question"])
        if true_of(f"the {m[4]} {m[2]} is {m[3]} the {m[1]} {m[5]}", scene_of(world, r)): swapped += 1
    assert swapped > len(nos) / 4


def _words_differ(a: str, b: str) -> list[int]:
    wa, wb = a.split(), b.split()
    assert len(wa) == len(wb), (a, b)
    return [i for i, (x, y) in enumerate(zip(wa, wb)) if x != y]


def test_negatives_are_false_and_differ_only_in_their_labelled_way(world):
    per_type = {t: 0 for t in NEGATIVE_TYPES}
    for split in ("eval", "heldout"):
        for r in world.files[f"{split}_caption_matching"]:
            scene, pos, neg, kind = scene_of(world, r), r["positive"], r["negative"], r["category"]
            assert true_of(pos, scene) and not true_of(neg, scene), r
            (c1, s1), rel, (c2, s2) = parse_relation(pos)
            (d1, t1), rel2, (d2, t2) = parse_relation(neg)
            if kind == "swap_att":
                assert (d1, t1, rel2, d2, t2) == (c2, s1, rel, c1, s2) and c1 != c2
            elif kind == "swap_obj":
                assert (d1, t1, rel2, d2, t2) == (c2, s2, rel, c1, s1)
            elif kind == "replace_att":
                assert len(_words_differ(pos, neg)) == 1 and (t1, rel2, t2) == (s1, rel, s2)
                assert {d1, d2} - {c1, c2} <= set(COLOURS) and (d1, d2) != (c1, c2)
            elif kind == "replace_rel":
                assert (d1, t1, d2, t2) == (c1, s1, c2, s2) and rel2 == OPPOSITE[rel]
            else:
                assert kind == "replace_obj" and len(_words_differ(pos, neg)) == 1 and (d1, rel2, d2) == (c1, rel, c2)
                new = ({t1, t2} - {s1, s2}).pop()
                assert new in SHAPES and not find(scene, shape=new)
            per_type[kind] += 1
    assert min(per_type.values()) > 100, per_type


def test_winoground_pairs(world):
    kinds = {"swap_att": 0, "swap_obj": 0}
    for split in ("eval", "heldout"):
        for r in world.files[f"{split}_winoground"]:
            (i0, i1), (c0, c1) = r["images"], r["captions"]
            s0, s1 = (world.scenes[re.fullmatch(r"images/(\w+)\.png", i)[1]] for i in (i0, i1))
            assert c0 != c1 and sorted(c0.split()) == sorted(c1.split())
            assert [true_of(c0, s0), true_of(c1, s1), true_of(c0, s1), true_of(c1, s0)] == [True, True, False, False]
            assert s0.objects != s1.objects and len(s0.objects) == len(s1.objects)
            kinds[r["category"]] += 1
    assert min(kinds.values()) > 0.3 * sum(kinds.values()), kinds


# --- held-out compositions -----------------------------------------------------------------------------------------

def _named_pairs(texts: list[str]) -> set[tuple[str, str]]:
    words = [re.findall(r"\w+", t) for t in texts]
    return {p for w in words for p in zip(w, w[1:])}


def _leaks(records, heldout) -> list:
    "Training turns that name a held-out pair, or whose answer completes one (what colour is the triangle? yellow)."
    found = []
    for r in records:
        turns = [t["value"].replace("<image>\n", "") for t in r["conversations"]]
        found += [(r["id"], t) for t in turns if _named_pairs([t]) & set(heldout)]
        for q, a in zip(turns[::2], turns[1::2]):
            if (m := re.match(r"what colour is the (\w+)", q)) and (a, m[1]) in heldout:
                found.append((r["id"], q, a))
            if (m := re.match(r"what shape is the (\w+) object", q)) and (m[1], a) in heldout:
                found.append((r["id"], q, a))
    return found


def test_heldout_pairs_never_in_training_files(written):
    out, paths = written
    heldout = [tuple(p) for p in json.loads(paths["world"].read_text())["heldout"]]
    assert heldout == list(DEFAULT_HELDOUT)
    for stem in (*TRAIN_FILES, "train_text"):
        assert _leaks(json.loads(paths[stem].read_text()), heldout) == [], stem
    text = [json.dumps(json.loads(paths[f"heldout_{k}"].read_text())) for k in ("caption_matching", "winoground")]
    assert _named_pairs(text) >= set(heldout)  # the held-out split is about them


def test_custom_heldout_pairs(tmp_path):
    heldout = [("red", "circle"), ("blue", "cross")]
    world = build_world(seed=5, n_train=2000, n_eval=200, n_heldout=100, heldout=heldout)
    assert _leaks([r for f in TRAIN_FILES for r in world.files[f]], heldout) == []
    assert not any(o.pair in heldout for k, s in world.scenes.items() if k.startswith("train") for o in s.objects)
    assert not any(o.pair in heldout for k, s in world.scenes.items() if k.startswith("eval") for o in s.objects)
    assert all(any(o.pair in heldout for o in s.objects) for k, s in world.scenes.items()
               if k.startswith("heldout") and not k.endswith("_wino"))
    assert all(_named_pairs([r["positive"]]) & set(heldout) for r in world.files["heldout_caption_matching"])
    # without held-out pairs "red circle" is common in training text
    free = build_world(seed=5, n_train=300, n_eval=0, n_heldout=0, heldout=())
    assert _leaks(free.files["train_captions"], heldout) != []
    with pytest.raises(ValueError, match="unknown"): build_world(heldout=[("pink", "circle")])


# --- vocabulary, balance, speed ------------------------------------------------------------------------------------

def _file_texts(paths) -> list[str]:
    texts = []
    for stem, p in paths.items():
        if stem in ("images", "world", "train_instruct_categories"): continue
        for r in json.loads(p.read_text()):
            texts += [t["value"].replace("<image>", "") for t in r.get("conversations", [])] + r.get("captions", [])
            texts += [r[k] for k in ("question", "answer", "positive", "negative") if k in r]
    return texts


def test_vocabulary_is_complete_and_exact(written, world):
    out, paths = written
    assert WORLD_VOCAB == sorted(set(WORLD_VOCAB))
    tokens = {t for text in _file_texts(paths) for t in re.findall(r"\w+|[^\w\s]", text.lower())}
    assert tokens <= set(WORLD_VOCAB), tokens - set(WORLD_VOCAB)
    assert {t for t in tokens if not t.isalnum()} <= {".", ",", "?", "'", "(", ")"}
    texts = [t["value"] for f in world.files.values() for r in f for t in r.get("conversations", [])]
    texts += [r.get(k, "") for f in world.files.values() for r in f for k in ("question", "answer", "negative")]
    assert {t for text in texts for t in re.findall(r"\w+|[^\w\s]", text.replace("<image>", "").lower())} == set(WORLD_VOCAB)


def test_word_tokenizer_knows_every_word(written):
    from compodistill.checkpoints import word_tokenizer
    out, paths = written
    tok = word_tokenizer(WORLD_VOCAB)
    ids = tok(" ".join(_file_texts(paths)), add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids and len(ids) > 1000


def test_balance(world):
    b = balance(world.files["eval_perception"])
    assert set(b) == {"colour", "shape", "relation", "category", "answer"}
    assert all(type(v) is int for d in b.values() for v in d.values())
    assert sum(b["category"].values()) == len(world.files["eval_perception"]) and set(b["category"]) == set(PERCEPTION)
    yn = [r["answer"] for r in world.files["eval_perception"] if r["category"] == "relation_yesno"]
    assert b["answer"]["yes"] == yn.count("yes") and 0.4 < yn.count("yes") / len(yn) < 0.6
    tiny = [{"question": "is the red circle left of the blue crosses?", "answer": "no", "category": "x"}]
    assert balance(tiny) == {"colour": {"blue": 1, "red": 1}, "shape": {"circle": 1, "cross": 1},
                             "relation": {"left of": 1}, "category": {"x": 1}, "answer": {"no": 1}}
    instruct = balance(world.files["train_instruct"])["category"]
    assert set(instruct) == set(RECOGNITION) | set(PERCEPTION) | set(FORMATS)
    questions = sum(v for c, v in instruct.items() if c not in FORMATS)
    assert 0.3 < sum(instruct[c] for c in PERCEPTION) / questions < 0.5
    assert 0.45 < sum(instruct[c] for c in FORMATS) / len(world.files["train_instruct"]) < 0.65  # about half the records


def test_generating_10k_scenes_and_text():
    world = build_world(seed=0, n_train=10_000, n_eval=0, n_heldout=0)  # its speed is reported by 02a_corpus, not tested
    assert len(world.files["train_instruct"]) == 10_000


# --- a data folder shared with the user's files (issue 24) -------------------------------------------------------

TINY = dict(n_train=12, n_eval=6, n_heldout=3, image_size=16)


def test_writer_never_replaces_a_users_file_of_a_world_name(tmp_path):
    from compodistill.guards import MANIFEST
    (tmp_path / "eval_perception.json").write_text("the user's own")
    with pytest.raises(FileExistsError, match=r"eval_perception.json was not written by write_world") as e:
        write_world(tmp_path, **TINY)
    assert "\n" not in str(e.value) and (tmp_path / "eval_perception.json").read_text() == "the user's own"
    assert not (tmp_path / "images").exists()                     # refused before the first file
    paths = write_world(tmp_path, overwrite=True, **TINY)
    assert json.loads(paths["eval_perception"].read_text())[0]["category"] in PERCEPTION
    assert json.loads((tmp_path / MANIFEST).read_text())["complete"] is True


def test_a_killed_write_is_completed_by_a_rerun(tmp_path, monkeypatch):
    from compodistill.guards import MANIFEST
    whole = write_world(tmp_path / "whole", **TINY)
    calls, mask = [0], Scene.mask
    def dies(self, *a, **k):
        calls[0] += 1
        if calls[0] > 5: raise KeyboardInterrupt   # killed after five masks
        return mask(self, *a, **k)
    monkeypatch.setattr(Scene, "mask", dies)
    with pytest.raises(KeyboardInterrupt): write_world(tmp_path / "killed", **TINY)
    assert json.loads((tmp_path / "killed" / MANIFEST).read_text())["complete"] is False
    assert not (tmp_path / "killed" / "world.json").exists()
    monkeypatch.setattr(Scene, "mask", mask)
    again = write_world(tmp_path / "killed", **TINY)               # its own files: no refusal
    for stem, p in whole.items():
        if stem != "images": assert p.read_bytes() == again[stem].read_bytes(), stem
    assert sorted(p.name for p in (tmp_path / "killed" / "masks").iterdir()) == \
        sorted(p.name for p in (tmp_path / "whole" / "masks").iterdir())
    smaller = write_world(tmp_path / "killed", **{**TINY, "n_train": 4})  # a smaller world removes the larger's files
    scenes = {r["image"] for split in ("train", "eval", "heldout") for r in json.loads(smaller[f"{split}_scenes"].read_text())}
    assert {f"images/{p.name}" for p in smaller["images"].iterdir()} == scenes
