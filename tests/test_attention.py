"""Visual attention capture: equal to eager attention, with gradients, only in the chosen layers."""
import copy

import pytest
import torch

from compodistill.attention import (CAPTURE_ATTENTION, capture_visual_attention,
                                    visual_attention_probs, visual_block, visual_map, visual_plan, visual_positions)
from compodistill.models import build_llava, build_pair, depth_faithful, dummy_batch, preset_config

PADS = ((0, 0), (4, 0), (0, 3), (2, 2))


def _models(preset="tiny", role="teacher"):
    cfg = preset_config(preset, role)
    eager = build_llava(copy.deepcopy(cfg), seed=0, attn_implementation="eager")
    return eager, build_llava(copy.deepcopy(cfg), seed=0), cfg


def _eager_block(attn, cap):
    "The eager maps' block at the capture's query/key positions: (batch, heads, n_q, n_k)."
    q, k = cap.query_positions, cap.key_positions
    rows = attn.gather(2, q[:, None, :, None].expand(-1, attn.shape[1], -1, attn.shape[-1]))
    return rows.gather(3, k[:, None, None, :].expand(-1, attn.shape[1], q.shape[1], -1))


@pytest.mark.parametrize("queries", ["visual", "all"])
@pytest.mark.parametrize("pads", [PADS, ((0, 0), (0, 0))], ids=["padded", "unpadded"])
def test_capture_equals_eager_output_attentions(queries, pads):
    eager, fast, cfg = _models()
    batch = dummy_batch(cfg, pads=pads)
    with torch.no_grad():
        ref = eager(**batch, output_attentions=True)
        with capture_visual_attention(fast, batch["input_ids"], [0, 3, 5], queries=queries, per_head=True) as cap:
            out = fast(**batch)
    real = batch["attention_mask"].bool()
    assert (ref.logits - out.logits)[real].abs().max() < 1e-5
    for l in (0, 3, 5):
        assert (_eager_block(ref.attentions[l], cap) - cap.maps[l]).abs().max() <= 1e-5


def test_head_average_and_depth_faithful_gqa_pair():
    """Qwen2.5-7B-shaped teacher: 28 query heads on 4 key heads, 729 visual tokens."""
    eager, fast, cfg = _models(depth_faithful("full-7b-teacher"), "teacher")
    batch = dummy_batch(cfg, pads=((0, 0), (2, 0)), n_text=3)
    with torch.no_grad():
        ref = eager(**batch, output_attentions=True)
        with capture_visual_attention(fast, batch["input_ids"], [12]) as cap: fast(**batch)
    assert cap.maps[12].shape == (2, 729, 729)
    assert (visual_block(ref.attentions[12].mean(1), cap.key_positions) - cap.maps[12]).abs().max() <= 1e-5


def test_gradients_reach_the_student_through_the_maps():
    _, student = build_pair("tiny")
    student.train()
    batch = dummy_batch(student.config, pads=PADS)
    with capture_visual_attention(student, batch["input_ids"], [1, 2]) as cap: student(**batch)
    cap.stack().pow(2).sum().backward()
    layers = student.model.language_model.layers
    assert layers[1].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert layers[0].mlp.up_proj.weight.grad.abs().sum() > 0         # earlier layers shape the queries too
    assert layers[3].self_attn.q_proj.weight.grad is None             # later layers do not
    assert student.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0


def test_gradient_of_captured_map_matches_eager():
    eager, fast, cfg = _models()
    eager.train(); fast.train()
    batch = dummy_batch(cfg, pads=PADS)
    ref = eager(**batch, output_attentions=True)
    with capture_visual_attention(fast, batch["input_ids"], [2]) as cap: fast(**batch)
    w = torch.linspace(0, 1, cap.maps[2].numel()).view_as(cap.maps[2])
    (visual_block(ref.attentions[2].mean(1), cap.key_positions) * w).sum().backward()
    (cap.maps[2] * w).sum().backward()
    g_e = eager.model.language_model.layers[2].self_attn.k_proj.weight.grad
    g_f = fast.model.language_model.layers[2].self_attn.k_proj.weight.grad
    assert torch.allclose(g_e, g_f, atol=1e-6, rtol=1e-4)


def test_only_chosen_layers_compute_probabilities(monkeypatch):
    import compodistill.attention as att
    calls = []
    real = att.visual_map
    monkeypatch.setattr(att, "visual_map", lambda *a: calls.append(1) or real(*a))
    _, fast, cfg = _models()
    batch = dummy_batch(cfg, pads=PADS)
    with torch.no_grad():
        with capture_visual_attention(fast, batch["input_ids"], [4]) as cap: fast(**batch)
        fast(**batch)                                   # outside a capture: nothing recorded
    assert len(calls) == 1 and list(cap.maps) == [4]
    assert fast.config.text_config._attn_implementation == CAPTURE_ATTENTION
    assert fast.config.vision_config._attn_implementation == "sdpa"


def test_teacher_inside_student_capture_records_nothing():
    teacher, student = build_pair("tiny")
    batch = dummy_batch(student.config, pads=PADS)
    with torch.no_grad():
        with capture_visual_attention(student, batch["input_ids"], [1]) as s_cap:
            with capture_visual_attention(teacher, batch["input_ids"], [1, 5]) as t_cap: teacher(**batch)
            student(**batch)
    with capture_visual_attention(teacher, batch["input_ids"], [1]) as solo:
        with torch.no_grad(): teacher(**batch)
    assert set(s_cap.maps) == {1} and set(t_cap.maps) == {1, 5}
    assert not torch.equal(s_cap.maps[1], t_cap.maps[1])
    assert torch.equal(solo.maps[1], t_cap.maps[1])


def test_text_only_samples_are_marked_absent():
    _, fast, cfg = _models()
    batch = dummy_batch(cfg, pads=((0, 0), (1, 0), (0, 0)), text_only=(1,))
    with torch.no_grad():
        with capture_visual_attention(fast, batch["input_ids"], [0]) as cap: fast(**batch)
    assert cap.present.tolist() == [True, False, True]
    assert torch.isfinite(cap.maps[0]).all()


def test_rows_sum_to_at_most_one_and_equal_one_over_visual_prefix():
    """A visual query's attention over visual keys sums to < 1 (text before the image takes the rest)."""
    _, fast, cfg = _models()
    batch = dummy_batch(cfg, pads=PADS)
    with torch.no_grad():
        with capture_visual_attention(fast, batch["input_ids"], [2], queries="all") as cap: fast(**batch)
    sums = cap.maps[2].sum(-1)
    assert (sums <= 1 + 1e-5).all() and (sums[batch["attention_mask"].bool()] > 0).all()


def test_errors_name_the_problem():
    _, fast, cfg = _models()
    batch = dummy_batch(cfg, pads=PADS)
    with pytest.raises(ValueError, match=r"layers \[6\] out of range: the LLM has 6 layers"):
        with capture_visual_attention(fast, batch["input_ids"], [6]): pass
    with pytest.raises(ValueError, match="queries must be"):
        with capture_visual_attention(fast, batch["input_ids"], [0], queries="text"): pass
    with pytest.raises(ValueError, match="different numbers of visual tokens"):
        visual_positions(torch.tensor([[7, 7, 1], [7, 1, 1]]), 7)
    with capture_visual_attention(fast, batch["input_ids"], [0, 1]) as cap: pass
    with pytest.raises(RuntimeError, match=r"layers \[0, 1\] were not captured"): cap.stack()


def test_probs_kernel_handles_float_additive_masks():
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 6, 8), torch.randn(2, 2, 6, 8)
    causal = torch.ones(6, 6).tril().bool()[None, None].expand(2, 1, 6, 6)
    additive = torch.zeros(2, 1, 6, 6).masked_fill(~causal, torch.finfo(torch.float32).min)
    idx = torch.tensor([[1, 2, 5], [0, 3, 4]])
    a = visual_attention_probs(q, k, causal, 8 ** -.5, idx, idx)
    b = visual_attention_probs(q, k, additive, 8 ** -.5, idx, idx)
    c = visual_attention_probs(q, k, None, 8 ** -.5, idx, idx)
    assert torch.allclose(a, b) and torch.allclose(a, c)


@pytest.mark.parametrize("queries", ["visual", "all"])
@pytest.mark.parametrize("per_head", [False, True])
def test_blocked_kernel_matches_the_equation_in_values_and_gradients(queries, per_head):
    """GQA, a left-padded sample whose first rows see nothing, scattered visual keys, one row per block."""
    torch.manual_seed(0)
    q, k = torch.randn(3, 6, 14, 8, requires_grad=True), torch.randn(3, 2, 14, 8, requires_grad=True)
    mask = torch.ones(3, 1, 14, 14, dtype=torch.bool).tril()
    mask[1, :, :, :4] = False
    vis = torch.tensor([[2, 3, 4, 5, 6, 7], [4, 6, 7, 9, 12, 13], [8, 9, 10, 11, 12, 13]])
    q_idx = vis if queries == "visual" else torch.arange(14).expand(3, -1)
    ref = visual_attention_probs(q, k, mask, 8 ** -.5, q_idx, vis)
    ref = ref if per_head else ref.mean(1)
    for block_bytes in (1, 4 * 6 * 14 * 5, None):           # one row, five rows, the device's default
        plan = visual_plan(mask, q_idx, vis, 14, 14, heads=6, block_bytes=block_bytes)
        got = visual_map(q, k, plan, 8 ** -.5, per_head)
        g = torch.randn_like(ref)
        assert (got - ref).abs().max() < 1e-6
        for a, b in zip(torch.autograd.grad((got * g).sum(), (q, k)), torch.autograd.grad((ref * g).sum(), (q, k), retain_graph=True)):
            assert (a - b).abs().max() < 1e-5
    assert len(visual_plan(mask, q_idx, vis, 14, 14, heads=6, block_bytes=1).blocks[0]) == q_idx.shape[1]
    assert visual_plan(None, vis, vis, 14, 14, heads=6, block_bytes=1).blocks[0][0].keys == 3   # row at position 2 sees keys 0..2


def test_capture_under_gradient_checkpointing_gives_the_same_gradients():
    cfg = preset_config("tiny", "teacher")
    plain, ckpt = (build_llava(copy.deepcopy(cfg), seed=0) for _ in range(2))
    ckpt.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batch = dummy_batch(cfg, pads=((0, 0), (2, 0)))
    grads = []
    for m in (plain, ckpt):
        m.train()
        with capture_visual_attention(m, batch["input_ids"], [1, 3]) as cap: out = m(**batch)
        (cap.stack().pow(2).sum() + out.logits.mean()).backward()
        grads.append(m.model.language_model.layers[1].self_attn.q_proj.weight.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and grads[0].abs().sum() > 0
    assert ckpt.model.language_model.layers[1].gradient_checkpointing                     # restored after the capture
