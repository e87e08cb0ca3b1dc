"""Faults that must lose nothing: changed settings, interrupted saves, pickled weights (kills in every window: test_resume.py)."""
import json

import pytest
import torch
from safetensors.torch import load_file

from compodistill.checkpoints import load_llava, make_processor, save_llava
from compodistill.models import build_pair
from compodistill.runner import STAGE_DONE, parse_stage_config, run_stage

from conftest import WORDS


def _stage(common, root, out, **kw):
    "Run the DFT stage of the toy world into `out` (constant learning rate: every step counts)."
    values = {**common, "max_steps": 4, "save_steps": 2, "lr_scheduler_type": "constant", **kw}
    return run_stage(*parse_stage_config(None, stage="dft", model=str(root / "student"), output_dir=str(out), **values))


def _weights(model_dir):
    return load_file(model_dir / "model.safetensors")


@pytest.fixture
def world(toy_world, tmp_path):
    "The toy world and an uninterrupted reference run."
    common = toy_world(tmp_path)
    ref = _stage(common, tmp_path, tmp_path / "ref")
    return common, tmp_path, _weights(ref), json.loads((tmp_path / "ref" / STAGE_DONE).read_text())


def test_changed_settings_are_refused_and_restart_starts_over(world):
    common, root, _, _ = world
    with pytest.raises(ValueError, match=r"other settings.*learning_rate 0\.002 → 0\.001"):
        _stage(common, root, root / "ref", learning_rate=1e-3)
    _stage(common, root, root / "ref", logging_steps=2)                 # logging is not part of a run's identity
    _stage(common, root, root / "ref", learning_rate=1e-3, restart=True)
    recorded = json.loads((root / "ref" / "config.json").read_text())
    assert recorded["training"]["learning_rate"] == 1e-3 and (root / "ref" / STAGE_DONE).is_file()


def test_interrupted_save_is_cleaned_up_and_the_previous_checkpoint_restored(tok, tmp_path):
    _, model = build_pair("tiny", vocab_size=len(tok), image_token_id=tok.image_token_id)
    proc = make_processor(tok, model.config.vision_config)
    path = save_llava(model, proc, tmp_path / "ckpt")
    path.rename(tmp_path / ".ckpt.old-123")                            # killed between the two renames ...
    (tmp_path / ".ckpt.tmp-123").mkdir()                               # ... leaving the new copy unfinished
    save_llava(model, proc, tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert load_llava(tmp_path / "ckpt")[0].config.model_type == "llava"


def test_pickled_weights_and_stage_folders_are_refused_by_name(tok, tmp_path):
    _, model = build_pair("tiny", vocab_size=len(tok), image_token_id=tok.image_token_id)
    path = save_llava(model, make_processor(tok, model.config.vision_config), tmp_path / "stage" / "model")
    with pytest.raises(FileNotFoundError, match="stage's output folder: its checkpoint is .*stage/model"):
        load_llava(tmp_path / "stage")
    torch.save(load_file(path / "model.safetensors"), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"pickled \(pytorch_model\.bin\); compodistill loads safetensors only"):
        load_llava(path)


def test_empty_answers_are_bad_records(tmp_path):
    from compodistill.data import check_data
    turns = lambda answer: [{"from": "human", "value": "what colour is the circle ?"}, {"from": "gpt", "value": answer}]
    (tmp_path / "d.json").write_text(json.dumps([{"id": "a", "conversations": turns("red")},
                                                 {"id": "b", "conversations": turns("  ")}, {"id": "c", "conversations": turns("")}]))
    report = check_data(tmp_path / "d.json")
    assert report.counts == {"empty answer": 2} and "record #1 (id 'b')" in str(report)


def test_a_diverging_run_stops_with_a_named_error(toy_world, tmp_path):
    from compodistill.trainer import TrainingDivergedError
    common = toy_world(tmp_path)
    with pytest.raises(TrainingDivergedError, match="the run diverged"):
        _stage(common, tmp_path, tmp_path / "run", learning_rate=1e8, max_steps=12, divergence_patience=3)
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / STAGE_DONE).exists()


def test_saving_never_deletes_a_users_files(tok, tmp_path):
    _, model = build_pair("tiny", vocab_size=len(tok), image_token_id=tok.image_token_id)
    proc = make_processor(tok, model.config.vision_config)
    folder = tmp_path / "out"
    folder.mkdir(); (folder / "notes.txt").write_text("mine"); (folder / "results.json").write_text("{}")
    with pytest.raises(FileExistsError, match=r"notes\.txt, results\.json.*would delete them"):
        save_llava(model, proc, folder)
    assert (folder / "notes.txt").read_text() == "mine"
    save_llava(model, proc, tmp_path / "ckpt")
    save_llava(model, proc, tmp_path / "ckpt")                          # its own earlier output: replaced
    save_llava(model, proc, folder, overwrite=True)                     # told to
    assert not (folder / "notes.txt").exists() and (folder / "model.safetensors").is_file()


def test_a_stage_folder_given_for_a_checkpoint_is_named(toy_world, tmp_path):
    common = toy_world(tmp_path)
    _stage(common, tmp_path, tmp_path / "dft")
    with pytest.raises(FileNotFoundError, match=r"model checkpoint .*dft does not exist — .*dft is a stage's output folder: use .*dft/model"):
        run_stage(*parse_stage_config(None, stage="sft", model=str(tmp_path / "dft"), output_dir=str(tmp_path / "sft"), **common))


def test_export_refuses_a_folder_with_a_users_files(tok, tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    _, model = build_pair("tiny", vocab_size=len(tok), image_token_id=tok.image_token_id)
    save_llava(model, make_processor(tok, model.config.vision_config), tmp_path / "student")
    out = tmp_path / "release"
    out.mkdir(); (out / "notes.txt").write_text("mine")
    cli = [str(Path(sys.executable).parent / "compodistill"), "export", "--model", str(tmp_path / "student"), "--out", str(out)]
    r = subprocess.run(cli, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 2 and "notes.txt" in r.stderr and "Traceback" not in r.stderr
    assert (out / "notes.txt").read_text() == "mine"
    r = subprocess.run(cli + ["--overwrite"], capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr
    assert (out / "model.safetensors").is_file()


def test_pipeline_refuses_a_done_stage_with_changed_settings_and_checks_inputs_up_front(toy_world, tmp_path):
    import yaml
    from compodistill.pipeline import Pipeline, run_pipeline
    common = {k: v for k, v in toy_world(tmp_path).items() if k not in ("teacher",)}
    stage = {"stage": "dft", "model": str(tmp_path / "student"), "teacher": str(tmp_path / "teacher"), **common}
    path, vocab = tmp_path / "pipe.yaml", tmp_path / "vocab.json"
    vocab.write_text(json.dumps(WORDS))
    write = lambda **kw: path.write_text(yaml.safe_dump({"root": str(tmp_path / "runs"), "data_root": str(tmp_path),
                                                         "init": {"preset": "tiny", "vocab": str(vocab)},
                                                         "stages": {"dft": {**stage, **kw}}}))
    write()
    assert run_pipeline(Pipeline.from_yaml(path)) == [("dft", "ran")]
    assert run_pipeline(Pipeline.from_yaml(path)) == [("dft", "done")]
    write(logging_steps=2)                                              # not part of the run's identity
    assert run_pipeline(Pipeline.from_yaml(path), dry_run=True) == [("dft", "done")]
    write(learning_rate=1e-3)
    with pytest.raises(ValueError, match=r"stage 'dft' is done with other settings.*learning_rate 0\.002 → 0\.001"):
        run_pipeline(Pipeline.from_yaml(path), dry_run=True)
    write(data=str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match=r"stage 'dft': data .*missing\.json not found"):
        run_pipeline(Pipeline.from_yaml(path), dry_run=True)
