"""Pipelines: starting checkpoints, dependency order, skipping finished stages, resuming, the command; the tiny
pipeline run end to end and its trained student exported."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from compodistill.pipeline import Pipeline, run_pipeline, stage_order
from compodistill.runner import STAGE_DONE


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
    assert [n for n, s in run_pipeline(pipe) if s == "ran"] == ["dft", "sft"]  # the missing stage and the one built on it


def test_pipeline_checks_every_stage_before_any_work(tmp_path, toy_world):
    pipe = _write(tmp_path, toy_world, teacher=STAGES["teacher"],
                  dft={**STAGES["dft"], "model": "@init/student", "learning_rat": 1})
    with pytest.raises(ValueError, match=r"stage .dft.: unknown keys \[.learning_rat.\]"): run_pipeline(pipe)
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
    r = subprocess.run(cli + ["--dry-run"], capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0 and r.stdout.count("would run") == 5, r.stderr
    r = subprocess.run(cli + ["--print-commands", "--only", "dpt"], capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0 and r.stdout.count("accelerate launch -m compodistill.cli train") == 1
    assert "stage=dpt" in r.stdout and f"output_dir={tmp_path / 'runs' / 'dpt'}" in r.stdout
    r = subprocess.run(cli + ["--print-commands", "--only", "dpt", f"root={tmp_path / 'elsewhere'}"], capture_output=True,
                       text=True, timeout=1800)                 # settings after the stage names are still settings
    assert r.returncode == 0 and f"output_dir={tmp_path / 'elsewhere' / 'dpt'}" in r.stdout, r.stderr
    r = subprocess.run(cli + ["bogus=1"], capture_output=True, text=True, timeout=1800)
    assert r.returncode != 0 and "only root=..., data_root=... and seed=..." in r.stderr


def test_the_shipped_full_pipeline_is_valid(tmp_path):
    """configs/full/pipeline.yaml: every stage checks out (no GPU needed to list it) and refers to real stages."""
    root, data = Path(__file__).resolve().parent.parent, tmp_path / "data"  # LLaVA-1.5's layout, files empty
    config = root / "configs" / "full" / "pipeline.yaml"
    with pytest.raises(ValueError, match="stage 'teacher_pretrain': data .*blip_laion_cc_sbu_558k.json not found"):
        run_pipeline(Pipeline.from_yaml(config, root=str(tmp_path / "runs"), data_root=str(data)), dry_run=True)
    (data / "LLaVA-Pretrain" / "images").mkdir(parents=True)
    for f in ("LLaVA-Pretrain/blip_laion_cc_sbu_558k.json", "llava_v1_5_mix665k.json"): (data / f).write_text("[]")
    pipe = Pipeline.from_yaml(config, root=str(tmp_path / "runs"), data_root=str(data))
    status = run_pipeline(pipe, dry_run=True)
    assert len(status) == 14 and {s for _, s in status} == {"would run"}
    order = stage_order(pipe)
    assert order.index("teacher") < order.index("dpt") < order.index("dft") < order.index("sft")
    assert pipe.init["teacher_llm"] == "Qwen/Qwen1.5-4B" and pipe.init["student_llm"] == "Qwen/Qwen1.5-1.8B"


def _shipped(name):
    return Path(__file__).resolve().parent.parent / "configs" / name / "pipeline.yaml"


def test_the_shipped_small_pipeline_is_valid_and_seeded(tmp_path):
    """configs/small: every stage checks out, the seed reaches the root, the starting models and every stage."""
    pipe = Pipeline.from_yaml(_shipped("small"), data_root=str(tmp_path / "world"), seed="2")
    assert pipe.root == Path("runs/small/seed2") and pipe.seed == 2 and pipe.world["n_train"] == 96000 and pipe.gates
    assert pipe.shared_root == Path("runs/small/shared")
    pipe.root, pipe.shared_root = tmp_path / "seed2", tmp_path / "shared"  # independent of runs/ in the checkout
    status = run_pipeline(pipe, dry_run=True)
    assert len(status) == 15 and {s for _, s in status} == {"would run"}
    assert not (tmp_path / "world").exists()  # a dry run writes nothing
    from compodistill.pipeline import stage_values
    assert stage_values(pipe, "dft")["seed"] == 2 and "seed" not in stage_values(pipe, "student_base")
    order = stage_order(pipe)
    assert order.index("vision") < order.index("teacher_binding") < order.index("teacher") < order.index("kd")
    assert order.index("vision") < order.index("student_base") < order.index("student") < order.index("none")
    assert order.index("dpt") < order.index("dft") < order.index("sft")
    tiny, small = (yaml.safe_load(_shipped(n).read_text()) for n in ("tiny", "small"))
    budget = ("max_steps", "per_device_train_batch_size", "learning_rate", "lr_scheduler_type", "warmup_steps")
    assert tiny["stages"] == {n: {k: v for k, v in st.items() if k not in budget} for n, st in small["stages"].items()}
    assert tiny["shared"]["stages"] == small["shared"]["stages"] == ["vision", "teacher_binding", "teacher"]
    steps = lambda n: small["stages"][n].get("max_steps", small["defaults"]["max_steps"])
    assert len({steps(n) for n in ("none", "kd", "vat_band", "vat_look", "vat_shuffled", "oracle", "vat_official")}) == 1
    assert steps("dpt") + steps("dft") + steps("sft") == steps("kd")  # CompoDistill at the same total budget
    with pytest.raises(ValueError, match="seed must be an integer"): Pipeline.from_yaml(_shipped("small"), seed="x")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    "configs/tiny run once from nothing (seed 3), for every test that needs its checkpoints: (its folder, a pipeline of any seed there, the status)."
    from compodistill.gates import teacher_report
    tmp_path = tmp_path_factory.mktemp("tiny")
    def tiny(seed):
        pipe = Pipeline.from_yaml(_shipped("tiny"), root=str(tmp_path / "seed{seed}"), data_root=str(tmp_path / "world"),
                                  seed=str(seed))
        pipe.shared_root = tmp_path / "shared"
        return pipe
    teacher_report(tiny(3))  # the shared stages, and the looking profile `ratio:@shared/gates.json` reads
    return tmp_path, tiny, run_pipeline(tiny(3))


def test_the_tiny_pipeline_runs_from_nothing(tiny_run):
    """configs/tiny end to end: the world is written, every stage of the small shape runs, the seed separates runs,
    and a world written with other settings is refused."""
    from compodistill.pipeline import prepare_world
    tmp_path, tiny, status = tiny_run
    pipe = tiny(3)
    assert pipe.root == tmp_path / "seed3"
    assert [n for n, s in status if s == "done"] == ["vision", "teacher_binding", "teacher"]  # trained by the report
    assert len(status) == 15 and {s for n, s in status if n not in pipe.shared_stages} == {"ran"}
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["gates.json", "init", "teacher", "teacher_binding", "vision"]
    again = run_pipeline(tiny(4))  # another seed: the shared teacher is reused, every student stage runs
    assert [n for n, s in again if s == "done"] == ["vision", "teacher_binding", "teacher"]
    assert json.loads((tmp_path / "seed4" / "dft" / "config.json").read_text())["training"]["seed"] == 4
    assert json.loads((tmp_path / "shared" / "teacher" / "config.json").read_text())["training"]["seed"] == 0
    manifest = json.loads((tmp_path / "world" / "world.json").read_text())
    assert manifest["n_train"] == 64
    for name, _ in status:
        done = json.loads(((tmp_path / "shared" if name in pipe.shared_stages else tmp_path / "seed3") / name / STAGE_DONE).read_text())
        assert done["stage"] == "copy_vision" if name == "student_base" else done["steps"] == 2, name
    look = json.loads((tmp_path / "seed3" / "vat_look" / "config.json").read_text())
    assert look["stage"]["matching"] == f"ratio:{tmp_path / 'shared' / 'gates.json'}" and look["resolved"]["vat_weight"] == 10
    oracle = json.loads((tmp_path / "seed3" / "oracle" / "config.json").read_text())["stage"]
    assert oracle["vat_target"] == f"oracle:{tmp_path / 'world' / 'train_questions.json'}" and oracle["vat_queries"] == "text"
    student = json.loads((tmp_path / "seed3" / "student" / "config.json").read_text())
    assert student["stage"]["freeze"] == ["vision"] and student["resolved"]["trains"] == ["vision", "projector"]
    from compodistill.checkpoints import load_llava
    t, _ = load_llava(tmp_path / "shared" / "teacher" / "model")
    s, _ = load_llava(tmp_path / "seed3" / "dft" / "model")
    st, _ = load_llava(tmp_path / "seed3" / "student" / "model")
    i, _ = load_llava(tmp_path / "shared" / "init" / "teacher")
    for (n, a), b, c in zip(t.model.vision_tower.state_dict().items(), s.model.vision_tower.state_dict().values(),
                            st.model.vision_tower.state_dict().values()):
        assert (a == b).all() and (a == c).all(), n  # the students see through the teacher's trained tower, frozen
    assert any((a != c).any() for a, c in zip(t.model.vision_tower.parameters(), i.model.vision_tower.parameters()))
    other = Pipeline.from_yaml(_shipped("tiny"), root=str(tmp_path / "x"), data_root=str(tmp_path / "world"))
    other.world = {**other.world, "n_train": 50}
    with pytest.raises(ValueError, match="written with other settings"): prepare_world(other)


def _export(*args):
    "Run `compodistill export` in this process: (exit code, stdout, stderr)."
    import contextlib
    import io
    from compodistill.cli import main
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: main(["export", *map(str, args)])
        except SystemExit as e: code = e.code
    return code, out.getvalue(), err.getvalue()


def test_the_tiny_pipelines_student_exports_as_plain_llava(tiny_run, tmp_path):
    """`compodistill export --plain --fit-images` on the tiny pipeline's trained CompoDistill student (sft, TAF
    projector): stock LlavaForConditionalGeneration loads it with no missing, unused or mismatched weights; every
    weight but the projector's is the student's; on the fit images its visual tokens are the TAF student's within
    the held-out error the export measured and printed; its logits on an image stay close, the next token the same."""
    from transformers import LlavaForConditionalGeneration
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector
    from compodistill.checkpoints import load_llava
    from compodistill.data import chat_batch, open_image
    from compodistill.models import TAFProjector
    root = tiny_run[0]
    sft, images = root / "seed3" / "sft" / "model", root / "world" / "images"
    code, out, err = _export("--model", sft, "--out", tmp_path / "plain", "--plain", "--fit-images", images)
    assert code == 0, err
    assert "plain LLaVA" in out
    held_out = float(re.search(r"held-out relative error [\d.]+ \(([\d.]+) of the tokens' variation\)", out).group(1))
    assert 0 < held_out < 0.25
    plain, info = LlavaForConditionalGeneration.from_pretrained(tmp_path / "plain", output_loading_info=True)
    assert not any(info.values()), info
    assert type(plain.model.multi_modal_projector) is LlavaMultiModalProjector
    taf, processor = load_llava(sft)
    assert isinstance(taf.model.multi_modal_projector, TAFProjector)
    exported = plain.state_dict()
    rest = {k: v for k, v in taf.state_dict().items() if "multi_modal_projector" not in k}
    assert rest and all(torch.equal(v, exported[k]) for k, v in rest.items())
    fit = [open_image(p) for p in sorted(images.iterdir()) if p.suffix == ".png"]
    pixels = processor.image_processor(fit, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        t_taf, t_plain = (torch.cat(list(m.model.get_image_features(pixel_values=pixels).pooler_output)) for m in (taf, plain))
    error = ((t_plain - t_taf).norm() / (t_taf - t_taf.mean(0)).norm()).item()   # over fit and held-out tokens
    assert 0 < error <= 1.5 * held_out, (error, held_out)
    batch = chat_batch(processor, fit[:8], ["what colour is the circle ?"] * 8)
    with torch.no_grad(): l_taf, l_plain = taf(**batch).logits, plain(**batch).logits
    assert (l_plain - l_taf).abs().max() < 0.1 * l_taf.std()
    assert torch.equal(l_plain[:, -1].argmax(-1), l_taf[:, -1].argmax(-1))


def test_the_tiny_pipelines_student_exports_and_answers_the_same(tiny_run, tmp_path):
    """`compodistill export` (TAF folded, not plain) of the tiny pipeline's trained student: after `import compodistill`
    the Auto classes load it as the registered `compodistill_llava` model, and greedy answers on the world's images
    are token for token the trained student's."""
    from transformers import AutoConfig, AutoModelForImageTextToText
    from compodistill.checkpoints import load_llava
    from compodistill.data import chat_batch, open_image
    root = tiny_run[0]
    sft, images = root / "seed3" / "sft" / "model", root / "world" / "images"
    code, out, err = _export("--model", sft, "--out", tmp_path / "release")
    assert code == 0, err
    assert AutoConfig.from_pretrained(tmp_path / "release").model_type == "compodistill_llava"
    auto = AutoModelForImageTextToText.from_pretrained(tmp_path / "release").eval()
    student, processor = load_llava(sft)
    pics = [open_image(p) for p in sorted(images.iterdir()) if p.suffix == ".png"][:8]
    batch = chat_batch(processor, pics, ["what colour is the circle ?", "how many objects are there ?"] * 4)
    def greedy(m):
        with torch.no_grad(): return m.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(greedy(auto), greedy(student))


def test_a_poor_or_impossible_refit_of_the_tiny_student_is_refused(tiny_run, tmp_path):
    """The re-fit of the trained student whose held-out error is above --max-fit-error, or that has too few visual
    tokens to fit, is a one-line error saying what to do (exit 2), and writes no checkpoint."""
    root = tiny_run[0]
    sft, images = root / "seed3" / "sft" / "model", root / "world" / "images"
    cli = ("--model", sft, "--out", tmp_path / "plain", "--plain", "--fit-images", images)
    code, out, err = _export(*cli, "--max-fit-error", "0.01", "--fit-steps", "20")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(r"compodistill export: error: --plain: the re-fitted projector's held-out error is 0\.\d+ of the "
                     r"visual tokens' variation, above max_error=0\.01: fit on more images .* --max-fit-error to accept "
                     r"a larger error; or export without --plain", err), err
    code, out, err = _export(*cli, "--fit-count", "1")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "too few visual tokens to re-fit the projector: 13 to fit (more than 32, the student's width, are needed)" in err
    assert not (tmp_path / "plain").exists()
