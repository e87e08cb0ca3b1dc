"""Where a model looks: the attention-to-object ratio (by hand, through the capture, against eager attention) and the
layer matching derived from it."""
import copy

import pytest
import torch

from compodistill.attention import capture_visual_attention
from compodistill.misalignment import looking_profile, object_attention_ratio
from compodistill.models import build_llava, dummy_batch, preset_config
from compodistill.vat import LayerMatching, band_matching, ratio_matching, vat_forward


def _row(n_v=16, on=5, share=0.5, visual_mass=1.0):
    "One query row over `n_v` visual keys: `share` of its visual mass on key `on`, the rest spread evenly."
    row = torch.full((n_v,), (1 - share) / (n_v - 1))
    row[on] = share
    return row * visual_mass


def test_half_the_mass_on_one_of_16_cells_is_ratio_8_and_uniform_is_1():
    maps = torch.stack([_row(), torch.full((16,), 1 / 16)])[None]  # (batch 1, 2 positions, 16 keys)
    mean, per_item = object_attention_ratio(maps, [[(0, [5]), (1, [5]), (1, [0, 1, 2, 3])]])
    assert torch.allclose(per_item, torch.tensor([8.0, 1.0, 1.0]))
    assert torch.allclose(mean, per_item.mean())


def test_mass_on_text_keys_does_not_change_the_ratio():
    "The visual keys are renormalised: a row with 70% of its attention on text gives the same ratio."
    maps = torch.stack([_row(), _row(visual_mass=0.3)])[None]
    _, per_item = object_attention_ratio(maps, [[(0, [5]), (1, [5]), (0, [5, 9]), (1, [5, 9])]])
    assert torch.allclose(per_item[:2], torch.tensor([8.0, 8.0]))
    assert torch.allclose(per_item[2], per_item[3]) and torch.allclose(per_item[2], torch.tensor((0.5 + 0.5 / 15) * 8))


def test_any_number_of_visual_tokens_and_leading_layer_dimensions():
    layer0, layer1 = _row(n_v=9, on=4), torch.full((9,), 1 / 9)
    maps = torch.stack([torch.stack([layer0, layer0]), torch.stack([layer1, layer1])])[:, None]  # (2, 1, 2, 9)
    mean, per_item = object_attention_ratio(maps, [[(0, [4]), (1, [4])]])
    assert mean.shape == (2,) and per_item.shape == (2, 2)
    assert torch.allclose(mean, torch.tensor([4.5, 1.0]))


def test_bad_items_raise_named_errors():
    maps = torch.stack([_row(), torch.zeros(16)])[None]
    cases = [([[(0, [5])], [(0, [5])]], "items are given for 2 samples, the maps hold 1"),
             ([[]], "no items"),
             ([[(0, [5]), (2, [5])]], "sample 0, item 1: query position 2 is outside 0..1"),
             ([[(0, [16])]], "not a non-empty subset of 0..15"),
             ([[(0, [])]], "not a non-empty subset"),
             ([[(1, [5])]], "attends to no visual token")]
    for items, message in cases:
        with pytest.raises(ValueError, match=message): object_attention_ratio(maps, items)


def _peaked_pair():
    "An eager and a capturing copy of the tiny teacher, with sharpened queries so that its attention is far from uniform."
    cfg = preset_config("tiny", "teacher")
    eager = build_llava(copy.deepcopy(cfg), seed=0, attn_implementation="eager")
    with torch.no_grad():
        for layer in eager.model.language_model.layers: layer.self_attn.q_proj.weight.mul_(30)
    fast = build_llava(copy.deepcopy(cfg), seed=0)
    fast.load_state_dict(eager.state_dict())
    return eager, fast, cfg


def test_ratio_through_the_capture_equals_the_ratio_of_eager_attention():
    eager, fast, cfg = _peaked_pair()
    batch = dummy_batch(cfg, pads=((0, 0), (3, 0), (0, 2)))
    items = [[(16, [5]), (23, [0, 15])], [(19, [2, 3, 7]), (26, [12])], [(20, [10]), (21, [1, 4])]]
    with torch.no_grad(): att = torch.stack(eager(**batch, output_attentions=True).attentions).mean(2)  # (L, B, T, T)
    ref = []
    for b, sample in enumerate(items):
        vis = (batch["input_ids"][b] == cfg.image_token_id).nonzero()[:, 0]
        for q, cells in sample:
            row = att[:, b, q, vis]
            ref.append(row[:, cells].sum(-1) / row.sum(-1) / (len(cells) / len(vis)))
    ref = torch.stack(ref, -1)
    mean, per_item = looking_profile(fast, batch, items)
    assert per_item.shape == (6, 6) and (per_item - ref).abs().max() <= 1e-5
    assert torch.allclose(mean, ref.mean(-1), atol=1e-5)
    assert (ref - 1).abs().max() > 0.5  # the check is on attention far from uniform


def test_ratio_is_differentiable_through_the_capture():
    _, fast, cfg = _peaked_pair()
    batch = dummy_batch(cfg)
    with capture_visual_attention(fast, batch["input_ids"], [2], queries="all") as cap: fast(**batch)
    mean, _ = object_attention_ratio(cap.stack(), [[(20, [5])], [(23, [6, 7])]])
    mean.sum().backward()
    assert fast.model.language_model.layers[2].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_looking_profile_needs_an_image_in_every_sample():
    _, fast, cfg = _peaked_pair()
    batch = dummy_batch(cfg, text_only=(1,))
    with pytest.raises(ValueError, match="needs an image"): looking_profile(fast, batch, [[(20, [5])], [(20, [5])]])


def test_peak_at_teacher_layer_0_aligns_student_layer_0_with_it():
    m = ratio_matching([7.3, 0.6, 0.8, 0.5], 3)
    assert m == LayerMatching((0,), ((0,),), "ratio") and m != band_matching(4, 3)
    assert ratio_matching(torch.tensor([6.0, 3.0, 0.8, 0.7, 0.6, 0.7, 0.8, 0.6]), 4, k=2) == \
        LayerMatching((0,), ((0, 1),), "ratio")


def test_the_window_follows_the_peak_in_relative_depth():
    assert ratio_matching([0.11, 0.76, 1.02, 0.73], 3).student_layers == (1,)  # T2 (depth 2/3) → S1 (depth 1/2)
    assert ratio_matching([0.11, 0.76, 1.02, 0.73], 3, k=2) == LayerMatching((1,), ((1, 2),), "ratio")
    assert ratio_matching([1, 1, 1, 9], 3) == LayerMatching((2,), ((3,),), "ratio")
    assert ratio_matching([1, 5, 5, 1, 1, 1, 1, 1], 8, k=2) == LayerMatching((1, 2), ((1,), (2,)), "ratio")


def test_ratio_matching_rejects_bad_profiles():
    with pytest.raises(ValueError, match="k must be between 1 and the teacher's 2 layers"): ratio_matching([1.0, 2.0], 3, k=3)
    with pytest.raises(ValueError, match="finite"): ratio_matching([1.0, float("inf")], 3)


def test_vat_runs_on_a_ratio_matching():
    cfg_t, cfg_s = preset_config("tiny", "teacher"), preset_config("tiny", "student")
    teacher, student = build_llava(cfg_t, seed=0), build_llava(cfg_s, seed=1)
    batch = dummy_batch(cfg_s)
    batch["labels"] = batch["input_ids"].clone()
    m = ratio_matching([5.0, 2.0, 1.0, 1.0, 1.0, 1.0], 4, k=2)
    _, _, loss = vat_forward(teacher, student, batch, m)
    loss.backward()
    assert torch.isfinite(loss) and student.model.language_model.layers[0].self_attn.q_proj.weight.grad is not None
