"""Where does a deeper grid-world teacher look? The teacher of configs/small/pipeline.yaml trained at several depths
(`init.teacher_layers`), each scored with its gates, controls and looking profiles (`compodistill gates`'s report).

  python tools/teacher_depth.py 4 6 8      # from the repository root; about 12, 16 and 20 minutes on one core each

Depth 4 is the config as it ships (runs/small); depth L trains into runs/small<L>/ with the same world
(runs/small/world), its pipeline file written there. Each report is runs/small<L>/shared/gates.json; the table printed
at the end (and shown in nbs/04_misalignment.ipynb) gives each profile's peak layer and relative depth.
"""
import sys
from pathlib import Path

import yaml

from compodistill.attention import relative_depth
from compodistill.gates import teacher_report
from compodistill.pipeline import Pipeline

CONFIG = Path("configs/small/pipeline.yaml")


def pipeline_file(layers: int) -> Path:
    "The shipped pipeline (depth 4) or a copy of it whose teacher has `layers` layers, training into runs/small<layers>/."
    if layers == 4: return CONFIG
    spec = yaml.safe_load(CONFIG.read_text())
    spec["init"]["teacher_layers"] = layers
    spec["root"], spec["shared"]["root"] = f"runs/small{layers}/seed{{seed}}", f"runs/small{layers}/shared"
    path = Path(f"runs/small{layers}/pipeline.yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def peak(ratios: list) -> str:
    "The layer where a profile peaks, its relative depth and its ratio."
    k = max(range(len(ratios)), key=ratios.__getitem__)
    return f"layer {k} (depth {relative_depth(len(ratios))[k]:.2f}): {ratios[k]:.2f}"


if __name__ == "__main__":
    rows = []
    for layers in map(int, sys.argv[1:]):
        report = teacher_report(Pipeline.from_yaml(pipeline_file(layers)))
        gates = ", ".join(f"{g['category']} {g['value']:.3f}" for g in report["gates"])
        rows.append(f"| {layers} | {peak(report['looking']['word'])} | {peak(report['looking']['answer'])} | {gates} |")
    print("| teacher layers | object words peak | answer position peak | gates |\n|---|---|---|---|\n" + "\n".join(rows))
