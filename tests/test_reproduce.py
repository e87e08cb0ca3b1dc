"""The reproduction: seeds share one teacher, every model is scored on every set, results are cached and tabulated."""
import json
import shutil
from pathlib import Path

import pytest

from compodistill.cli import main
from compodistill.reproduce import MAIN_COLUMNS, MODELS, mean_std, metric, reproduce, results_table

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    work = tmp_path_factory.mktemp("repro")
    shutil.copytree(CONFIGS, work / "configs")
    return work, reproduce(work / "configs" / "tiny" / "pipeline.yaml", seeds=(0, 1), workdir=work, limit=6)


def test_every_model_scored_on_every_set(tiny_result):
    work, result = tiny_result
    assert [r["seed"] for r in result["runs"]] == [0, 1]
    for run in result["runs"]:
        assert set(run["scores"]) == set(MODELS)
        for scores in run["scores"].values():
            assert scores["recognition"]["n"] == 6 and scores["CR"]["n"] == 6 and scores["winoground"]["n"] <= 6
            for col in MAIN_COLUMNS: assert 0 <= metric(scores, col) <= 1
        assert set(run["attention"]) == set(MODELS) - {"teacher"}
        for a in run["attention"].values(): assert -1 <= a["band_cosine"] <= 1 and len(a["depth_curve"]) == 4
    assert json.loads((work / "runs" / "tiny" / "results.json").read_text()) == result


def test_seeds_share_the_teacher_and_differ_in_the_students(tiny_result):
    work, result = tiny_result
    first, second = result["runs"]
    assert {"teacher_lm", "vision", "teacher_pretrain", "teacher"} <= set(first["ran"])
    assert not {"teacher_lm", "vision", "teacher_pretrain", "teacher"} & set(second["ran"]) and "dft" in second["ran"]
    assert first["scores"]["teacher"] == second["scores"]["teacher"]
    assert (work / "runs" / "tiny" / "shared" / "teacher" / "eval.json").is_file()
    s0, s1 = (json.loads((work / "runs" / "tiny" / f"seed{s}" / "dft" / "config.json").read_text()) for s in (0, 1))
    assert (s0["training"]["seed"], s1["training"]["seed"]) == (0, 1)


def test_a_rerun_only_loads(tiny_result, capsys):
    work, result = tiny_result
    import contextlib
    with contextlib.chdir(work):
        main(["reproduce", "--config", "configs/tiny/pipeline.yaml", "--seeds", "0", "1", "--limit", "6"])
    again = json.loads((work / "runs" / "tiny" / "results.json").read_text())
    assert all(r["ran"] == [] for r in again["runs"])
    assert [r["scores"] for r in again["runs"]] == [r["scores"] for r in result["runs"]]
    out = capsys.readouterr().out
    assert "| CompoDistill |" in out and "| model | recognition |" in out and "CR likelihood swap_att" in out


def test_table_and_statistics():
    assert mean_std([0.5]) == (0.5, 0.0) and mean_std([1.0, 3.0]) == (2.0, pytest.approx(2 ** 0.5))
    scores = {k: {"accuracy": v} for k, v in zip(MAIN_COLUMNS, (0.9, 0.8, 0.7, 0.65, 0, 0.6, 0.5)) if "winoground" not in k}
    scores["winoground"] = dict(text=0.4, image=0.3, group=0.2)
    scores["winoground likelihood"] = dict(text=0.45, image=0.35, group=0.25)
    scores["CR"]["per_category"] = {"swap_att": 0.25}
    scores["CR likelihood"]["per_category"] = {"swap_att": 0.75}
    run = dict(scores={m: scores for m in MODELS}, attention={m: dict(band_cosine=0.5) for m in MODELS if m != "teacher"})
    table = results_table(dict(runs=[run, run]))
    assert "| teacher | 90.0 ± 0.0 | 80.0 ± 0.0 | 70.0 ± 0.0 | 65.0 ± 0.0 | 25.0 ± 0.0 | 60.0 ± 0.0 | 50.0 ± 0.0 | — |" in table
    assert "| KD | 90.0 ± 0.0" in table and table.endswith("0.500 ± 0.000 |")
    assert metric(scores, "CR likelihood swap_att") == 0.75 and metric(scores, "winoground likelihood image") == 0.35
    assert metric(scores, "CR swap_att") == 0.25 and metric(scores, "winoground text") == 0.4
