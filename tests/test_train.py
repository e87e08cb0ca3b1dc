"""The distillation trainer: stages train what they should, losses go down, runs resume exactly."""
import copy
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback, TrainingArguments

from compodistill.models import build_pair
from compodistill.objective import DistillationLoss
from compodistill.train import (COMPLETE, STAGES, DistillationTrainer, last_complete_checkpoint, setup_stage,
                                trainable_summary)
from compodistill.vat import band_matching


class ToyData(torch.utils.data.Dataset):
    """Random images, prompt `<image>... what colour ?`, answer from the image's mean."""
    def __init__(self, config, tok, n=32, seed=0):
        g = torch.Generator().manual_seed(seed)
        v = config.vision_config
        self.pix = torch.randn(n, 3, v.image_size, v.image_size, generator=g)
        self.q, self.tok = tok.convert_tokens_to_ids(["what", "colour", "?"]), tok
    def __len__(self): return len(self.pix)
    def __getitem__(self, i):
        a = self.tok.convert_tokens_to_ids("red" if self.pix[i].mean() > 0 else "blue")
        ids = torch.tensor([self.tok.image_token_id] * 16 + self.q + [a, self.tok.eos_token_id])
        labels = torch.full_like(ids, -100); labels[-2:] = ids[-2:]
        return dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, pixel_values=self.pix[i])


def collate(samples): return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def args(out, **kw):
    base = dict(output_dir=str(out), per_device_train_batch_size=8, learning_rate=3e-3, report_to=[], logging_steps=2,
                save_strategy="no", seed=0, data_seed=0, use_cpu=True, disable_tqdm=True, max_steps=16)
    return TrainingArguments(**{**base, **kw})


def _stage_trainer(stage, tok, out, **kw):
    torch.manual_seed(0)
    teacher, student = build_pair("tiny", vocab_size=len(tok), image_token_id=tok.image_token_id)
    st = STAGES[stage]
    student = setup_stage(student, st.trains, teacher, st.taf, lora_r=4, lora_alpha=8)
    objective = DistillationLoss(kd_weight=float(st.kd), vat_weight=float(st.vat))
    return DistillationTrainer(model=student, args=args(out, **kw), train_dataset=ToyData(student.config, tok),
                               data_collator=collate, teacher=teacher if st.kd or st.vat else None,
                               objective=objective, matching=band_matching(6, 4) if st.vat else None)


def _base(model): return model.get_base_model() if hasattr(model, "get_base_model") else model


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_stage_trains_only_its_parts_and_lowers_its_loss(stage, tok, tmp_path):
    tr = _stage_trainer(stage, tok, tmp_path)
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    trainable = {n for n, p in tr.model.named_parameters() if p.requires_grad}
    tr.train()
    logs = [l for l in tr.state.log_history if "loss_lm" in l]
    assert logs[-1]["loss"] < logs[0]["loss"]
    changed = {n for n, p in tr.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and changed <= trainable                       # frozen parameters are bit-identical
    assert {"loss_kd" in l and l["loss_kd"] > 0 for l in logs} == {STAGES[stage].kd}
    assert {l["loss_vat"] > 0 for l in logs} == {STAGES[stage].vat}


def test_stage_trainable_parts(tok):
    teacher, _ = build_pair("tiny", vocab_size=len(tok), image_token_id=tok.image_token_id)
    counts = {}
    for name, st in STAGES.items():
        m = setup_stage(build_pair("tiny", vocab_size=len(tok), image_token_id=tok.image_token_id)[1], st.trains,
                        teacher, st.taf, lora_r=4, lora_alpha=8)
        counts[name] = {k: t for k, (t, _) in trainable_summary(m).items()}
    assert counts["pretrain"] == {"vision": 0, "projector": 32 * 32 + 32 + 32 * 32 + 32, "llm": 0, "lm_head": 0}
    assert counts["dpt"]["projector"] == 64 * 32 + 32 and counts["dpt"]["llm"] == 0   # the adapter only
    assert counts["dft"]["llm"] > 0 and counts["dft"]["projector"] == counts["dpt"]["projector"]
    assert all(c["vision"] == 0 and c["lm_head"] == 0 for c in counts.values())
    assert not any("vision_tower" in n and "lora" in n for n, _ in
                   setup_stage(build_pair("tiny")[1], ("lora",), lora_r=2, lora_alpha=4).named_parameters())


class Crash(TrainerCallback):
    def __init__(self, at): self.at = at
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.at: raise KeyboardInterrupt("killed")


def test_killed_run_resumes_to_the_same_weights(tok, tmp_path):
    kw = dict(save_strategy="steps", save_steps=6, max_steps=12)
    full = _stage_trainer("dft", tok, tmp_path / "full", **kw)
    full.train()
    crashed = _stage_trainer("dft", tok, tmp_path / "run", **kw)
    crashed.add_callback(Crash(9))
    with pytest.raises(KeyboardInterrupt): crashed.train()
    partial = tmp_path / "run" / "checkpoint-9"            # a checkpoint that was being written when killed
    partial.mkdir(); (partial / "model.safetensors").write_bytes(b"truncated")
    ckpt = last_complete_checkpoint(tmp_path / "run")
    assert Path(ckpt).name == "checkpoint-6" and (Path(ckpt) / COMPLETE).is_file()
    resumed = _stage_trainer("dft", tok, tmp_path / "run", **kw)
    resumed.train(resume_from_checkpoint=ckpt)
    a, b = dict(full.model.named_parameters()), dict(resumed.model.named_parameters())
    diff = max((a[n] - b[n]).abs().max().item() for n in a)
    assert diff <= 1e-6, diff


def test_vat_without_teacher_is_refused(tok, tmp_path):
    _, student = build_pair("tiny", vocab_size=len(tok), image_token_id=tok.image_token_id)
    with pytest.raises(ValueError, match="VAT needs a teacher"):
        DistillationTrainer(model=student, args=args(tmp_path), train_dataset=ToyData(student.config, tok),
                            data_collator=collate, objective=DistillationLoss(), matching=band_matching(6, 4))
