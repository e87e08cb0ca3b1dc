"""Presets build and run; the compatibility check names every mismatch."""
import pytest
import torch

from compodistill.compat import IncompatiblePairError, check_compatible
from compodistill.models import (PRESETS, build_llava, build_pair, count_parameters, depth_faithful, dummy_batch,
                                 preset_config, preset_parameters, visual_token_count)

RUNNABLE = ["tiny", "small", "grid"] + [depth_faithful(n) for n in PRESETS if n.startswith("full")]


@pytest.mark.parametrize("preset", RUNNABLE, ids=lambda p: p if isinstance(p, str) else p.name)
def test_preset_pair_forward_with_images(preset):
    teacher, student = build_pair(preset)
    check_compatible(teacher, student)
    batch = dummy_batch(teacher.config, batch_size=2, n_text=5)
    n_img = visual_token_count(teacher.config.vision_config)
    for model in (teacher, student):
        with torch.no_grad(): out = model(**batch)
        assert out.logits.shape == (2, n_img + 5, model.config.text_config.vocab_size)
        assert torch.isfinite(out.logits).all()
    assert len(teacher.model.language_model.layers) > len(student.model.language_model.layers)


@pytest.mark.parametrize("name", [n for n in PRESETS if n.startswith("full")])
def test_depth_faithful_keeps_depths_heads_and_729_tokens(name):
    full, small = PRESETS[name], depth_faithful(name)
    for role in ("teacher", "student"):
        cfg = preset_config(small, role)
        assert cfg.text_config.num_hidden_layers == full.llm(role).depth
        assert cfg.text_config.num_attention_heads == full.llm(role).arch["num_attention_heads"]
        assert visual_token_count(cfg.vision_config) == 729


def test_full_pair_parameter_counts_match_the_published_models():
    counts = preset_parameters("full")
    assert 3.9e9 < counts["teacher"]["llm"] < 4.0e9      # Qwen1.5-4B
    assert 1.8e9 < counts["student"]["llm"] < 1.9e9      # Qwen1.5-1.8B
    assert 4.0e8 < counts["teacher"]["vision"] < 4.4e8   # SigLIP-so400m vision tower
    assert counts["teacher"]["vision"] == counts["student"]["vision"]


def test_full_configs_use_the_papers_vision_choices():
    cfg = preset_config("full", "student")
    assert (cfg.vision_feature_layer, cfg.vision_feature_select_strategy) == (-2, "full")
    assert cfg.image_seq_length == 729 and cfg.projector_hidden_act == "gelu"


def test_build_is_seeded():
    a, b, c = (build_llava(preset_config("tiny", "student"), seed=s) for s in (1, 1, 2))
    sa, sb, sc = (m.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_count_parameters_partitions_the_model():
    c = count_parameters(build_llava(preset_config("tiny", "teacher")))
    assert c["vision"] + c["projector"] + c["llm"] == c["total"] > 0


def test_image_token_outside_vocabulary_is_refused():
    with pytest.raises(ValueError, match="outside the LLM vocabulary"):
        preset_config("tiny", "student", vocab_size=10, image_token_id=10)


def test_incompatible_vision_tower_is_named():
    teacher, _ = build_pair("tiny")
    other = build_llava(preset_config("small", "student"))
    with pytest.raises(IncompatiblePairError) as e: check_compatible(teacher, other)
    msg = str(e.value)
    assert "vision tower config hidden_size" in msg and "visual tokens per image: teacher 16 != student 64" in msg


def test_different_vision_weights_are_named():
    teacher, student = build_pair("tiny", seed=0)
    student.model.vision_tower.load_state_dict(build_pair("tiny", seed=3)[0].model.vision_tower.state_dict())
    with pytest.raises(IncompatiblePairError, match="vision tower weights differ"): check_compatible(teacher, student)
    check_compatible(teacher, student, compare_vision_weights=False)


def test_student_vocabulary_larger_than_teacher_is_named():
    teacher = build_llava(preset_config("tiny", "teacher", vocab_size=100, image_token_id=99))
    student = build_llava(preset_config("tiny", "student", vocab_size=120, image_token_id=99))
    student.model.vision_tower.load_state_dict(teacher.model.vision_tower.state_dict())
    with pytest.raises(IncompatiblePairError, match="vocab_size: student 120 > teacher 100"):
        check_compatible(teacher, student)


def test_image_token_mismatch_is_named():
    teacher = build_llava(preset_config("tiny", "teacher", vocab_size=100, image_token_id=98))
    student = build_llava(preset_config("tiny", "student", vocab_size=100, image_token_id=99))
    with pytest.raises(IncompatiblePairError, match="image_token_id: teacher 98 != student 99"):
        check_compatible(teacher, student, compare_vision_weights=False)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(KeyError, match="known presets: tiny, small, grid, full"): preset_config("huge", "teacher")
