"""The vision stage (08c_vision): patch targets from scene graphs, checked scene files, and a stage that trains only
the tower the LLM reads."""
import json

import pytest
import torch
from PIL import Image

from compodistill.checkpoints import load_llava, make_processor, save_llava, word_tokenizer
from compodistill.data import DataError
from compodistill.models import build_pair
from compodistill.checkpoints import COMPLETE
from compodistill.corpus import WORLD_VOCAB, write_world
from compodistill.runner import STAGE_DONE, parse_stage_config, run_stage
from compodistill.vision import SceneDataset, load_scenes, patch_targets
from compodistill.world import Obj, Scene

VOCAB = {"colour": ["blue", "red"], "shape": ["circle", "square"], "size": ["large", "small"]}


def test_patch_targets_name_the_covering_object():
    """Each 8x8 patch of a hand-drawn mask gets the attributes of the object covering most of it, or 0."""
    mask = Image.new("L", (16, 16), 0)
    mask.paste(1, (0, 0, 8, 8))      # object 0 fills patch 0
    mask.paste(2, (8, 0, 16, 1))     # object 1 covers 1/8 of patch 1: below min_cover
    mask.paste(2, (0, 8, 8, 16))     # and fills patch 2
    objs = [dict(colour="red", shape="circle", size="large"), dict(colour="blue", shape="square", size="small")]
    assert patch_targets(mask, objs, VOCAB, 16, 8).tolist() == [[2, 1, 1], [0, 0, 0], [1, 2, 2], [0, 0, 0]]
    assert patch_targets(mask, objs, VOCAB, 16, 8, min_cover=0.1)[1].tolist() == [1, 2, 2]
    assert patch_targets(mask.resize((32, 32), Image.NEAREST), objs, VOCAB, 16, 8).tolist()[0] == [2, 1, 1]


def test_world_masks_match_the_scene_graph(tmp_path):
    paths = write_world(tmp_path, n_train=6, n_eval=2, n_heldout=0, image_size=32)
    records, vocab = load_scenes(paths["train_scenes"])
    assert len(records) == 6 and set(vocab) == {"colour", "shape", "size"}
    scene = Scene("s", (Obj("red", "circle", "large", 1, 1),))
    t = patch_targets(scene.mask(64), [dict(colour="red", shape="circle", size="large")], vocab, 64, 8)
    centre = 4 * 8 + 4  # the patch at the middle of the image lies inside the large circle of the middle cell
    assert t[centre].tolist() == [vocab["colour"].index("red") + 1, vocab["shape"].index("circle") + 1, vocab["size"].index("large") + 1]


@pytest.mark.parametrize("record, message", [
    ({"id": "a", "image": "i.png", "mask": "m.png"}, "missing keys ['objects']"),
    ({"id": "a", "image": "i.png", "mask": "none.png", "objects": []}, "missing mask"),
    ({"id": "a", "image": "i.png", "mask": "m.png", "objects": [{"colour": "red"}, {"shape": "circle"}]}, "objects[1]"),
])
def test_bad_scene_files_name_file_record_and_field(tmp_path, record, message):
    Image.new("RGB", (8, 8)).save(tmp_path / "i.png"); Image.new("L", (8, 8)).save(tmp_path / "m.png")
    (tmp_path / "scenes.json").write_text(json.dumps([record]))
    with pytest.raises(DataError, match="scenes.json") as e: load_scenes(tmp_path / "scenes.json")
    assert message in str(e.value) and "record #0 (id 'a')" in str(e.value)


def test_vision_stage_trains_only_the_tower_the_llm_reads(tmp_path):
    paths = write_world(tmp_path / "world", n_train=16, n_eval=2, n_heldout=0, image_size=32)
    tok = word_tokenizer(WORLD_VOCAB)
    _, student = build_pair("tiny", vocab_size=len(tok), image_token_id=tok.image_token_id)
    save_llava(student, make_processor(tok, student.config.vision_config), tmp_path / "start")
    cfg, args = parse_stage_config(None, stage="vision", model=str(tmp_path / "start"), data=str(paths["train_scenes"]),
                                   output_dir=str(tmp_path / "vision"), max_steps=4, save_steps=2,
                                   per_device_train_batch_size=8, learning_rate=1e-2, use_cpu=True, disable_tqdm=True)
    trained, _ = load_llava(run_stage(cfg, args))
    start, _ = load_llava(tmp_path / "start")
    changed = {n for (n, a), b in zip(start.named_parameters(), trained.parameters()) if not torch.equal(a, b)}
    assert changed and all(n.startswith("model.vision_tower.") for n in changed)
    last = len(start.model.vision_tower.encoder.layers) - 1   # feature layer -2: the last layer is never read
    assert not any(f"encoder.layers.{last}." in n or "post_layernorm" in n for n in changed)
    done = json.loads((tmp_path / "vision" / STAGE_DONE).read_text())
    assert done["steps"] == 4 and done["stage"] == "vision" and "16 scenes" in done["data_report"]
    assert (tmp_path / "vision" / "checkpoint-4" / COMPLETE).is_file()
    data = SceneDataset(paths["train_scenes"], make_processor(tok, student.config.vision_config), student.config.vision_config)
    assert data[0]["targets"].shape == (16, 3)
