"""Nothing is overwritten unasked, one run per folder, and every fault class is one line with exit code 2."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from transformers import Trainer

import compodistill.checkpoints as checkpoints
from compodistill.checkpoints import make_processor, save_llava
from compodistill.cli import main
from compodistill.evaluate import evaluate_checkpoint
from compodistill.guards import LOCK
from compodistill.models import build_pair
from compodistill.reproduce import reproduce
from compodistill.runner import STAGE_DONE, parse_stage_config, run_stage


def _cli(capsys, *argv):
    "Run the CLI in this process; its exit code and its stderr."
    with pytest.raises(SystemExit) as exit: main(list(argv))
    return exit.value.code, capsys.readouterr().err


def _train_args(common, root, out, **kw):
    "`compodistill train` key=value arguments of the toy world's LoRA stage into `out`."
    values = {**common, "stage": "dft", "model": str(root / "student"), "output_dir": str(out), **kw}
    return [f"{k}={v}" for k, v in values.items()]


def test_export_replaces_no_folder_unasked_not_even_its_own_model(tok, tmp_path, capsys):
    _, model = build_pair("tiny", vocab_size=len(tok), image_token_id=tok.image_token_id)
    student = save_llava(model, make_processor(tok, model.config.vision_config), tmp_path / "student")
    other = save_llava(model, make_processor(tok, model.config.vision_config), tmp_path / "teacher_copy")
    before = (other / "model.safetensors").stat().st_mtime_ns
    for out in (other, student):
        code, err = _cli(capsys, "export", "--model", str(student), "--out", str(out))
        assert code == 2 and err.count("\n") == 1 and f"the export folder {out} exists" in err and "--overwrite" in err
    assert (other / "model.safetensors").stat().st_mtime_ns == before
    main(["export", "--model", str(student), "--out", str(other), "--overwrite"])
    assert (other / "model.safetensors").stat().st_mtime_ns != before


def test_eval_and_reproduce_refuse_an_existing_result_before_any_work(tmp_path):
    result = tmp_path / "result.json"
    result.write_text('{"mine": 1}')
    with pytest.raises(FileExistsError, match="the result file .*result.json exists"):
        evaluate_checkpoint(tmp_path / "no-model", "world:nothing.json", out=result)   # refused before the model loads
    with pytest.raises(FileExistsError, match="the results file .*result.json exists"):
        reproduce("configs/tiny/pipeline.yaml", seeds=(0,), out=result)             # refused before any stage runs
    assert result.read_text() == '{"mine": 1}' and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("plant,message", [
    (lambda out: out.write_text("a file"), "output_dir {out} is a file, not a folder"),
    (lambda out: (out.mkdir(), (out / "notes.txt").write_text("mine")), "output_dir {out} holds what no stage writes (notes.txt)"),
    (lambda out: (out.mkdir(), (out / "config.json").write_text('{"lr": 1}')), "{out}/config.json is not a stage's record"),
    (lambda out: ((out / "model").mkdir(parents=True), (out / "model" / "notes.txt").write_text("mine")),
     "{out}/model holds files that are not a checkpoint's (notes.txt)"),
    (lambda out: (out.parent.mkdir(), (out.parent / "blocker").write_text("")), "cannot create it"),
])
def test_a_bad_output_dir_is_refused_before_training(toy_world, tmp_path, capsys, plant, message):
    common = toy_world(tmp_path)
    out = tmp_path / "x" / "blocker" / "run" if message == "cannot create it" else tmp_path / "run"
    plant(tmp_path / "x" / "blocker" if message == "cannot create it" else out)
    code, err = _cli(capsys, "train", *_train_args(common, tmp_path, out))
    assert code == 2 and err.count("\n") == 1 and message.format(out=out) in err, err
    assert not list(tmp_path.glob("**/checkpoint-*"))


def test_a_folder_in_use_by_another_run_is_refused_and_a_dead_runs_lock_is_taken_over(toy_world, tmp_path):
    common = toy_world(tmp_path)
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys; from compodistill.guards import folder_lock
with folder_lock({str(out)!r}): print("locked", flush=True); sys.stdin.readline()"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    settings = {**common, "stage": "dft", "model": str(tmp_path / "student"), "output_dir": str(out)}
    with pytest.raises(FileExistsError, match=f"{out} is in use by another run \\(pid {holder.pid} on "):
        run_stage(*parse_stage_config(None, **settings))
    holder.stdin.write("\n"); holder.stdin.flush(); holder.wait()
    (out / LOCK).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))   # as if it had been killed
    run_stage(*parse_stage_config(None, **settings))
    assert (out / STAGE_DONE).is_file() and not (out / LOCK).exists()


def test_ctrl_c_and_a_full_disk_are_one_line_saying_that_a_rerun_resumes(toy_world, tmp_path, capsys, monkeypatch):
    common = toy_world(tmp_path)
    def interrupted(self, *a, **k):
        if self.state.global_step == 3: raise KeyboardInterrupt
        return Trainer.training_step(self, *a, **k)
    monkeypatch.setattr(checkpoints.CheckpointingTrainer, "training_step", interrupted, raising=False)
    code, err = _cli(capsys, "train", *_train_args(common, tmp_path, tmp_path / "a"))
    assert (code, err.splitlines()[-1]) == (2, "compodistill train: interrupted at step 3; re-run to resume")
    monkeypatch.undo()
    real = torch.save
    def full_disk(obj, f, *a, **k):
        if "optimizer" in str(f): raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter "
                                                     "failed writing file data/0: file write failed")
        return real(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", full_disk)
    code, err = _cli(capsys, "train", *_train_args(common, tmp_path, tmp_path / "b"))
    assert code == 2 and "Traceback" not in err
    assert f"no space left on the disk of {tmp_path / 'b'} while saving at step 2; free space and re-run: it resumes" in err.splitlines()[-1]
    monkeypatch.undo()
    main(["train", *_train_args(common, tmp_path, tmp_path / "b")])      # space freed: it resumes and finishes
    assert json.loads((tmp_path / "b" / STAGE_DONE).read_text())["steps"] == 4


def test_a_damaged_weights_file_a_bad_yaml_file_and_a_non_image_are_one_line(tok, tmp_path, capsys):
    _, model = build_pair("tiny", vocab_size=len(tok), image_token_id=tok.image_token_id)
    ckpt = save_llava(model, make_processor(tok, model.config.vision_config), tmp_path / "student")
    weights = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(weights[:len(weights) // 2])            # a truncated copy
    (tmp_path / "q.png").write_text("not an image")
    (tmp_path / "stage.yaml").write_text("stage: dft\nmodel: [unclosed\n")
    for argv, message in ((["export", "--model", str(ckpt), "--out", str(tmp_path / "out")],
                           f"{ckpt}: a weights file is damaged or truncated"),
                          (["chat", "--model", str(ckpt), "--image", str(tmp_path / "q.png"), "--question", "?"],
                           f"--image: corrupt image: {tmp_path / 'q.png'} cannot be decoded"),
                          (["train", "--config", str(tmp_path / "stage.yaml")], f"{tmp_path / 'stage.yaml'}: not valid YAML")):
        code, err = _cli(capsys, *argv)
        assert code == 2 and err.count("\n") == 1 and message in err, err
