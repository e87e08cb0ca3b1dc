"""Logit distillation and the total loss."""
import math

import pytest
import torch

from compodistill.objective import DistillationLoss, NonFiniteLossError, answer_positions, logit_kd_loss
from compodistill.vat import vat_loss


def _direct_kl(s, t, labels, tau):
    """Forward KL by explicit loops over the answer positions and the vocabulary."""
    total, n = 0.0, 0
    for b in range(labels.shape[0]):
        for i in range(labels.shape[1] - 1):
            if labels[b, i + 1] == -100: continue
            zs, zt = s[b, i, :].tolist(), t[b, i, : s.shape[-1]].tolist()
            ls = [z / tau - math.log(sum(math.exp(y / tau) for y in zs)) for z in zs]
            lt = [z / tau - math.log(sum(math.exp(y / tau) for y in zt)) for z in zt]
            total += sum(math.exp(a) * (a - c) for a, c in zip(lt, ls)); n += 1
    return total / n * tau ** 2


@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_kd_equals_direct_computation_on_a_toy_vocabulary(tau):
    torch.manual_seed(0)
    s, t = torch.randn(2, 6, 5), torch.randn(2, 6, 8) * 2          # teacher vocabulary larger: cut to 5
    labels = torch.tensor([[-100, -100, 1, 2, 3, -100], [-100, 4, 4, -100, -100, 0]])
    assert abs(logit_kd_loss(s, t, labels, tau).item() - _direct_kl(s, t, labels, tau)) < 1e-5


def test_answer_positions_are_shifted_labels():
    labels = torch.tensor([[-100, -100, 7, 8]])
    assert answer_positions(labels).tolist() == [[False, True, True, False]]


def test_kd_gradients_only_reach_the_student():
    s = torch.randn(1, 4, 6, requires_grad=True)
    t = torch.randn(1, 4, 6, requires_grad=True)
    logit_kd_loss(s, t, torch.tensor([[-100, 1, 2, 3]])).backward()
    assert t.grad is None and s.grad.abs().sum() > 0 and s.grad[0, -1].abs().sum() == 0


def test_kd_errors():
    s, t = torch.randn(1, 4, 6), torch.randn(1, 4, 5)
    lab = torch.tensor([[-100, 1, 2, 3]])
    with pytest.raises(ValueError, match="smaller than the student's"): logit_kd_loss(s, t, lab)
    with pytest.raises(ValueError, match="different positions"): logit_kd_loss(s, torch.randn(1, 3, 6), lab)
    with pytest.raises(ValueError, match="kind must be"): logit_kd_loss(s, s, lab, kind="js")
    assert logit_kd_loss(s, s, torch.full((1, 4), -100)).item() == 0


def test_total_loss_terms_and_weights():
    torch.manual_seed(1)
    s, t = torch.randn(2, 5, 6), torch.randn(2, 5, 6)
    lab = torch.tensor([[-100, -100, 1, 2, 3], [-100, 1, 2, -100, -100]])
    maps_s, maps_t = torch.rand(3, 2, 4, 4).softmax(-1), torch.rand(3, 2, 4, 4).softmax(-1)
    vat = vat_loss(maps_s, maps_t, torch.tensor([True, True]))
    obj = DistillationLoss(kd_weight=0.5, vat_weight=2.0)
    out = obj(torch.tensor(1.5), s, t, lab, vat)
    assert out["kd"] > 0 and out["vat"] is vat and vat > 0
    assert torch.allclose(out["loss"], 1.5 + 0.5 * out["kd"] + 2.0 * vat)
    plain = DistillationLoss(kd_weight=0, vat_weight=0)(torch.tensor(1.5), s, t, lab, vat)
    assert plain["loss"].item() == 1.5 and plain["kd"].item() == 0 and plain["vat"].item() == 0


def test_non_finite_terms_name_the_step_and_term():
    s = torch.randn(1, 4, 6); s[0, 1, 0] = float("inf")
    with pytest.raises(NonFiniteLossError, match="step 12: the kd loss"):
        DistillationLoss()(torch.tensor(1.0), s, torch.randn(1, 4, 6), torch.tensor([[-100, 1, 2, 3]]), step=12)
    with pytest.raises(NonFiniteLossError, match="step 3: the vat loss is nan"):
        DistillationLoss()(torch.tensor(1.0), vat=torch.tensor(float("nan")), step=3)
    with pytest.raises(ValueError, match="weights must be >= 0"): DistillationLoss(kd_weight=-1)


def test_kd_masks_tokens_both_models_rule_out():
    "A token with teacher probability 0 and student log-probability -inf adds 0 (the official mask), not NaN."
    torch.manual_seed(0)
    t, s = torch.randn(1, 4, 6) * 3, torch.randn(1, 4, 6)
    labels = torch.tensor([[-100, 2, 3, 4]])
    t[..., 0] = s[..., 0] = float("-inf")
    for kind in ("kl", "ce"):
        loss = logit_kd_loss(s.requires_grad_(), t, labels, kind=kind)
        assert torch.isfinite(loss)
        loss.backward()
        assert torch.isfinite(s.grad).all()
        s.grad = None
    s = s.detach()
    assert logit_kd_loss(s, t, labels).item() == pytest.approx(logit_kd_loss(s[..., 1:], t[..., 1:], labels).item(), rel=1e-6)


@pytest.mark.parametrize("kind", ["kl", "ce"])
def test_a_token_the_student_rules_out_is_masked_and_the_loss_stays_finite(kind):
    """The student's logit is -inf where the teacher's probability is not 0: the official code masks that entry, so the
    loss is the other tokens' and finite, and so is the gradient."""
    torch.manual_seed(0)
    s, t = torch.randn(1, 4, 6), torch.randn(1, 4, 6)
    s[0, 1, 3] = float("-inf")
    labels = torch.tensor([[-100, -100, 1, -100]])                 # only position 1 is an answer position
    p, log_q = t[0, 1].softmax(-1), s[0, 1].log_softmax(-1)
    others = [0, 1, 2, 4, 5]
    expected = (p[others] * ((p[others].log() if kind == "kl" else 0) - log_q[others])).sum()
    student = s.clone().requires_grad_()
    loss = logit_kd_loss(student, t, labels, kind=kind)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert torch.isfinite(student.grad).all()
    out = DistillationLoss(kd_kind=kind)(torch.tensor(1.0), s, t, labels)   # no NonFiniteLossError
    assert out["kd"].item() == pytest.approx(expected.item(), abs=1e-6)
