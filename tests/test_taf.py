"""TAF: fetching the teacher's projector, saving, folding exactly, exporting (Auto-loadable and plain)."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import (AutoConfig, AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration)
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from compodistill.checkpoints import load_llava, make_processor, save_llava
from compodistill.models import build_llava, build_pair, dummy_batch, preset_config
from compodistill.models import TAFProjector, WideProjector
from compodistill.taf import attach_taf, fold_taf, projector_inputs, refit_plain_projector


@pytest.fixture
def taf_pair(tok):
    teacher, student = build_pair("tiny", vocab_size=len(tok), image_token_id=tok.image_token_id)
    return teacher, attach_taf(student, teacher), make_processor(tok, student.config.vision_config)


def test_only_the_adapter_trains_and_visual_tokens_are_its_image(taf_pair):
    teacher, student, _ = taf_pair
    proj = student.model.multi_modal_projector
    assert [n for n, p in proj.named_parameters() if p.requires_grad] == ["adapter.weight", "adapter.bias"]
    src = teacher.model.multi_modal_projector
    assert torch.equal(proj.linear_1.weight, src.linear_1.weight) and torch.equal(proj.linear_2.bias, src.linear_2.bias)
    assert proj.linear_1.weight.data_ptr() != src.linear_1.weight.data_ptr()          # a copy, not shared
    x = torch.randn(3, 5, 32)
    assert torch.allclose(proj(x), proj.adapter(src(x)), atol=1e-6)


def test_round_trip_and_exact_fold(taf_pair, tmp_path):
    _, student, proc = taf_pair
    batch = dummy_batch(student.config, pads=((0, 0), (3, 0)))
    with torch.no_grad(): before = student(**batch).logits
    again, _ = load_llava(save_llava(student, proc, tmp_path / "taf"))
    assert isinstance(again.model.multi_modal_projector, TAFProjector)
    with torch.no_grad(): assert torch.equal(again(**batch).logits, before)
    fold_taf(student)
    assert type(student.model.multi_modal_projector) is WideProjector and not hasattr(student.config, "taf")
    with torch.no_grad(): assert (student(**batch).logits - before).abs().max() <= 1e-5
    exported, _ = load_llava(save_llava(student, proc, tmp_path / "folded"))
    with torch.no_grad(): assert (exported(**batch).logits - before).abs().max() <= 1e-5
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        LlavaForConditionalGeneration.from_pretrained(tmp_path / "folded")                # loud, never silent
    with pytest.raises(TypeError, match="not a TAFProjector"): fold_taf(student)


def test_fold_to_a_plain_checkpoint_when_the_teacher_is_narrower(tok, tmp_path):
    teacher, student = build_pair("tiny", vocab_size=len(tok), image_token_id=tok.image_token_id)
    teacher.model.multi_modal_projector.linear_1 = nn.Linear(32, 20)
    teacher.model.multi_modal_projector.linear_2 = nn.Linear(20, 20)
    attach_taf(student, teacher)
    batch = dummy_batch(student.config)
    with torch.no_grad(): before = student(**batch).logits
    fold_taf(student)
    path = save_llava(student, make_processor(tok, student.config.vision_config), tmp_path / "plain")
    plain = LlavaForConditionalGeneration.from_pretrained(path)
    with torch.no_grad(): assert (plain(**batch).logits - before).abs().max() <= 1e-5
    assert plain.generate(**batch, max_new_tokens=2, do_sample=False).shape[1] == batch["input_ids"].shape[1] + 2


def test_attach_refuses_another_vision_tower(tok):
    teacher = build_llava(preset_config("small", "teacher"))
    student = build_llava(preset_config("tiny", "student"))
    with pytest.raises(ValueError, match="TAF needs one vision tower"): attach_taf(student, teacher)


def _greedy(model, batch, n=6):
    with torch.no_grad(): return model.generate(**batch, max_new_tokens=n, do_sample=False, pad_token_id=0)


def test_export_loads_through_the_auto_classes_and_generates_the_same_tokens(taf_pair, tmp_path):
    _, student, proc = taf_pair
    batch = dummy_batch(student.config, pads=((0, 0), (3, 0)))
    before = _greedy(student, batch)
    loaded, _ = load_llava(save_llava(student, proc, tmp_path / "taf"))             # as `compodistill export` starts
    path = save_llava(fold_taf(loaded), proc, tmp_path / "release")
    assert AutoConfig.from_pretrained(path).model_type == "compodistill_llava"
    auto = AutoModelForImageTextToText.from_pretrained(path)
    assert type(auto).__name__ == "CompoDistillLlavaForConditionalGeneration"
    assert type(AutoProcessor.from_pretrained(path)).__name__ == "LlavaProcessor"
    assert torch.equal(_greedy(auto, batch), before)                                # exactly the same tokens
    again, _ = load_llava(path)
    assert type(again) is type(auto) and torch.equal(_greedy(again, batch), before)
    code = ("import sys, compodistill; from transformers import AutoModelForImageTextToText as A; "
            "print(type(A.from_pretrained(sys.argv[1]).model.multi_modal_projector).__name__)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and r.stdout.strip() == "WideProjector", r.stderr     # `import compodistill` registers it


def test_plain_refit_loads_in_vanilla_llava_with_a_small_measured_error(taf_pair, tmp_path):
    _, student, proc = taf_pair
    exact, _ = load_llava(save_llava(fold_taf(student), proc, tmp_path / "release"))
    student = copy.deepcopy(exact)
    pixels = torch.cat([dummy_batch(student.config, batch_size=8, seed=s)["pixel_values"] for s in range(8)])
    features = projector_inputs(student, pixels)
    assert features.shape == (64 * 16, student.config.vision_config.hidden_size)  # one row per visual token
    errors = refit_plain_projector(student, features, steps=100)
    assert errors["rel_error"] < 0.05 and errors["rel_error_centered"] <= errors["start_centered"] < 0.5, errors
    path = save_llava(student, proc, tmp_path / "plain")
    assert AutoConfig.from_pretrained(path).model_type == "llava"
    plain, info = LlavaForConditionalGeneration.from_pretrained(path, output_loading_info=True)   # stock transformers
    assert not info["missing_keys"] and not info["mismatched_keys"] and not info["unexpected_keys"]
    assert type(plain.model.multi_modal_projector) is LlavaMultiModalProjector
    batch = dummy_batch(student.config, seed=99)
    with torch.no_grad():
        t_exact, t_plain = (torch.stack(list(m.model.get_image_features(batch["pixel_values"]).pooler_output))
                            for m in (exact, plain))
    assert ((t_plain - t_exact).norm() / t_exact.norm()).item() < 0.05
    assert _greedy(plain, batch).shape == _greedy(exact, batch).shape
