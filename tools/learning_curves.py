"""Do the gaps close with more steps? Learning curves of the mechanism test's conditions on one seed.

  python tools/learning_curves.py [SEED] [STEPS] [EVERY] [STAGE ...]    # from the repository root, after make reproduce
  python tools/learning_curves.py 0 3000 500 kd vat_look oracle           # the default

Each stage of configs/small/pipeline.yaml named is trained again for STEPS steps (same seed, same starting student,
same batches, a cosine schedule over STEPS) into runs/small/curves/seed<SEED>/<stage>/, two at a time, keeping a
checkpoint every EVERY steps; every checkpoint is then scored like the reproduction's models (`score_grid`, the
evaluation sets) and the table of the primary endpoints per step is printed and written to
runs/small/curves/seed<SEED>/curves.json (shown in nbs/11_reproduce.ipynb).
"""
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

CONFIG = Path("configs/small/pipeline.yaml")


def train(seed: int, stage: str, steps: int, every: int) -> str:
    "Train `stage` of seed `seed`'s pipeline for `steps` steps into the curves folder, a checkpoint every `every`; its folder."
    from compodistill.pipeline import Pipeline, output_to, stage_values
    from compodistill.runner import parse_stage_config, run_stage
    torch.set_num_threads(1)
    pipe = Pipeline.from_yaml(CONFIG, seed=str(seed))
    out = pipe.root.parent / "curves" / f"seed{seed}" / stage
    values = {**stage_values(pipe, stage), "output_dir": str(out), "max_steps": steps, "save_steps": every,
              "save_total_limit": None}
    with output_to(out / "train.log"):  # the stage's log in its folder, as the pipeline keeps it
        run_stage(*parse_stage_config(None, **values))
    return str(out)


def curve(folder: str, data_root: str) -> dict:
    "The reproduction's measures of every checkpoint of a folder: {step: measures}."
    from compodistill.checkpoints import load_llava, load_llava_weights
    from compodistill.gates import eval_records, score_grid
    from compodistill.reproduce import measures
    torch.set_num_threads(1)
    folder, test = Path(folder), eval_records(data_root)
    _, processor = load_llava(folder / "model")
    rel = json.loads((folder.parents[2] / "shared" / "gates.json").read_text())["tested_relations"]
    out = {}
    for ckpt in sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name[11:])):
        model, _ = load_llava_weights(ckpt)
        out[int(ckpt.name[11:])] = measures(score_grid(model, processor, test), rel)
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    seed, steps, every = (int(a) for a in (args + ["0", "3000", "500"])[:3])
    stages = args[3:] or ["kd", "vat_look", "oracle"]
    from compodistill.pipeline import Pipeline
    data_root = str(Pipeline.from_yaml(CONFIG).data_root)
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        folders = list(pool.map(train, [seed] * len(stages), stages, [steps] * len(stages), [every] * len(stages)))
        curves = dict(zip(stages, pool.map(curve, folders, [data_root] * len(stages))))
    path = Path(folders[0]).parent / "curves.json"
    path.write_text(json.dumps(dict(seed=seed, steps=steps, every=every, curves=curves), indent=1))
    print("| stage | step | existence | binding | relations | where |\n|---|---|---|---|---|---|")
    for stage, c in curves.items():
        for step, m in c.items():
            print(f"| {stage} | {step} | " + " | ".join(f"{100 * m[k]:.1f}" for k in ("existence", "binding", "relations", "where")) + " |")
    print(f"\nwritten to {path}")
