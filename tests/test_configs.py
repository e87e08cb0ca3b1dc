"""The shipped launch configs are valid accelerate configs."""
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

ROOT = Path(__file__).resolve().parent.parent


ACCELERATE = ROOT / "configs" / "accelerate"
CONFIGS = [("single_gpu", "NO", 1), ("ddp", "MULTI_GPU", 8), ("zero2", "DEEPSPEED", 8), ("zero3", "DEEPSPEED", 8),
           ("fsdp", "FSDP", 8)]


@pytest.mark.parametrize("name, kind, n", CONFIGS)
def test_accelerate_configs_load(name, kind, n):
    cfg = load_config_from_file(str(ACCELERATE / f"{name}.yaml"))
    assert str(cfg.distributed_type).endswith(kind) and cfg.num_processes == n and cfg.mixed_precision == "bf16"
    header = (ACCELERATE / f"{name}.yaml").read_text().split("\ncompute_environment:")[0]
    assert f"accelerate launch --config_file configs/accelerate/{name}.yaml -m compodistill.cli train --config STAGE.yaml" in header


def test_every_shipped_accelerate_config_is_checked():
    assert sorted(p.stem for p in ACCELERATE.glob("*.yaml")) == sorted(name for name, _, _ in CONFIGS)


def test_sharded_configs():
    """ZeRO stages as named; ZeRO-3 gathers the final model in 16 bit; FSDP2 with what the stage runner and VAT need."""
    zero = {n: load_config_from_file(str(ACCELERATE / f"{n}.yaml")).deepspeed_config for n in ("zero2", "zero3")}
    assert zero["zero2"]["zero_stage"] == 2 and zero["zero3"]["zero_stage"] == 3 and zero["zero3"]["zero3_save_16bit_model"]
    fsdp = load_config_from_file(str(ACCELERATE / "fsdp.yaml")).fsdp_config
    assert fsdp["fsdp_version"] == 2 and not fsdp["fsdp_activation_checkpointing"] and not fsdp["fsdp_cpu_ram_efficient_loading"]
    assert "GPU only" in (ACCELERATE / "fsdp.yaml").read_text().split("\ncompute_environment:")[0]
