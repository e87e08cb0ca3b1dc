"""The distillation trainer: stages train what they should, losses go down, runs resume exactly."""
import copy
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback, TrainingArguments

from compodistill.models import build_pair
from compodistill.objective import DistillationLoss
from compodistill.checkpoints import COMPLETE, last_complete_checkpoint
from compodistill.stages import STAGES, setup_stage, trainable_summary
from compodistill.trainer import DistillationTrainer
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
    student = build_pair("tiny", vocab_size=len(tok), image_token_id=tok.image_token_id)[1]
    assert counts["lm"]["llm"] == sum(p.numel() for p in student.model.language_model.parameters())  # the whole LLM
    assert counts["lm"]["projector"] == 0 and counts["lm"]["lm_head"] > 0 and counts["lm"]["llm"] > counts["dft"]["llm"]
    assert all(c["vision"] == 0 for n, c in counts.items() if n != "vision")
    assert counts["vision"]["vision"] > 0 and counts["vision"]["llm"] == counts["vision"]["projector"] == 0
    assert all(c["lm_head"] == 0 for n, c in counts.items() if n != "lm")
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


# ---- the stage runner -------------------------------------------------------------------------------------------
import json  # noqa: E402

from compodistill.checkpoints import load_llava, make_processor, save_llava  # noqa: E402
from compodistill.runner import STAGE_DONE, parse_stage_config, run_stage  # noqa: E402


def test_three_stages_chain_and_freeze_what_they_should(toy_world, tmp_path):
    common, prev = toy_world(tmp_path), tmp_path / "student"
    vision0 = load_llava(prev)[0].model.vision_tower.state_dict()
    for stage in ("dpt", "dft", "sft"):
        prev = run_stage(*parse_stage_config(None, stage=stage, model=str(prev), output_dir=str(tmp_path / stage), **common))
        done = json.loads((tmp_path / stage / STAGE_DONE).read_text())
        assert done["steps"] == 4 and done["global_batch"] == 8 and (tmp_path / stage / "checkpoint-4" / "COMPLETE").is_file()
    final, _ = load_llava(prev)
    assert type(final.model.multi_modal_projector).__name__ == "TAFProjector"
    assert not any("lora" in n for n, _ in final.named_parameters())                   # LoRA merged
    assert all(torch.equal(v, final.model.vision_tower.state_dict()[k]) for k, v in vision0.items())
    teacher, _ = load_llava(tmp_path / "teacher")
    tp = teacher.model.multi_modal_projector
    assert torch.equal(final.model.multi_modal_projector.linear_2.weight, tp.linear_2.weight)   # teacher part frozen
    log = json.loads((tmp_path / "dft" / STAGE_DONE).read_text())["last_log"]
    assert log["loss_vat"] > 0 and log["loss_kd"] > 0


def test_kd_baseline_stage_keeps_a_plain_projector(toy_world, tok, tmp_path):
    from transformers import LlavaForConditionalGeneration
    common = toy_world(tmp_path)
    out = run_stage(*parse_stage_config(None, stage="dft", taf=False, vat_weight=0, model=str(tmp_path / "student"),
                                        output_dir=str(tmp_path / "kd"), **common))
    plain = LlavaForConditionalGeneration.from_pretrained(out)                  # no TAF: a plain checkpoint
    assert plain.generate(**_batch(plain, tok), max_new_tokens=2, do_sample=False).shape[1] > 0


def _batch(model, tok):
    from compodistill.models import dummy_batch
    return {k: v for k, v in dummy_batch(model.config, batch_size=1).items()}


def test_errors_before_training(toy_world, tok, tmp_path):
    common = toy_world(tmp_path)
    with pytest.raises(FileNotFoundError, match="the model checkpoint .*dpt/model does not exist"):
        run_stage(*parse_stage_config(None, stage="dft", model=str(tmp_path / "dpt" / "model"),
                                      output_dir=str(tmp_path / "x"), **common))
    with pytest.raises(FileNotFoundError, match="data file .*nope.json not found"):
        run_stage(*parse_stage_config(None, stage="dpt", model=str(tmp_path / "student"), output_dir=str(tmp_path / "x"),
                                      **{**common, "data": str(tmp_path / "nope.json")}))
    with pytest.raises(ValueError, match=r"settings: unknown keys \['learning_rat'\]"):
        parse_stage_config(None, ["learning_rat=1"], stage="dpt", model="m", data="d", output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="set `teacher`"):
        run_stage(*parse_stage_config(None, stage="dpt", model=str(tmp_path / "student"), output_dir=str(tmp_path / "x"),
                                      **{**common, "teacher": None}))
    other_tok = type(tok).from_pretrained(tmp_path / "teacher")
    other_tok.add_tokens(["triangle"])
    m, _ = load_llava(tmp_path / "teacher")
    m.resize_token_embeddings(len(other_tok))
    save_llava(m, make_processor(other_tok, m.config.vision_config), tmp_path / "bigger_teacher")
    with pytest.raises(Exception, match="vocab_size|incompatible"):
        run_stage(*parse_stage_config(None, stage="dpt", model=str(tmp_path / "student"), output_dir=str(tmp_path / "y"),
                                      **{**common, "teacher": str(tmp_path / "bigger_teacher")}))


def test_train_command_yaml_and_overrides(toy_world, tmp_path):
    import yaml

    from compodistill.cli import main
    common = toy_world(tmp_path)
    cfg = tmp_path / "dpt.yaml"
    cfg.write_text(yaml.safe_dump({**common, "stage": "dpt", "model": str(tmp_path / "student"),
                                   "output_dir": str(tmp_path / "dpt"), "learning_rate": "2e-3"}))
    main(["train", "--config", str(cfg), "max_steps=2", "save_strategy=no", "bf16=false"])
    assert json.loads((tmp_path / "dpt" / STAGE_DONE).read_text())["steps"] == 2
    resolved = json.loads((tmp_path / "dpt" / "config.json").read_text())
    assert resolved["training"]["learning_rate"] == 2e-3 and resolved["resolved"]["trains"] == ["adapter"]
    assert resolved["training"]["save_strategy"] == "no" and resolved["training"]["bf16"] is False  # "no" stays a string


ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> str:
    "A TCP port nothing listens on now (a fixed port collides with another run of the suite on the same machine)."
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _launch(tmp_path, common, launch_args, timeout=1800, **stage):
    """Run a DFT stage with `accelerate launch <launch_args> -m compodistill.cli train` on the toy world."""
    import os
    import subprocess
    import sys

    import yaml
    cfg = tmp_path / "dft.yaml"
    cfg.write_text(yaml.safe_dump({**common, "stage": "dft", "model": str(tmp_path / "student"),
                                   "output_dir": str(tmp_path / "dft"), "per_device_train_batch_size": 4, **stage}))
    accelerate = Path(sys.executable).parent / "accelerate"
    return subprocess.run([str(accelerate), "launch", *launch_args, "-m", "compodistill.cli", "train", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})


def _check_two_process_run(r, tmp_path):
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("wrote ") == 1 and "global batch 8" in r.stdout      # 2 processes x 4 per device
    done = json.loads((tmp_path / "dft" / STAGE_DONE).read_text())
    assert done["global_batch"] == 8 and done["last_log"]["loss_vat"] > 0 and done["last_log"]["loss_kd"] > 0
    final, _ = load_llava(tmp_path / "dft" / "model")
    assert not any("lora" in n for n, _ in final.named_parameters())            # LoRA merged
    teacher, _ = load_llava(tmp_path / "teacher")
    student, _ = load_llava(tmp_path / "student")
    tp, fp = teacher.model.multi_modal_projector, final.model.multi_modal_projector
    assert torch.equal(fp.linear_2.weight, tp.linear_2.weight)                  # the teacher's projector stays frozen
    assert all(torch.equal(v, final.model.vision_tower.state_dict()[k]) for k, v in student.model.vision_tower.state_dict().items())
    fresh = setup_stage(copy.deepcopy(student), STAGES["dft"].trains, teacher, taf=True, lora_r=4, lora_alpha=8)
    assert not torch.equal(fp.adapter.weight, _base(fresh).model.multi_modal_projector.adapter.weight)  # trained weights saved


def test_two_process_ddp_dft_stage(toy_world, tmp_path):
    """`accelerate launch` with the shipped DDP config and two CPU processes (gloo): the global batch doubles, one model is written."""
    common = toy_world(tmp_path)
    r = _launch(tmp_path, common, ["--config_file", str(ROOT / "configs/accelerate/ddp.yaml"), "--num_processes", "2",
                                   "--mixed_precision", "no", "--main_process_port", _free_port()])
    _check_two_process_run(r, tmp_path)


def _has_deepspeed():
    import importlib.util
    return importlib.util.find_spec("deepspeed") is not None


@pytest.mark.skipif(not _has_deepspeed(), reason="deepspeed is not installed (not part of the CI install)")
@pytest.mark.parametrize("config", ["zero2", "zero3"])
def test_two_process_deepspeed_dft_stage(config, toy_world, tmp_path):
    """The shipped DeepSpeed configs on two CPU processes: ZeRO-2 (teacher replicated) and ZeRO-3 (teacher sharded, the
    final model gathered from shards)."""
    common = toy_world(tmp_path)
    r = _launch(tmp_path, common, ["--config_file", str(ROOT / f"configs/accelerate/{config}.yaml"), "--num_processes", "2",
                                   "--mixed_precision", "no", "--main_process_port", _free_port()],
                use_cpu=False, ddp_backend="gloo")  # DeepSpeed on CPU: accelerate needs the backend named
    _check_two_process_run(r, tmp_path)


def test_teacher_deepspeed_config():
    """The teacher's DeepSpeed config: ZeRO-3 kept (sharded), any other stage → 0 (a replica); never an optimizer."""
    from compodistill.placement import teacher_deepspeed_config
    student = {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
               "gradient_clipping": 1.0, "bf16": {"enabled": True}, "optimizer": {"type": "AdamW"},
               "scheduler": {"type": "WarmupLR"},
               "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"},
                                     "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                                     "stage3_param_persistence_threshold": "auto",
                                     "stage3_gather_16bit_weights_on_model_save": True}}
    t = teacher_deepspeed_config(student, hidden_size=64)
    assert "optimizer" not in t and "scheduler" not in t and "optimizer" in student    # the student's is untouched
    z = t["zero_optimization"]
    assert z["stage"] == 3 and z["offload_param"] == {"device": "cpu"} and "offload_optimizer" not in z
    assert (z["reduce_bucket_size"], z["stage3_prefetch_bucket_size"], z["stage3_param_persistence_threshold"]) == (4096, 3686, 640)
    assert (t["train_batch_size"], t["train_micro_batch_size_per_gpu"], t["gradient_accumulation_steps"]) == (16, 4, 2)
    assert t["bf16"] == {"enabled": True}
    assert "auto" not in json.dumps(t)
    for stage in (0, 1, 2):
        t = teacher_deepspeed_config({**student, "zero_optimization": {"stage": stage, "offload_optimizer": {"device": "cpu"}}}, 64)
        assert t["zero_optimization"] == {"stage": 0} and "optimizer" not in t and t["train_batch_size"] == 16


def test_single_process_teacher_is_a_frozen_replica(tok, tmp_path):
    tr = _stage_trainer("dft", tok, tmp_path)
    assert type(tr.teacher).__name__ == "LlavaForConditionalGeneration" and not tr.teacher.training
    assert not any(p.requires_grad for p in tr.teacher.parameters())
    assert {p.device.type for p in tr.teacher.parameters()} == {tr.args.device.type}


FSDP_SCRIPT = r"""
import copy, sys, torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, fsdp2_prepare_model
from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
from compodistill.attention import capture_visual_attention
from compodistill.checkpoints import word_tokenizer
from compodistill.models import build_pair, dummy_batch
from compodistill.placement import prepare_teacher
from compodistill.vat import _teacher_forward, group_matching

acc = Accelerator(cpu=True)                                   # MULTI_CPU with gloo
assert acc.num_processes == 2
tok = word_tokenizer("what colour is the red blue ?".split())
torch.manual_seed(0)
teacher, student = build_pair("tiny", vocab_size=len(tok), image_token_id=tok.image_token_id)
batch = {k: v for k, v in dummy_batch(teacher.config, batch_size=2).items() if k != "labels"}
matching = group_matching(range(1, 5), range(0, 2), 6, 4)   # teacher layers 1-4 in groups of 3
ref_logits, ref_maps = _teacher_forward(teacher, batch, matching)
def student_step(model, plain, sharded=True):
    "VAT maps of a student's forward pass, and the squared norm of the gradient of logits + maps (summed over shards)."
    with capture_visual_attention(plain, batch["input_ids"], [0, 2]) as cap: out = model(**batch)
    maps = cap.stack()
    (out.logits.float().mean() + maps.sum()).backward()
    sq = sum((p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad).pow(2).sum() for p in model.parameters()
             if p.grad is not None)
    if sharded: torch.distributed.all_reduce(sq)
    return maps.detach(), sq
plain = copy.deepcopy(student)
ref_student = student_step(plain, plain, sharded=False)
for version in (1, 2):
    # accelerate turns FSDP on over GPUs only; here its FSDP code runs on CPU by switching the state over by hand
    acc.state.fsdp_plugin = FullyShardedDataParallelPlugin(
        fsdp_version=version, auto_wrap_policy="transformer_based_wrap", use_orig_params=True,
        transformer_cls_names_to_wrap=["Qwen2DecoderLayer", "SiglipEncoderLayer"])
    acc.state.distributed_type, acc.state.device = DistributedType.FSDP, torch.device("cpu")  # FSDP1 rejects 'cpu:0'
    assert acc.is_fsdp2 == (version == 2)
    t = prepare_teacher(acc, copy.deepcopy(teacher))
    assert isinstance(t, FSDPModule if version == 2 else FullyShardedDataParallel) and not t.training
    full = sum(p.numel() for p in teacher.parameters())
    local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in t.parameters())  # this process's shard
    assert local < 0.6 * full, (local, full)                    # each process holds about half the teacher
    logits, maps = _teacher_forward(t, batch, matching)
    torch.testing.assert_close(logits, ref_logits); torch.testing.assert_close(maps, ref_maps)
    s = copy.deepcopy(student)
    s = fsdp2_prepare_model(acc, s) if version == 2 else acc.prepare_model(s)
    maps, sq = student_step(s, acc.unwrap_model(s))
    torch.testing.assert_close(maps, ref_student[0]); torch.testing.assert_close(sq, ref_student[1])
    print(f"fsdp{version} ok", flush=True)
acc.wait_for_everyone()
torch.distributed.destroy_process_group()  # join gloo's threads before exit: a live one aborts the process (SIGABRT)
"""


def test_fsdp_teacher_and_vat_capture_on_two_processes(tmp_path):
    """FSDP1 and FSDP2 on two CPU processes (gloo): the teacher is sharded by accelerate's FSDP code, and the VAT
    capture through sharded teacher and student gives the unsharded maps. (A whole FSDP stage needs GPUs: accelerate
    turns FSDP on over GPUs only.)"""
    import os
    import subprocess
    import sys
    script = tmp_path / "fsdp_check.py"
    script.write_text(FSDP_SCRIPT)
    torchrun = Path(sys.executable).parent / "torchrun"
    r = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", _free_port(), str(script)],
                       capture_output=True, text=True, timeout=1800,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-500:] + r.stderr[-3000:]
    assert r.stdout.count("fsdp1 ok") == 2 and r.stdout.count("fsdp2 ok") == 2


def test_distillation_terms_refuses_vat_without_a_teacher():
    from compodistill.models import build_pair, dummy_batch
    from compodistill.objective import DistillationLoss
    from compodistill.trainer import distillation_terms
    from compodistill.vat import group_matching
    _, student = build_pair("tiny")
    with pytest.raises(ValueError, match="VAT needs a teacher"):
        distillation_terms(student, dummy_batch(student.config), DistillationLoss(), matching=group_matching(range(3), range(2), 6, 4))
