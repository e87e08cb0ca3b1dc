"""The `compodistill` console script."""
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def _run(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(list(args), capture_output=True, text=True, env=env, timeout=300)


def test_models_command_builds_saves_and_reloads(tmp_path):
    r = _run(str(BIN / "compodistill"), "models", "--preset", "tiny", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "| full | teacher | 40 |" in r.stdout
    assert r.stdout.count("reload max |Δlogit| = 0.0e+00") == 3
    for role in ("teacher", "student", "assembled"):
        assert (tmp_path / role / "model.safetensors").is_file()


def test_module_entry_point_and_unknown_command():
    r = _run(sys.executable, "-m", "compodistill.cli", "bogus")
    assert r.returncode != 0 and "unknown command 'bogus'" in r.stderr
    r = _run(sys.executable, "-m", "compodistill.cli", "models", "--preset", "full")
    assert r.returncode != 0 and "starts from pretrained parts" in r.stderr
