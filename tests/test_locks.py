"""Two seeds' pipelines started together: the shared teacher is trained once, the other run waits for it and uses it."""
import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_two_pipelines_started_together_train_the_shared_stages_once(tmp_path):
    shutil.copytree(CONFIGS, tmp_path / "configs")
    from compodistill.pipeline import Pipeline, prepare_world
    with contextlib.chdir(tmp_path):  # the world first: two runs writing a missing world at once collide (not locked yet)
        prepare_world(Pipeline.from_yaml("configs/tiny/pipeline.yaml"))
    cmd = lambda seed: [sys.executable, "-m", "compodistill.cli", "pipeline", "--config", "configs/tiny/pipeline.yaml",
                        f"seed={seed}", "--only", "vision", "teacher_binding", "teacher", "student_base", "student"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    runs = [subprocess.Popen(cmd(s), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for s in (0, 1)]
    outs = [r.communicate(timeout=900)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outs
    status = [{l.split(":")[0].strip(): l.split(":")[1].strip() for l in o.splitlines() if l.strip().endswith((": ran", ": done"))}
              for o in outs]
    assert sorted(s["teacher"] for s in status) == ["done", "ran"], status  # one trains it, the other finds it done
    assert all(s["student"] == "ran" for s in status)
    shared = tmp_path / "runs" / "tiny" / "shared"
    assert json.loads((shared / "teacher" / "stage.json").read_text())["steps"] == 2 and not (shared / "teacher" / ".lock").exists()
    for seed in (0, 1):  # both students see through the one teacher's tower
        cfg = json.loads((tmp_path / "runs" / "tiny" / f"seed{seed}" / "student_base" / "stage.json").read_text())
        assert cfg["inputs"]["copy_vision_from"]["path"].endswith("shared/vision/model")
