"""The mechanism test: jobs on two workers, one gated teacher shared by every seed, every condition scored, cached, tabulated."""
import contextlib
import json
import shutil
from pathlib import Path

import pytest

from compodistill.cli import main
from compodistill.gates import GateError
from compodistill.reproduce import (BASELINE, CONDITIONS, MEASURES, ORACLE, SHUFFLED, VAT, bootstrap_ci, difference, reproduce,
                                    seed_table, summary_table, verdict, verdict_text)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    work = tmp_path_factory.mktemp("repro")
    shutil.copytree(CONFIGS, work / "configs")
    return work, reproduce(work / "configs" / "tiny" / "pipeline.yaml", seeds=(0, 1), workdir=work, progress=False)


def test_every_condition_of_every_seed_is_scored(tiny_result):
    work, result = tiny_result
    assert list(result["runs"]) == ["0", "1"] and all(set(r) == set(CONDITIONS) for r in result["runs"].values())
    for run in result["runs"].values():
        for ms in run.values(): assert set(ms) == set(MEASURES) and all(0 <= v <= 1 for v in ms.values())
    assert json.loads((work / "runs" / "tiny" / "results.json").read_text()) == result
    for seed in (0, 1):  # every condition's stage trained from the seed's student, on that seed
        cfg = json.loads((work / "runs" / "tiny" / f"seed{seed}" / "vat_look" / "config.json").read_text())
        assert cfg["training"]["seed"] == seed and cfg["stage"]["model"].endswith(f"seed{seed}/student/model")
        assert (work / "runs" / "tiny" / f"seed{seed}" / "oracle" / "scores.json").is_file()
        log = (work / "runs" / "tiny" / f"seed{seed}" / "kd" / "train.log").read_text()  # each stage's log in its folder
        assert "stage lm:" in log and "'loss_kd'" in log and "Loading weights" not in log and "Writing model shards" not in log


def test_seeds_share_one_teacher_and_its_report(tiny_result):
    work, result = tiny_result
    shared = work / "runs" / "tiny" / "shared"
    report = json.loads((shared / "gates.json").read_text())
    assert report["teacher_sha256"] == json.loads((shared / "teacher" / "stage.json").read_text())["model_sha256"]
    assert len(report["ratios"]) == len(report["looking"]["word"]) and result["gates"] == report["gates"]
    assert not list((work / "runs" / "tiny" / "seed1").glob("teacher*"))


def test_a_rerun_trains_and_scores_nothing_and_prints_the_same_table(tiny_result, capsys):
    work, result = tiny_result
    stamps = {p: p.stat().st_mtime_ns for p in (work / "runs" / "tiny").rglob("scores.json")}
    with contextlib.chdir(work):
        main(["reproduce", "--config", "configs/tiny/pipeline.yaml", "--seeds", "0", "1"])
    out = capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing scored again
    again = json.loads((work / "runs" / "tiny" / "results.json").read_text())
    assert again["runs"] == result["runs"] and summary_table(again) in out and "binding per seed" in out


def test_a_failed_gate_stops_the_run_before_any_distillation(tmp_path):
    shutil.copytree(CONFIGS, tmp_path / "configs")
    tiny = tmp_path / "configs" / "tiny" / "pipeline.yaml"
    tiny.write_text(tiny.read_text().replace("gates: false", "gates: true"))  # the tiny teacher cannot pass them
    with pytest.raises(GateError, match="teacher gates failed"):
        reproduce(tmp_path / "configs" / "tiny" / "pipeline.yaml", seeds=(0,), workdir=tmp_path, progress=False)
    assert not (tmp_path / "runs" / "tiny" / "seed0" / "kd").exists()


def made_up(vat, shuffled, oracle, kd=(.5, .52, .48, .5, .51)):
    "A result of 5 seeds with the given binding per seed for the rule's four conditions."
    rows = {BASELINE: kd, VAT: vat, SHUFFLED: shuffled, ORACLE: oracle}
    return dict(teacher=dict(existence=1.0), runs={str(s): {r: dict(binding=v[s], existence=.99) for r, v in rows.items()}
                                                   for s in range(5)})


def test_the_decision_rule_and_the_intervals():
    up, same = (.8, .9, .7, .85, .95), (.5, .5, .49, .51, .52)
    assert verdict(made_up(up, same, up), "binding") == "content"
    assert verdict(made_up(up, up, up), "binding") == "regulariser"
    assert verdict(made_up(same, same, same), "binding") == "not attention"
    assert verdict(made_up(same, same, up), "binding") == "not transferred"
    mean, lo, hi = difference(made_up(up, same, up), VAT, BASELINE, "binding")
    assert mean == pytest.approx(.338) and 0 < lo < mean < hi
    assert bootstrap_ci([0.3] * 5) == (0.3, 0.3, 0.3) and bootstrap_ci([1, 2, 3]) == bootstrap_ci([1, 2, 3])
    with pytest.raises(ValueError, match="no values"): bootstrap_ci([])


def test_tables_show_every_condition_and_seed(tiny_result):
    _, result = tiny_result
    table, seeds = summary_table(result), seed_table(result, "relations")
    assert all(f"| {row} |" in table for row in CONDITIONS) and "| teacher |" in table and "[95% CI]" in table
    assert "| seed 0 | seed 1 |" in seeds and "Precondition" in verdict_text(result)
