"""TAF: fetching the teacher's projector, saving, folding exactly, exporting."""
import pytest
import torch
from torch import nn
from transformers import LlavaForConditionalGeneration

from compodistill.checkpoints import load_llava, make_processor, save_llava
from compodistill.models import build_llava, build_pair, dummy_batch, preset_config
from compodistill.models import TAFProjector, WideProjector
from compodistill.taf import attach_taf, fold_taf


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
