"""The recipe of 06_taf for scoring an exported student with lmms-eval's `llava_hf` model, end to end on a tiny one.
Skipped where lmms-eval is not installed (it is not a dependency of compodistill)."""
import copy
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from compodistill.checkpoints import make_processor, save_llava, word_tokenizer
from compodistill.models import build_pair
from compodistill.taf import attach_taf, fold_taf, projector_inputs, refit_plain_projector
from compodistill.world import sample_scene

pytest.importorskip("lmms_eval")

POST = "\nAnswer the question using a single word or phrase."
TASK = """dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
task: cd_yesno
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 4
  temperature: 0
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
metadata:
  - version: 0.0
"""
UTILS = f'''from PIL import Image

def doc_to_visual(doc): return [Image.open(doc["image"]).convert("RGB")]

def doc_to_text(doc, lmms_eval_specific_kwargs=None): return doc["question"] + {POST!r}

def process_results(doc, results): return {{"accuracy": float(results[0].strip().lower() == doc["answer"])}}
'''
# lmms-eval's llava_hf picks its model class by model_type; the launcher adds compodistill_llava to that table
LAUNCHER = ("import runpy, compodistill; from compodistill.models import CompoDistillLlavaForConditionalGeneration as M; "
            "from lmms_eval.models.simple import llava_hf; llava_hf.model_map['compodistill_llava'] = M; "
            "runpy.run_module('lmms_eval', run_name='__main__', alter_sys=True)")


def _answers(model, processor, docs):
    "What the model answers to each record, prompted the way llava_hf prompts (string content, `<image>` first)."
    out = []
    for d in docs:
        text = processor.tokenizer.apply_chat_template([{"role": "user", "content": "<image>\n" + d["question"] + POST}],
                                                       tokenize=False, add_generation_prompt=True)
        x = processor(images=[Image.open(d["image"]).convert("RGB")], text=text, return_tensors="pt")
        eos = processor.tokenizer.eos_token_id
        with torch.no_grad(): g = model.generate(**x, max_new_tokens=4, do_sample=False, pad_token_id=eos, eos_token_id=eos)
        out.append(processor.tokenizer.decode(g[0, x["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def test_llava_hf_scores_the_exact_and_the_plain_export(tmp_path):
    tok = word_tokenizer("is there a red circle ? yes no answer the question using single word or phrase .".split())
    teacher, student = build_pair("tiny", vocab_size=len(tok), image_token_id=tok.image_token_id)
    proc = make_processor(tok, attach_taf(student, teacher).config.vision_config)
    exact = fold_taf(student)
    plain = copy.deepcopy(exact)
    fit = [sample_scene(random.Random(100 + i), f"f{i}").render(32) for i in range(50)]
    refit_plain_projector(plain, projector_inputs(plain, proc.image_processor(fit, return_tensors="pt")["pixel_values"]))
    (tmp_path / "images").mkdir()
    docs = []
    for i in range(6):
        scene = sample_scene(random.Random(i), f"s{i}")
        scene.render(64).save(tmp_path / "images" / f"{scene.id}.png")
        docs.append(dict(question_id=i, image=str(tmp_path / "images" / f"{scene.id}.png"),
                         question="is there a red circle ?", answer="yes" if i % 2 else "no"))
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "tasks" / "cd_yesno").mkdir(parents=True)
    (tmp_path / "tasks" / "cd_yesno" / "cd_yesno.yaml").write_text(TASK.format(docs=tmp_path / "docs.jsonl"))
    (tmp_path / "tasks" / "cd_yesno" / "utils.py").write_text(UTILS)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for name, model, launch in (("exact", exact, ["-c", LAUNCHER]), ("plain", plain, ["-m", "lmms_eval"])):
        path = save_llava(model, proc, tmp_path / name)
        r = subprocess.run([sys.executable, *launch, "eval", "--model", "llava_hf", "--model_args",
                            f"pretrained={path},device_map=cpu", "--tasks", "cd_yesno", "--include_path", str(tmp_path / "tasks"),
                            "--device", "cpu", "--batch_size", "1", "--output_path", str(tmp_path / f"out-{name}"),
                            "--log_samples"], capture_output=True, text=True, env=env, timeout=1200)
        assert r.returncode == 0, r.stderr[-3000:]
        samples = next((tmp_path / f"out-{name}").glob("*/*_samples_cd_yesno.jsonl"))
        rows = sorted((json.loads(l) for l in samples.read_text().splitlines()), key=lambda r: r["doc_id"])
        got = [r["filtered_resps"][0] if isinstance(r["filtered_resps"], list) else r["filtered_resps"] for r in rows]
        assert got == _answers(model, proc, docs), name                      # the harness sees the model we exported
        results = json.loads(next((tmp_path / f"out-{name}").glob("*/*_results.json")).read_text())["results"]
        assert 0 <= results["cd_yesno"]["accuracy,none"] <= 1
