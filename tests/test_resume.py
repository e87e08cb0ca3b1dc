"""Exact resume in every kill window of every stage type: the resumed run ends tensor-identical to an uninterrupted one."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer

import compodistill.checkpoints as checkpoints
from compodistill.checkpoints import COMPLETE, make_processor, save_llava, word_tokenizer
from compodistill.corpus import WORLD_VOCAB, write_world
from compodistill.models import build_pair
from compodistill.runner import STAGE_DONE, parse_stage_config, run_stage

from conftest import toy_chain

KINDS = {  # stage type -> the stage's settings (full weights, TAF adapter, LoRA + adapter, vision tower)
    "full weights (lm)": dict(stage="lm"),
    "full weights (pretrain + llm)": dict(stage="pretrain", also_train=["llm"]),
    "TAF adapter (dpt)": dict(stage="dpt"),
    "LoRA (dft)": dict(stage="dft"),
    "vision": dict(stage="vision"),
}
WINDOWS = ("mid-step", "inside a checkpoint save", "after the last checkpoint", "during rotation")


@pytest.fixture(scope="module")
def setups(tmp_path_factory):
    "Per stage type: the settings of a 4-step run with checkpoints every 2 steps, and its uninterrupted result."
    from conftest import WORDS, toy_world_writer
    root = tmp_path_factory.mktemp("resume")
    common = toy_world_writer(word_tokenizer(WORDS))(root / "toy")
    paths = write_world(root / "world", n_train=16, n_eval=2, n_heldout=0, image_size=32)
    tok = word_tokenizer(WORLD_VOCAB)
    _, student = build_pair("tiny", vocab_size=len(tok), image_token_id=tok.image_token_id)
    save_llava(student, make_processor(tok, student.config.vision_config), root / "vision_start")
    vision = dict(model=str(root / "vision_start"), data=str(paths["train_scenes"]), use_cpu=True, disable_tqdm=True,
                  per_device_train_batch_size=8, learning_rate=1e-2)
    out = {}
    for kind, kw in KINDS.items():
        settings = {**(vision if kw["stage"] == "vision" else {**common, "model": str(root / "toy" / "student")}), **kw,
                    "max_steps": 4, "save_steps": 2, "save_total_limit": 1, "lr_scheduler_type": "cosine", "warmup_steps": 1}
        ref = _run(settings, root / f"ref-{kind}")
        out[kind] = settings, load_file(ref / "model.safetensors"), json.loads((ref.parent / STAGE_DONE).read_text())
    return out


def _run(settings, out):
    "Run the stage into `out`; return its model folder."
    return run_stage(*parse_stage_config(None, output_dir=str(out), **settings))


def _differing(ref, model_dir):
    "Names of the tensors that differ from the reference run's."
    got = load_file(model_dir / "model.safetensors")
    assert got.keys() == ref.keys()
    return [k for k in ref if not torch.equal(ref[k], got[k])]


def _kill(monkeypatch, window):
    "Make the next run die (KeyboardInterrupt, as a kill would) in `window`."
    if window == "mid-step":
        real = Trainer.training_step
        def step(self, *a, **k):
            if self.state.global_step == 2: raise KeyboardInterrupt("killed in step 3")
            return real(self, *a, **k)
        monkeypatch.setattr(checkpoints.CheckpointingTrainer, "training_step", step, raising=False)
    elif window == "inside a checkpoint save":  # checkpoint-4's model is written, its optimizer is not
        def save_optimizer(self, *a, **k):
            if self.state.global_step == 4: raise KeyboardInterrupt("killed while saving checkpoint-4")
            return Trainer._save_optimizer_and_scheduler(self, *a, **k)
        monkeypatch.setattr(checkpoints.CheckpointingTrainer, "_save_optimizer_and_scheduler", save_optimizer, raising=False)
    elif window == "during rotation":  # checkpoint-4 is marked, checkpoint-2 is being deleted
        real = checkpoints.shutil.rmtree
        def rmtree(path, *a, **k):
            if str(path).endswith("checkpoint-2"): raise KeyboardInterrupt("killed while deleting checkpoint-2")
            return real(path, *a, **k)
        monkeypatch.setattr(checkpoints.shutil, "rmtree", rmtree)


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_killed_stage_resumes_to_the_uninterrupted_result(setups, kind, window, tmp_path, monkeypatch, capsys):
    settings, ref, done = setups[kind]
    out = tmp_path / "run"
    if window == "after the last checkpoint":  # everything trained; killed before model/ and stage.json were written
        _run(settings, out)
        shutil.rmtree(out / "model"); (out / STAGE_DONE).unlink()
    else:
        _kill(monkeypatch, window)
        with pytest.raises(KeyboardInterrupt): _run(settings, out)
        monkeypatch.undo()
    if window == "during rotation": assert not (out / "checkpoint-2" / COMPLETE).exists()   # unmarked before deletion
    capsys.readouterr()
    model = _run(settings, out)
    resumed_from = {"mid-step": 2, "inside a checkpoint save": 2}.get(window, 4)
    assert f"resuming from checkpoint-{resumed_from} (step {resumed_from} of 4)" in capsys.readouterr().out
    assert _differing(ref, model) == []
    again = json.loads((out / STAGE_DONE).read_text())
    assert again["steps"] == 4 and again["train_loss"] == pytest.approx(done["train_loss"])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]   # nothing unfinished left behind


def test_a_checkpoint_whose_weights_do_not_fit_the_model_is_refused(setups, tmp_path):
    settings, _, _ = setups["full weights (lm)"]
    out = tmp_path / "run"
    _run(settings, out)
    shutil.rmtree(out / "model"); (out / STAGE_DONE).unlink()
    ckpt = out / "checkpoint-4" / "model.safetensors"
    from safetensors.torch import save_file
    tensors = load_file(ckpt)
    save_file({k: v for k, v in tensors.items() if "layers.0." not in k}, ckpt, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"checkpoint-4.*missing.*layers\.0\."):
        _run(settings, out)


def test_a_pipeline_killed_in_a_full_weight_stage_ends_as_the_uninterrupted_one(tmp_path, monkeypatch):
    from compodistill.pipeline import run_pipeline
    pipeline = toy_chain(tmp_path)
    stages = ("lm", "dft")
    run_pipeline(pipeline("ref", stages))
    _kill(monkeypatch, "mid-step")
    with pytest.raises(KeyboardInterrupt): run_pipeline(pipeline("run", stages))
    monkeypatch.undo()
    assert run_pipeline(pipeline("run", stages)) == [("lm", "ran"), ("dft", "ran")]
    for stage in stages:
        ref = load_file(tmp_path / "ref" / stage / "model" / "model.safetensors")
        assert _differing(ref, tmp_path / "run" / stage / "model") == [], stage


def test_a_retrained_stage_or_changed_data_reruns_exactly_the_stages_built_on_it(tmp_path, capsys):
    from compodistill.pipeline import run_pipeline
    pipeline = toy_chain(tmp_path)
    assert run_pipeline(pipeline("run")) == [("lm", "ran"), ("dft", "ran"), ("sft", "ran")]
    shutil.rmtree(tmp_path / "run" / "dft")                               # the user retrains dft
    assert run_pipeline(pipeline("run"), dry_run=True) == [("lm", "done"), ("dft", "would run"), ("sft", "would run")]
    capsys.readouterr()
    assert run_pipeline(pipeline("run")) == [("lm", "done"), ("dft", "ran"), ("sft", "ran")]
    assert "stage sft: built on dft, which trains again; training it again" in capsys.readouterr().out
    assert run_pipeline(pipeline("run")) == [("lm", "done"), ("dft", "done"), ("sft", "done")]
    data = tmp_path / "train.json"
    data.write_text(json.dumps(json.loads(data.read_text())[:-1]))        # the data file is edited
    assert run_pipeline(pipeline("run")) == [("lm", "ran"), ("dft", "ran"), ("sft", "ran")]
    assert f"stage lm: its inputs changed (data {data} changed)" in capsys.readouterr().out


def test_a_resume_on_changed_data_is_refused_and_a_run_that_trained_nothing_blocks_nothing(setups, tmp_path, monkeypatch):
    settings, ref, _ = setups["full weights (lm)"]
    data = tmp_path / "train.json"
    shutil.copy(settings["data"], data)
    settings = {**settings, "data": str(data), "image_folder": str(Path(settings["data"]).parent)}
    _kill(monkeypatch, "mid-step")
    with pytest.raises(KeyboardInterrupt): _run(settings, tmp_path / "run")
    monkeypatch.undo()
    data.write_text(json.dumps(json.loads(data.read_text())[:-1]))
    with pytest.raises(ValueError, match=rf"on other inputs \(data {data} changed\); use another output_dir, or restart=true"):
        _run(settings, tmp_path / "run")
    def dies_at_once(self, *a, **k): raise KeyboardInterrupt("killed in step 1")
    monkeypatch.setattr(checkpoints.CheckpointingTrainer, "training_step", dies_at_once, raising=False)
    with pytest.raises(KeyboardInterrupt): _run({**settings, "learning_rate": 5e-2}, tmp_path / "fresh")
    monkeypatch.undo()
    assert (tmp_path / "fresh" / "config.json").is_file() and not list((tmp_path / "fresh").glob("checkpoint-*"))
    done = json.loads((_run(settings, tmp_path / "fresh").parent / STAGE_DONE).read_text())   # corrected: not refused
    assert done["steps"] == 4 and done["inputs"]["data"]["path"] == str(data)
