"""Shared fixtures: tiny tokenizers and models, built offline in milliseconds."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
from transformers.utils import logging as hf_logging

from compodistill.checkpoints import word_tokenizer

hf_logging.disable_progress_bar()

WORDS = "what colour shape is the red green blue circle square left right of above below ? .".split()


@pytest.fixture
def tok():
    "A fresh word-level tokenizer with `<image>` and the chat template."
    return word_tokenizer(WORDS)


@pytest.fixture
def toy_world(tok):
    """A function writing, under a folder, a LLaVA-format colour-question file, a tiny teacher and student, and
    returning stage settings (data, teacher, small LoRA, a few CPU steps) for `parse_stage_config`."""
    return toy_world_writer(tok)


def toy_world_writer(tok):
    "The `toy_world` fixture's function, for fixtures of a wider scope."
    def write(root, n=24):
        import json

        from PIL import Image

        from compodistill.checkpoints import make_processor, save_llava
        from compodistill.models import build_pair
        (root / "images").mkdir(parents=True)
        recs = []
        for i in range(n):
            c = ["red", "blue"][i % 2]
            Image.new("RGB", (32, 32), c).save(root / "images" / f"{i}.png")
            recs.append({"id": f"r{i}", "image": f"images/{i}.png", "conversations": [
                {"from": "human", "value": "<image>\nwhat colour is the circle ?"}, {"from": "gpt", "value": c}]})
        (root / "train.json").write_text(json.dumps(recs))
        teacher, student = build_pair("tiny", vocab_size=len(tok), image_token_id=tok.image_token_id)
        for name, m in (("teacher", teacher), ("student", student)):
            save_llava(m, make_processor(tok, m.config.vision_config), root / name)
        return dict(data=str(root / "train.json"), teacher=str(root / "teacher"), lora_r=4, lora_alpha=8,
                    matching="band", max_steps=4, per_device_train_batch_size=8, learning_rate=2e-3, use_cpu=True,
                    disable_tqdm=True, save_steps=2, max_length=64, logging_steps=1)
    return write


def toy_chain(tmp_path):
    "A pipeline factory over the toy world: lm (full weights) -> dft (LoRA + TAF, distilled) -> sft, into <tmp>/<root>."
    import json

    import yaml
    from compodistill.pipeline import Pipeline
    common = {k: v for k, v in toy_world_writer(word_tokenizer(WORDS))(tmp_path).items() if k != "teacher"}
    (tmp_path / "vocab.json").write_text(json.dumps(WORDS))
    stages = {"lm": {"stage": "lm", "model": str(tmp_path / "student"), **common},
              "dft": {"stage": "dft", "model": "@lm", "teacher": str(tmp_path / "teacher"), **common},
              "sft": {"stage": "sft", "model": "@dft", **{k: v for k, v in common.items() if k != "matching"}}}
    def pipeline(root, only=None, plant=None):
        "The pipeline into <tmp>/<root> (its stages `only`), with `plant` = {stage: {key: value, or None to drop it}}."
        edit = lambda n, s: {k: v for k, v in {**s, **(plant or {}).get(n, {})}.items() if v is not None}
        path = tmp_path / f"{root}.yaml"
        path.write_text(yaml.safe_dump({"root": str(tmp_path / root), "data_root": str(tmp_path),
                                        "init": {"preset": "tiny", "vocab": str(tmp_path / "vocab.json")},
                                        "stages": {n: edit(n, s) for n, s in stages.items() if not only or n in only}}))
        return Pipeline.from_yaml(path)
    return pipeline
