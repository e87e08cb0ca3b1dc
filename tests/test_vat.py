"""VAT: group layer matching presets and rules, and the loss."""
import math

import pytest
import torch

from compodistill.vat import (OFFICIAL_WINDOWS, adaptive_matching, band_matching, group_matching, group_teacher_maps,
                              official_matching, outlier_filter, report_matching, simple_matching, vat_loss,
                              vat_pair_losses)

# The official code's ATTENTION_TARGET_LAYERS (00_paper, official VAT): per depth, 7 start layers and the teacher group size.
PAPER_TABLE = {24: (list(range(8, 15)), 2), 28: (list(range(9, 16)), 3), 32: (list(range(11, 18)), 3),
               40: (list(range(13, 20)), 5)}


@pytest.mark.parametrize("teacher_depth", [24, 28, 32, 40])
def test_official_matching_equals_the_papers_layer_lists(teacher_depth):
    starts, g = PAPER_TABLE[teacher_depth]
    m = official_matching(teacher_depth, 24)
    assert list(m.student_layers) == PAPER_TABLE[24][0]
    assert [list(grp) for grp in m.teacher_groups] == [list(range(s, s + g)) for s in starts]


def test_the_general_rule_reproduces_the_official_groups():
    """n = m - k + 1 over the official windows gives the official group sizes (e.g. 11 teacher layers, k = 7 → 5)."""
    for depth, (start, g) in OFFICIAL_WINDOWS.items():
        m = group_matching(range(start, start + 7 + g - 1), range(8, 15), depth, 24)
        assert m.teacher_groups == official_matching(depth, 24).teacher_groups
        assert {len(grp) for grp in m.teacher_groups} == {g}


def test_band_matching_covers_the_band_with_sliding_windows():
    m = band_matching(40, 24)
    assert m.student_layers == tuple(range(7, 17)) and m.teacher_layers == list(range(12, 28))
    assert all(b[0] - a[0] == 1 for a, b in zip(m.teacher_groups, m.teacher_groups[1:]))   # stride 1
    assert {len(g) for g in m.teacher_groups} == {16 - 10 + 1}
    assert band_matching(40, 24, k=7).student_layers == tuple(range(8, 15))


def test_infeasible_settings_raise():
    with pytest.raises(ValueError, match="larger than the teacher window"): group_matching([3, 4], [1, 2, 3], 8, 6)
    with pytest.raises(ValueError, match="out of range"): group_matching(range(30, 42), range(8, 15), 40, 24)
    with pytest.raises(ValueError, match="no official window for depth 36"): official_matching(36, 24)
    with pytest.raises(ValueError, match="empty"): group_matching([], [1], 8, 6)


def test_simple_adaptive_and_report_matching():
    assert simple_matching(range(10), range(5), 10, 5).teacher_groups == ((0,), (2,), (4,), (7,), (9,))
    sim = torch.zeros(6, 4); sim[5, 1] = sim[2, 2] = 1
    assert adaptive_matching(sim, [1, 2]).teacher_groups == ((5,), (2,))
    report = {"teacher": {"layers": 12}, "students": {"s": {"layers": 6, "band_layers": [2, 3],
                                                            "best_teacher_layer": [0, 1, 4, 7, 9, 11]}}}
    m = report_matching(report, "s")
    assert m.student_layers == (2, 3) and m.teacher_groups == ((4, 5, 6), (5, 6, 7))
    report["students"]["s"]["best_teacher_layer"] = [0, 1, 5, 5, 9, 11]
    with pytest.raises(ValueError, match="span only 5..5"): report_matching(report, "s")


def test_group_teacher_maps_averages_each_window():
    maps = {l: torch.full((2, 3, 4), float(l)) for l in range(13, 24)}
    grouped = group_teacher_maps(maps, official_matching(40, 24))
    assert grouped.shape == (7, 2, 3, 4)
    assert grouped[:, 0, 0, 0].tolist() == [15.0 + j for j in range(7)]          # mean of 13..17 is 15, ...
    with pytest.raises(KeyError, match="missing for layers"): group_teacher_maps({13: maps[13]}, official_matching(40, 24))


def test_loss_matches_a_hand_computed_example():
    S = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    T = torch.tensor([[0.6, 0.2, 0.2], [0.2, 0.2, 0.6]])
    # thresholds mean + std (unbiased): S 0.3333 + 0.2733 = 0.607 (drops 0.8); T 0.3333 + 0.2066 = 0.540 (drops both 0.6)
    # kept in both: S' = [[0, .3, .2], [.1, .1, 0]], T' = [[0, .2, .2], [.2, .2, 0]]
    # rows with T' != 0 per key: [1, 2, 1] → s = [.1, .2, .2], t = [.2, .2, .2]; cos = 0.1 / (0.3 * sqrt(0.12))
    expected = 1 - 0.1 / (0.3 * math.sqrt(0.12))
    assert abs(vat_pair_losses(S[None, None], T[None, None]).item() - expected) < 1e-6
    s_f, t_f = outlier_filter(S, T)
    assert torch.allclose(s_f, torch.tensor([[0, .3, .2], [.1, .1, 0]]))
    assert torch.allclose(t_f, torch.tensor([[0, .2, .2], [.2, .2, 0]]))


def test_loss_properties():
    torch.manual_seed(0)
    s = torch.rand(3, 4, 5, 6).softmax(-1)
    t = torch.rand(3, 4, 5, 6).softmax(-1)
    assert vat_loss(s, s).abs() < 1e-6
    perm = torch.randperm(4)
    assert torch.allclose(vat_loss(s, t), vat_loss(s[:, perm], t[:, perm]))
    assert torch.allclose(vat_loss(s, t, reduction="sum"), 3 * vat_loss(s, t, reduction="mean"))
    assert torch.allclose(vat_loss(s, t * 7), vat_loss(s, t))                   # scale-invariant (cosine)
    with pytest.raises(ValueError, match="reduction must be"): vat_loss(s, t, reduction="max")
    with pytest.raises(ValueError, match="differ in shape"): vat_loss(s, t[:2])


def test_loss_backpropagates_only_into_the_student_and_skips_text_only_samples():
    torch.manual_seed(1)
    s = torch.rand(2, 3, 4, 4).softmax(-1).requires_grad_()
    t = torch.rand(2, 3, 4, 4).softmax(-1).requires_grad_()
    vat_loss(s, t, present=torch.tensor([True, False, True])).backward()
    assert t.grad is None
    assert s.grad[:, 1].abs().sum() == 0 and s.grad[:, 0].abs().sum() > 0
    none = vat_loss(s, t, present=torch.zeros(3, dtype=torch.bool))
    assert none.item() == 0 and none.requires_grad


def test_one_pass_vat_equals_vat_on_kept_maps_with_gradients():
    """Teacher targets accumulated as the layers run, student pair losses made as its layers run: the same loss and
    gradients as `vat_loss` on every kept map — and the teacher keeps no map."""
    from compodistill.attention import capture_visual_attention
    from compodistill.models import build_pair, dummy_batch
    from compodistill.vat import PairLosses, TeacherTargets, reduce_pair_losses, vat_forward
    teacher, student = build_pair("tiny")
    student.train()
    batch = dummy_batch(student.config, pads=((0, 0), (3, 0), (0, 2)), text_only=(2,))
    m = group_matching(range(1, 5), range(1, 3), 6, 4)
    weight = student.model.language_model.layers[2].self_attn.k_proj.weight
    with torch.no_grad(), capture_visual_attention(teacher, batch["input_ids"], m.teacher_layers) as t_cap: teacher(**batch)
    with capture_visual_attention(student, batch["input_ids"], m.student_layers) as s_cap: student(**batch)
    kept = vat_loss(s_cap.stack(), group_teacher_maps(t_cap.maps, m), s_cap.present, reduction="mean")
    g_kept = torch.autograd.grad(kept, weight)[0]
    targets = TeacherTargets(m)
    with pytest.raises(KeyError, match="missing for layers"): targets.maps()
    with torch.no_grad(), capture_visual_attention(teacher, batch["input_ids"], m.teacher_layers, reduce=targets) as t2:
        teacher(**batch)
    assert t2.maps == {} and torch.allclose(targets.maps(), group_teacher_maps(t_cap.maps, m), atol=1e-7)
    with capture_visual_attention(student, batch["input_ids"], m.student_layers, reduce=PairLosses(m, targets.maps())) as s2:
        student(**batch)
    assert s2.stack().shape == (2, 3)
    one_pass = reduce_pair_losses(s2.stack(), s2.present, reduction="mean")
    assert torch.allclose(one_pass, kept, atol=1e-6)
    g_one_pass = torch.autograd.grad(one_pass, weight)[0]
    assert torch.allclose(g_one_pass, g_kept, atol=1e-6) and g_kept.abs().sum() > 0
    t_logits, out, loss = vat_forward(teacher, student, batch, m, reduction="mean")  # the same, from batch to loss
    assert torch.equal(loss, one_pass) and torch.equal(torch.autograd.grad(loss, weight)[0], g_one_pass)
    with torch.no_grad(): assert torch.equal(t_logits, teacher(**batch).logits)
    assert torch.equal(out.logits, student(**batch).logits)
