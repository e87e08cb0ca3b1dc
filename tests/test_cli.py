"""The `compodistill` console script."""
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def _run(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(list(args), capture_output=True, text=True, env=env, timeout=1800)


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


def test_export_folds_taf_and_chat_answers(tmp_path, tok):
    import torch
    from PIL import Image

    from compodistill.checkpoints import load_llava, make_processor, save_llava
    from compodistill.models import build_pair, dummy_batch
    from compodistill.taf import attach_taf
    teacher, student = build_pair("tiny", vocab_size=len(tok), image_token_id=tok.image_token_id)
    attach_taf(student, teacher)
    save_llava(student, make_processor(tok, student.config.vision_config), tmp_path / "student")
    r = _run(str(BIN / "compodistill"), "export", "--model", str(tmp_path / "student"), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "64-wide projector" in r.stdout
    batch = dummy_batch(student.config)
    exported, _ = load_llava(tmp_path / "out")
    assert type(exported.model.multi_modal_projector).__name__ == "WideProjector"
    with torch.no_grad(): assert (exported(**batch).logits - student(**batch).logits).abs().max() < 1e-5
    Image.new("RGB", (40, 40), "red").save(tmp_path / "img.png")
    r = subprocess.run([str(BIN / "compodistill"), "chat", "--model", str(tmp_path / "out"), "--image",
                        str(tmp_path / "img.png"), "--max-new-tokens", "2"], input="what colour ?\nwhat shape ?\n",
                       capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=1800)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 2                                      # one answer line per question
    r = _run(str(BIN / "compodistill"), "chat", "--model", str(tmp_path / "out"), "--image", str(tmp_path / "nope.png"))
    assert r.returncode == 2 and f"--image: missing image: {tmp_path / 'nope.png'} does not exist" in r.stderr


def _error_line(r, command):
    "The one line a user error prints on stderr (after any warnings of the imports), checking exit code 2."
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    errors = [l for l in r.stderr.splitlines() if l.startswith("compodistill")]
    assert len(errors) == 1 and r.stderr.rstrip().endswith(errors[0]), r.stderr
    assert errors[0].startswith(f"compodistill {command}: error: ")
    return errors[0]


def test_user_errors_are_one_line_with_exit_code_2(tmp_path):
    cli = str(BIN / "compodistill")
    line = _error_line(_run(cli, "eval", "--model", str(tmp_path), "--benchmark", "sugarcrepe"), "eval")
    assert "benchmark 'sugarcrepe' needs --root" in line
    line = _error_line(_run(cli, "train", "stage=nope", "model=m", "data=d.json", "output_dir=o"), "train")
    assert "stage must be one of" in line and "'nope'" in line
    assert "missing keys ['model', 'data']" in _error_line(_run(cli, "train", "stage=dft"), "train")
    assert f"config file {tmp_path / 'nope.yaml'} not found" in _error_line(
        _run(cli, "train", "--config", str(tmp_path / "nope.yaml")), "train")
    cfg = tmp_path / "dft.yaml"
    cfg.write_text("stage: dft\nmodel: m\ndata: d.json\nlearning_rate: fast\n")
    line = _error_line(_run(cli, "train", "--config", str(cfg)), "train")
    assert str(cfg) in line and "learning_rate" in line and "'fast'" in line
    line = _error_line(_run(cli, "pipeline", "--config", str(tmp_path / "nope.yaml"), "--dry-run"), "pipeline")
    assert "pipeline file" in line and "not found" in line
    assert "--scale NAME or --config FILE" in _error_line(_run(cli, "reproduce"), "reproduce")
    assert "unknown preset 'huge'" in _error_line(_run(cli, "models", "--preset", "huge"), "models")
    assert "takes NAME=DIR" in _error_line(_run(cli, "analyze", "--teacher", "t", "--student", "kd", "--data", "d",
                                                "--out", "o"), "analyze")
    r = _run(cli, "eval", "--benchmark", "sugarcrepe")               # argparse's own usage error: exit code 2 too
    assert r.returncode == 2 and "the following arguments are required: --model" in r.stderr


def test_debug_shows_the_traceback(tmp_path):
    r = _run(str(BIN / "compodistill"), "--debug", "eval", "--model", str(tmp_path), "--benchmark", "sugarcrepe")
    assert r.returncode == 1 and "Traceback" in r.stderr and "ValueError: benchmark 'sugarcrepe' needs --root" in r.stderr


def test_plain_export_loads_in_vanilla_transformers(tmp_path, tok):
    from PIL import Image
    from transformers import LlavaForConditionalGeneration

    from compodistill.checkpoints import make_processor, save_llava
    from compodistill.models import build_pair
    from compodistill.taf import attach_taf
    teacher, student = build_pair("tiny", vocab_size=len(tok), image_token_id=tok.image_token_id)
    attach_taf(student, teacher)
    save_llava(student, make_processor(tok, student.config.vision_config), tmp_path / "student")
    (tmp_path / "fit").mkdir()
    for i, c in enumerate(("red", "blue", "green", "white")): Image.new("RGB", (32, 32), c).save(tmp_path / "fit" / f"{i}.png")
    cli = [str(BIN / "compodistill"), "export", "--model", str(tmp_path / "student"), "--out", str(tmp_path / "plain"), "--plain"]
    r = _run(*cli)
    assert r.returncode == 2 and "--plain needs --fit-images" in r.stderr
    r = _run(*cli, "--fit-images", str(tmp_path / "fit"), "--fit-steps", "20")
    assert r.returncode == 0, r.stderr
    assert "held-out relative error" in r.stdout and "plain LLaVA" in r.stdout
    assert type(LlavaForConditionalGeneration.from_pretrained(tmp_path / "plain").model.multi_modal_projector).__name__ == "LlavaMultiModalProjector"
