"""The shipped launch configs are valid accelerate configs."""
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name, kind, n", [("single_gpu", "NO", 1), ("ddp", "MULTI_GPU", 8)])
def test_accelerate_configs_load(name, kind, n):
    cfg = load_config_from_file(str(ROOT / "configs" / "accelerate" / f"{name}.yaml"))
    assert str(cfg.distributed_type).endswith(kind) and cfg.num_processes == n and cfg.mixed_precision == "bf16"
