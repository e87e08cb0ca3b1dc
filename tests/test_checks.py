"""Every planted configuration error is found before the first stage trains, in one line naming the stage and the key."""
import re

import pytest

from compodistill.pipeline import run_pipeline

from conftest import toy_chain

PLANTED = [  # (stage, settings planted into it, what the message must say)
    ("sft", {"per_device_train_batch_size": 0}, "stage 'sft': per_device_train_batch_size must be ≥ 1, got 0"),
    ("sft", {"learning_rate": -1e-3}, "stage 'sft': learning_rate must be > 0, got -0.001"),
    ("sft", {"max_steps": 2.5}, "stage 'sft': max_steps must be an integer, got 2.5"),
    ("sft", {"max_steps": -3}, "stage 'sft': max_steps must be > 0 (or -1 to train num_train_epochs epochs), got -3"),
    ("sft", {"max_steps": "2.5"}, "stage 'sft': argument --max_steps"),
    ("sft", {"lora_r": 4.5}, "stage 'sft': lora_r must be an integer, got 4.5"),
    ("sft", {"lora_alpha": 0}, "stage 'sft': lora_alpha must be > 0, got 0"),
    ("sft", {"gradient_accumulation_steps": 0}, "stage 'sft': gradient_accumulation_steps must be ≥ 1, got 0"),
    ("sft", {"kd_weight": 1.0}, "stage 'sft': it distils (kd_weight 1, vat_weight 0) but names no teacher"),
    ("dft", {"teacher": None}, "stage 'dft': it distils (kd_weight 1, vat_weight 1) but names no teacher"),
    ("dft", {"matching": "diagonal"}, "stage 'dft': matching must be official, band, report:<path>:<student> or ratio:<path>"),
    ("dft", {"vat_weight": -1}, "stage 'dft': vat_weight must be ≥ 0, got -1"),
    ("dft", {"temperature": 0}, "stage 'dft': temperature must be > 0, got 0"),
    ("sft", {"data": "@data/trian.json"}, "stage 'sft': data "),
    ("dft", {"vat_queries": "all"}, "stage 'dft': vat_queries must be visual or text, got 'all'"),
    ("dft", {"vat_target": "oracle"}, "stage 'dft': vat_target must be teacher, shuffled or oracle:<question file>, got 'oracle'"),
    ("dft", {"vat_target": "oracle:@data/q.json"}, "stage 'dft': vat_target oracle needs vat_queries: text"),
    ("dft", {"vat_target": "mirror"}, "stage 'dft': vat_target must be teacher, shuffled or oracle:<question file>"),
    ("sft", {"freeze": ["tower"]}, "stage 'sft': also_train/freeze: unknown parts ['tower']"),
    ("dft", {"vat_target": "oracle:/nowhere/questions.json", "vat_queries": "text"}, "stage 'dft': vat_target /nowhere/questions.json not found"),
]


@pytest.mark.parametrize("stage,plant,message", PLANTED, ids=[f"{s}-{next(iter(p))}={next(iter(p.values()))}" for s, p, _ in PLANTED])
def test_a_planted_error_is_found_before_any_stage_trains(tmp_path, stage, plant, message):
    pipeline = toy_chain(tmp_path)
    with pytest.raises(ValueError) as dry: run_pipeline(pipeline("run", plant={stage: plant}), dry_run=True)
    assert message in str(dry.value) and "\n" not in str(dry.value)
    with pytest.raises(ValueError, match="^" + re.escape(str(dry.value)) + "$"):
        run_pipeline(pipeline("run", plant={stage: plant}))
    assert not (tmp_path / "run").exists()                                   # nothing was trained, nothing written
