"""Pipelines: starting checkpoints, dependency order, skipping finished stages, resuming, the command."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from compodistill.pipeline import Pipeline, run_pipeline, stage_order
from compodistill.train import STAGE_DONE


def _write(tmp_path, toy_world, **stages):
    common = toy_world(tmp_path / "data")
    (tmp_path / "data" / "vocab.json").write_text(json.dumps("what colour is the circle red blue ?".split()))
    defaults = {k: v for k, v in common.items() if k not in ("data", "teacher")}
    cfg = dict(root=str(tmp_path / "runs"), data_root=str(tmp_path / "data"),
               init=dict(preset="tiny", vocab="@data/vocab.json"), defaults={**defaults, "max_steps": 2}, stages=stages)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return Pipeline.from_yaml(tmp_path / "p.yaml")


STAGES = dict(
    sft=dict(stage="sft", model="@dft", data="@data/train.json"),                 # listed first on purpose
    teacher=dict(stage="finetune", model="@init/teacher", data="@data/train.json", also_train=["vision"]),
    student_base=dict(copy_vision_from="@teacher", model="@init/student"),
    dpt=dict(stage="dpt", model="@student_base", teacher="@teacher", data="@data/train.json"),
    dft=dict(stage="dft", model="@dpt", teacher="@teacher", data="@data/train.json"))


def test_pipeline_runs_in_dependency_order_skips_done_and_resumes(tmp_path, toy_world):
    pipe = _write(tmp_path, toy_world, **STAGES)
    assert stage_order(pipe) == ["teacher", "student_base", "dpt", "dft", "sft"]
    assert {s for _, s in run_pipeline(pipe, dry_run=True)} == {"would run"}
    assert [s for _, s in run_pipeline(pipe)] == ["ran"] * 5
    assert {s for _, s in run_pipeline(pipe)} == {"done"}
    for name in ("teacher", "dpt", "dft", "sft"): assert (tmp_path / "runs" / name / STAGE_DONE).is_file()
    import shutil
    shutil.rmtree(tmp_path / "runs" / "dft")
    assert [n for n, s in run_pipeline(pipe) if s == "ran"] == ["dft"]        # only the missing stage runs again


def test_pipeline_checks_every_stage_before_any_work(tmp_path, toy_world):
    pipe = _write(tmp_path, toy_world, teacher=STAGES["teacher"],
                  dft={**STAGES["dft"], "model": "@init/student", "learning_rat": 1})
    with pytest.raises(ValueError, match="stage .dft.: unknown keys \[.learning_rat.\]"): run_pipeline(pipe)
    assert not (tmp_path / "runs" / "init").exists()
    pipe = _write(tmp_path / "b", toy_world, a=dict(stage="sft", model="@b", data="@data/train.json"),
                  b=dict(stage="sft", model="@a", data="@data/train.json"))
    with pytest.raises(ValueError, match="cycle"): run_pipeline(pipe)
    pipe = _write(tmp_path / "c", toy_world, a=dict(stage="sft", model="@nope", data="@data/train.json"))
    with pytest.raises(ValueError, match="no stage 'nope'"): run_pipeline(pipe)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(dict(root="r", init={}, stages={}, extra=1)))
    with pytest.raises(ValueError, match=r"unknown keys \['extra'\]"): Pipeline.from_yaml(tmp_path / "bad.yaml")


def test_pipeline_command_dry_run_and_commands(tmp_path, toy_world):
    _write(tmp_path, toy_world, **STAGES)
    cli = [str(Path(sys.executable).parent / "compodistill"), "pipeline", "--config", str(tmp_path / "p.yaml")]
    r = subprocess.run(cli + ["--dry-run"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.count("would run") == 5, r.stderr
    r = subprocess.run(cli + ["--print-commands", "--only", "dpt"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.count("accelerate launch -m compodistill.cli train") == 1
    assert "stage=dpt" in r.stdout and f"output_dir={tmp_path / 'runs' / 'dpt'}" in r.stdout
    r = subprocess.run(cli + ["bogus=1"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "only root=... and data_root=..." in r.stderr


def test_the_shipped_full_pipeline_is_valid(tmp_path):
    """configs/full/pipeline.yaml: every stage checks out (no GPU needed to list it) and refers to real stages."""
    root = Path(__file__).resolve().parent.parent
    pipe = Pipeline.from_yaml(root / "configs" / "full" / "pipeline.yaml", root=str(tmp_path), data_root="/data")
    status = run_pipeline(pipe, dry_run=True)
    assert len(status) == 14 and {s for _, s in status} == {"would run"}
    order = stage_order(pipe)
    assert order.index("teacher") < order.index("dpt") < order.index("dft") < order.index("sft")
    assert pipe.init["teacher_llm"] == "Qwen/Qwen1.5-4B" and pipe.init["student_llm"] == "Qwen/Qwen1.5-1.8B"
