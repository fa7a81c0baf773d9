"""--gpu-memory: the planner picks settings whose estimate fits, in a fixed order, or refuses."""
import json

import numpy as np
import pytest
import soundfile as sf

from musicgen_trainer.planner import plan, planner_table, released_facts as released
from musicgen_trainer.train_config import TrainConfig


def test_the_planner_takes_the_cheapest_change_that_fits():
    config = TrainConfig(data="x", batch_size=4, grad_accum=2)
    roomy = plan(config, released("small"), "bf16", 80)
    assert (roomy.batch_size, roomy.grad_accum, roomy.lora) == (8, 1, None)  # the largest micro-batch first
    small12 = plan(config, released("small"), "bf16", 12)  # full fine-tune: micro-batch 1 fits as it is
    assert (small12.batch_size, small12.grad_accum) == (1, 8) and small12.estimate_gib <= 11
    assert not small12.activation_checkpointing and small12.lora is None and small12.optimizer == "adamw"
    small11 = plan(config, released("small"), "bf16", 11)  # needs checkpointing, nothing more
    assert small11.activation_checkpointing and small11.lora is None and small11.optimizer == "adamw"
    small9 = plan(config, released("small"), "bf16", 9)  # and then 8-bit states, still a full fine-tune
    assert small9.activation_checkpointing and small9.lora is None and small9.optimizer == "adamw8bit"
    medium12 = plan(config, released("medium"), "bf16", 12)  # only with LoRA
    assert medium12.lora == 16 and medium12.activation_checkpointing and medium12.estimate_gib <= 11
    assert any("LoRA" in r for r in medium12.reasons)
    large12 = plan(config, released("large"), "bf16", 12)
    assert large12.lora == 16 and large12.estimate_gib <= 11
    with pytest.raises(ValueError, match="nothing fits 4 GB") as err:
        plan(config, released("large"), "bf16", 4)
    assert "\n" not in str(err.value)


def test_gpu_memory_applies_the_plan_in_show_and_in_training(tmp_path):
    from musicgen_trainer.dry_run import describe, format_description
    from musicgen_trainer.finetune import train
    data = tmp_path / "data"
    data.mkdir()
    t = np.arange(44100) / 44100
    for i in range(4):
        sf.write(data / f"c{i}.wav", (0.3 * np.sin(2 * np.pi * 220 * (i + 1) * t)).astype(np.float32), 44100)
        (data / f"c{i}.txt").write_text(f"take {i}")
    common = dict(data=str(data), model="tiny", device="cpu", batch_size=4, segment_seconds=1.0)
    # tiny at batch 4 x 1 s needs ~0.03 GiB: 1.02 GB leaves 0.02 GiB after the CUDA context
    shown = describe(TrainConfig(**common, gpu_memory=1.02))
    planned = shown["planned_config"]
    assert planned["batch_size"] * planned["grad_accum"] == 4 and planned["batch_size"] < 4
    assert shown["estimated_peak_memory_gib"] <= 0.02 and "memory plan" in format_description(shown)
    with pytest.raises(ValueError, match="nothing fits"):
        describe(TrainConfig(**common, gpu_memory=1.0001))
    train(TrainConfig(**common, gpu_memory=1.02, out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
                      steps=1, sample_every=0, valid_fraction=0.0, progress=False))
    used = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (used["batch_size"], used["grad_accum"]) == (planned["batch_size"], planned["grad_accum"])


def test_docs_planner_table_is_the_planners():
    """docs/training.md's --gpu-memory table is planner_table()'s output (paste it when this fails)."""
    from pathlib import Path
    text = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text(encoding="utf-8")
    assert text.split("<!-- planner-table -->\n")[1].split("\n<!-- /planner-table -->")[0] == planner_table()
