"""The distillation-step benchmark: every mode runs, vat and eager agree, the command writes its JSON."""
import json
import math

import pytest

from compodistill.cli import main
from compodistill.cost import (MODES, bench_matching, bench_preset, bench_ratios, bench_step,
                                flops_per_token, format_table, peak_tflops, step_flops)
from compodistill.models import get_preset, preset_parameters


@pytest.fixture(scope="module")
def tiny_rows():
    return {mode: bench_step(mode, "tiny", repeats=1) for mode in MODES}


def test_each_mode_reports_sane_fields(tiny_rows):
    for mode, r in tiny_rows.items():
        assert r["mode"] == mode and r["preset"] == "tiny" and r["device"] == "cpu" and r["dtype"] == "float32"
        assert r["seq_len"] == 16 + 64 and (r["teacher_layers"], r["student_layers"]) == (6, 4)
        assert math.isfinite(r["seconds"])
        assert r["step_mib"] >= 0 and r["peak_mib"] > r["step_mib"]
        assert r["tflops"] == pytest.approx(step_flops("tiny", 2, r["seq_len"]) / r["seconds"] / 1e12)  # unrounded: never 0
        assert r["mfu"] is None  # no peak rate for a CPU
        assert all(math.isfinite(v) for v in r["loss"].values())
        assert r["loss"]["lm"] > 0 and r["loss"]["kd"] > 0
    assert tiny_rows["kd"]["loss"]["vat"] == 0
    assert tiny_rows["vat"]["loss"]["vat"] > 0


def test_vat_and_eager_give_the_same_loss(tiny_rows):
    v, e = tiny_rows["vat"]["loss"], tiny_rows["eager"]["loss"]
    for k in ("lm", "kd", "loss"): assert v[k] == pytest.approx(e[k], rel=1e-5), k
    assert v["vat"] == pytest.approx(e["vat"], abs=1e-6)  # 1 - cos near 1: float32 keeps ~1e-7 absolute
    assert v["lm"] == tiny_rows["kd"]["loss"]["lm"]  # same weights and batch in every mode


def test_memory_only_step_reports_no_time():
    r = bench_step("kd", "tiny", repeats=0)
    assert r["seconds"] is None and r["tflops"] is None
    assert r["peak_mib"] > 0  # memory only


def test_unknown_mode_and_presets():
    with pytest.raises(ValueError, match="mode must be one of"): bench_step("flash", "tiny")
    assert (bench_preset().teacher.depth, bench_preset().student.depth) == (40, 24)
    assert bench_preset().teacher.arch["hidden_size"] < 100  # the CPU default is the depth-faithful copy
    assert bench_preset(device="cuda").name == "full"
    assert bench_preset(head_dim=8).teacher.arch["hidden_size"] == 8 * 20 and bench_preset(head_dim=8).teacher.depth == 40
    m = bench_matching(40, 24)
    assert m.strategy == "official" and len(m.student_layers) == 7 and len(m.teacher_layers) == 11
    assert bench_matching(6, 4).strategy == "group"


def test_flops_formula_by_hand():
    p = get_preset("tiny")
    s, t = p.student.arch, p.teacher.arch
    n = preset_parameters("tiny")
    fs = flops_per_token("tiny", "student", 80)
    assert fs == dict(linear=2 * (n["student"]["llm"] - s["vocab_size"] * s["hidden_size"]),
                      attention=4 * s["num_hidden_layers"] * s["hidden_size"] * 80)
    ft = sum(flops_per_token("tiny", "teacher", 80).values())
    vision = sum(n[r]["vision"] + n[r]["projector"] for r in ("student", "teacher"))
    assert step_flops("tiny", 2, 80) == 2 * (80 * (3 * sum(fs.values()) + ft) + 2 * 16 * vision)
    assert 7e12 < step_flops("full", 1, 793) < 2e13  # ~ 8·N·T with N_s ≈ 1.8B, N_t ≈ 4B, T ≈ 800
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989 and peak_tflops("NVIDIA H100 PCIe") == 756
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312 and peak_tflops("Tesla T4") is None


def test_ratios_and_table():
    rows = [dict(mode="kd", seconds=1.0, step_mib=100, peak_mib=500, tflops=1, mfu=None,
                 loss=dict(lm=1, kd=.5, vat=0, loss=1.5)),
            dict(mode="vat", seconds=1.1, step_mib=120, peak_mib=520, tflops=1, mfu=None,
                 loss=dict(lm=1, kd=.5, vat=.2, loss=1.7)),
            dict(mode="eager", seconds=2.0, step_mib=480, peak_mib=900, tflops=1, mfu=None,
                 loss=dict(lm=1, kd=.5, vat=.2, loss=1.7))]
    q = bench_ratios(rows)
    assert q["vat/kd"]["time"] == pytest.approx(1.1) and q["vat/kd"]["memory"] == pytest.approx(1.2)
    assert q["vat/kd"]["met"] == dict(time=True, peak_memory=True, memory=False)
    assert q["eager/vat"]["memory"] == pytest.approx(4.0)
    assert q["eager/vat"]["met"] == dict(time=True, peak_memory=False, memory=True)   # 900 / 520 < 3
    table = format_table(rows)
    assert "| vat/kd | 1.10× | 1.20× | 1.04× |" in table and "time yes, peak memory yes, memory no" in table
    assert "MFU" not in table and "MFU" in format_table([{**r, "mfu": .4} for r in rows])
    assert "eager/vat" not in bench_ratios(rows[:2])
    flat = bench_ratios([rows[0], {**rows[1], "step_mib": 0}, rows[2]])  # a step that added no resident memory
    assert math.isnan(flat["eager/vat"]["memory"]) and flat["eager/vat"]["met"]["memory"] is False


def test_command_prints_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    main(["bench", "--device", "cpu", "--preset", "tiny", "--repeats", "1", "--text-tokens", "8",
                   "--analysis-images", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "| mode | step time (s)" in printed and "| eager/vat |" in printed and "images/s" in printed
    data = json.loads(out.read_text())
    assert [r["mode"] for r in data["rows"]] == list(MODES) and all(r["seq_len"] == 24 for r in data["rows"])
    assert {"date", "torch", "cpu_count", "device_name"} <= set(data["machine"]) and data["machine"]["cpu_count"] >= 1
    assert data["analysis"]["images"] == 2
    assert data["analysis"]["images_per_s"] == pytest.approx(2 / data["analysis"]["seconds"])
    assert all(r["memory_env"] == {"MALLOC_MMAP_THRESHOLD_": "65536"} for r in data["rows"])  # memory from its own run
    assert set(data["ratios"]) == {"vat/kd", "eager/vat"}
