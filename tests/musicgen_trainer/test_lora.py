"""LoRA fine-tuning (lora.py, train.py --lora, generate.py --lora) on the tiny model, CPU."""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen_trainer import cli_generate, run_folder
from musicgen_trainer.finetune import train
from musicgen_trainer.train_config import TrainConfig
from mt_helpers import train_stopped_after


def _tone(seconds, freq, sr=32000):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3.0 * t))).astype(np.float32)


@pytest.fixture(scope="module")
def two_clips(tmp_path_factory):
    data = tmp_path_factory.mktemp("two")
    for i, (freq, caption) in enumerate(((220.0, "jazz piano"), (330.0, "rock guitar"))):
        sf.write(data / f"clip{i}.wav", _tone(1.0, freq), 32000)
        (data / f"clip{i}.txt").write_text(caption)
    return data


def _config(data, out, cache, **kw):
    base = dict(data=str(data), model="tiny", out=str(out), cache_dir=str(cache), batch_size=2,
                segment_seconds=1.0, lr=5e-3, warmup_steps=2, sample_every=0, valid_every=1000,
                save_every=1000, progress=False, device="cpu", export_dtype="fp32", valid_fraction=0.0,
                lora=4)
    base.update(kw)
    return TrainConfig(**base)


def _last_state(out):
    return run_folder.load_state(run_folder.list_states(Path(out) / "checkpoints")[-1])


def _logits(model, codes, captions):
    from audiocraft.modules.conditioners import ConditioningAttributes
    attrs = [ConditioningAttributes(text={"description": c}) for c in captions]
    with torch.no_grad():
        out = model.lm.compute_predictions(codes, attrs)
    return out.logits[out.mask.expand_as(out.logits[..., 0])]  # [N, card] at the valid positions


@pytest.fixture(scope="module")
def lora_run(two_clips, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    train(_config(two_clips, root / "run", root / "cache", steps=4))
    return root / "run"


def test_only_adapters_train_and_base_stays_bit_identical(lora_run, tiny_model):
    saved = _last_state(lora_run)
    weights = saved["lm"]
    adapters = {k: v for k, v in weights.items() if ".lora_" in k}
    assert adapters and all(".lora_A.default." in k or ".lora_B.default." in k for k in adapters)
    assert any(v.abs().max() > 0 for k, v in adapters.items() if "lora_B" in k)  # B starts at 0: it trained
    base = tiny_model.lm.state_dict()
    for key, value in weights.items():
        if ".lora_" in key:
            continue
        assert torch.equal(value, base[key.replace(".base_layer.", ".")]), key
    # AdamW state only for the adapters (2 per adapted linear: A and B; 3 linears x 2 attentions ... )
    assert len(saved["optimizer"]["state"]) == len(adapters)
    adapter = lora_run / "adapter"
    record = json.loads((adapter / "musicgen_lora.json").read_text())
    assert record["base_model"] == "tiny" and record["rank"] == 4 and record["alpha"] == 8.0
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    assert (adapter / "adapter_model.safetensors").stat().st_size < 200_000  # the adapters alone


def test_merged_export_equals_adapter_applied_at_load(lora_run, tiny_model):
    from musicgen_trainer.lora import load_with_adapter
    from musicgen_trainer.models import load_model

    merged = load_model(lora_run / "export", device="cpu")  # audiocraft's layout, base key names
    unmerged = load_with_adapter("tiny", lora_run / "adapter", device="cpu", merge=False)
    at_load = load_with_adapter("tiny", lora_run / "adapter", device="cpu")
    codes = torch.randint(0, 2048, (2, 4, 20), generator=torch.Generator().manual_seed(0))
    captions = ["jazz piano", "rock guitar"]
    reference = _logits(merged, codes, captions)
    torch.testing.assert_close(_logits(unmerged, codes, captions), reference, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_logits(at_load, codes, captions), reference, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(_logits(tiny_model, codes, captions), reference, atol=1e-3)  # the adapter acts
    tokens = []
    for model in (merged, unmerged, at_load):
        model.set_generation_params(use_sampling=True, top_k=1, duration=0.5, cfg_coef=1.0)
        with torch.no_grad():
            tokens.append(model.generate(captions, progress=False, return_tokens=True)[1])
    assert torch.equal(tokens[0], tokens[1]) and torch.equal(tokens[0], tokens[2])


def test_lora_resume_continues_the_same_losses(two_clips, tmp_path):
    cache = tmp_path / "cache"
    train(_config(two_clips, tmp_path / "full", cache, steps=4, save_every=2))
    uninterrupted = _last_state(tmp_path / "full")["history"]
    train_stopped_after(2, _config(two_clips, tmp_path / "cut", cache, steps=4, save_every=2))
    train(_config(two_clips, tmp_path / "cut", cache, steps=4, save_every=2, resume="auto"))
    resumed = _last_state(tmp_path / "cut")["history"]
    assert [h["step"] for h in resumed] == [1, 2, 3, 4]
    for a, b in zip(uninterrupted, resumed):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    with pytest.raises(run_folder.RunFolderError, match="--lora 4"):  # a different rank cannot resume it
        train(_config(two_clips, tmp_path / "cut", cache, steps=6, lora=8, resume="auto"))


def test_memorisation_with_lora_reproduces_training_codes(two_clips, tmp_path):
    """As test_training's memorisation test, with LoRA: >= 99 % of the tokens back. The tiny model's
    output heads are random projections from 64 dimensions (released models' are trained): with
    them frozen even full training of the whole transformer plateaus (loss ~4.3), so they train
    too here (--lora-train-heads); embeddings, norms and attention input projections stay frozen."""
    from musicgen_trainer.code_cache import CodeCache
    from musicgen_trainer.data import find_clips
    from musicgen_trainer.models import load_model
    from musicgen_trainer.objective import valid_positions

    config = _config(two_clips, tmp_path / "run", tmp_path / "cache", steps=500, lr=1e-2, warmup_steps=10,
                     word_dropout=0.0, weight_decay=0.0, lora=32, lora_train_heads=True)
    export = train(config)
    history = _last_state(tmp_path / "run")["history"]
    assert history[-1]["loss"] < 0.05 < history[0]["loss"]
    model = load_model(export, device="cpu")
    clips = find_clips(two_clips, valid_fraction=0.0)
    codes, kept, _ = CodeCache(model.compression_model, tmp_path / "cache").codes_for(clips, progress=False)
    model.set_generation_params(use_sampling=True, top_k=1, duration=1.0, cfg_coef=1.0)
    with torch.no_grad():
        _, tokens = model.generate([c.caption for c in kept], progress=False, return_tokens=True)
    reference = torch.from_numpy(np.stack([np.asarray(c, dtype=np.int64) for c in codes]))
    mask = valid_positions(model.lm, torch.ones(2, 50, dtype=torch.bool))
    agreement = (tokens == reference)[mask].float().mean().item()
    assert agreement >= 0.99, agreement


@pytest.mark.parametrize("kw, message", [
    (dict(lora=0), "--lora is the adapters' rank and must be >= 1, got 0"),
    (dict(lora=-2), "must be >= 1, got -2"),
    (dict(lora=4, lora_dropout=1.0), "lora_dropout must be in"),
    (dict(lora=4, sharding="fsdp"), "--lora with --sharding fsdp"),
    (dict(lora_train_heads=True), "--lora-train-heads without --lora RANK"),
])
def test_bad_lora_options_are_one_line_errors(kw, message, tmp_path):
    with pytest.raises(ValueError, match=message) as info:
        TrainConfig(data=str(tmp_path), **kw)
    assert "\n" not in str(info.value)


def test_adapter_of_another_base_or_not_an_adapter_is_one_line_error(lora_run, tmp_path, capsys):
    from musicgen_trainer.lora import load_with_adapter
    with pytest.raises(ValueError, match="trained on base model 'tiny', not 'tiny:1'") as info:
        load_with_adapter("tiny:1", lora_run / "adapter", device="cpu")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="not an adapter folder"):
        load_with_adapter("tiny", lora_run / "export", device="cpu")
    import shutil
    edited = shutil.copytree(lora_run / "adapter", tmp_path / "edited")
    record = json.loads((edited / "musicgen_lora.json").read_text())
    (edited / "musicgen_lora.json").write_text(json.dumps({**record, "rank": 8}))  # tensors are rank 4
    with pytest.raises(ValueError, match=r"does not fit this base model: .*lora_A.weight is \(4, 64\)") as info:
        load_with_adapter("tiny", edited, device="cpu")
    assert "\n" not in str(info.value)
    code = cli_generate.main(["--model", "tiny-melody", "--lora", str(lora_run / "adapter"), "--prompt", "x",
                              "--duration", "0.2", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "trained on base model 'tiny'" in err and len(err.strip().splitlines()) == 1


def test_generate_cli_applies_the_adapter(lora_run, tmp_path, capsys):
    """generate.py --model tiny --lora ADAPTER writes what the merged export generates."""
    args = ["--prompt", "jazz piano", "--duration", "0.4", "--seed", "2", "--top-k", "1"]
    assert cli_generate.main(["--model", "tiny", "--lora", str(lora_run / "adapter"), *args,
                              "--out", str(tmp_path / "a")]) == 0
    assert cli_generate.main(["--model", str(lora_run / "export"), *args, "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    a, b = sf.read(next((tmp_path / "a").glob("*.wav")))[0], sf.read(next((tmp_path / "b").glob("*.wav")))[0]
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_lora_two_process_data_parallel_matches_accumulation(two_clips, tmp_path):
    """torchrun with 2 CPU processes (gloo) and --lora == 1 process with --grad-accum 2: losses, adapter, export."""
    import os
    import subprocess
    import sys
    from safetensors.torch import load_file
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = ["--data", str(two_clips), "--model", "tiny", "--steps", "3", "--batch-size", "1", "--lora", "4",
              "--segment-seconds", "1", "--lr", "5e-3", "--warmup-steps", "1", "--sample-every", "0",
              "--valid-fraction", "0", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--no-progress",
              "--export-dtype", "fp32"]
    single = subprocess.run([sys.executable, "train.py", *common, "--grad-accum", "2", "--out", str(tmp_path / "one")],
                            cwd=root, capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "train.py", *common, "--out", str(tmp_path / "two")],
                         cwd=root, capture_output=True, text=True, env=env, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    one, two = _last_state(tmp_path / "one")["history"], _last_state(tmp_path / "two")["history"]
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    a = load_file(str(tmp_path / "one" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "two" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_frozen_base_in_bf16_with_fp32_adapters_trains(tiny_model):
    """What prepare_lm_for_training does on GPU with --lora (here on the CPU): the frozen base is cast
    to bf16, the adapters stay fp32 master weights, a bf16-autocast backward reaches only them."""
    import copy
    from musicgen_trainer.lora import apply_lora, merged_state_dict
    from musicgen_trainer.step import FROZEN_BASE, keep_frozen_in_compute_dtype
    lm = copy.deepcopy(tiny_model.lm).float()
    apply_lora(lm, 4)
    assert keep_frozen_in_compute_dtype(lm, "bf16") > 0
    dtypes = {n: p.dtype for n, p in lm.named_parameters()}
    assert all(d == torch.float32 for n, d in dtypes.items() if ".lora_" in n)
    assert all(d == torch.bfloat16 for n, d in dtypes.items() if ".lora_" not in n)
    from audiocraft.modules.conditioners import ConditioningAttributes
    codes = torch.randint(0, 2048, (2, 4, 10), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lm.compute_predictions(codes, [ConditioningAttributes(text={"description": "jazz"})] * 2)
    out.logits.float().logsumexp(-1).mean().backward()
    assert all((p.grad is not None) == (".lora_" in n) for n, p in lm.named_parameters())
    assert all(p.grad.dtype == torch.float32 for n, p in lm.named_parameters() if p.grad is not None)
    # The export merges into the base as loaded (fp32), not its bf16 rounding.
    base = lm.__dict__[FROZEN_BASE]
    weights = {**lm.state_dict(), **base}
    merged = merged_state_dict(lm, weights)
    torch.testing.assert_close(merged["transformer.layers.0.linear1.weight"],
                               tiny_model.lm.state_dict()["transformer.layers.0.linear1.weight"])  # B is 0
    assert merged["transformer.layers.0.linear1.weight"].dtype == torch.float32


def test_show_counts_only_the_adapters_as_trainable(two_clips):
    """--show with --lora: gradients and optimiser states for the adapters only, a smaller state."""
    from musicgen_trainer.dry_run import describe, format_description
    common = dict(data=str(two_clips), model="tiny", device="cpu", batch_size=2, segment_seconds=1.0)
    full = describe(TrainConfig(**common))
    lora = describe(TrainConfig(**common, lora=8))
    assert 0 < lora["trainable_parameters"] < full["trainable_parameters"] / 20
    parts, full_parts = lora["memory_breakdown"], full["memory_breakdown"]
    assert parts["gradients"] == lora["trainable_parameters"] * 4 and parts["optimizer"] == lora["trainable_parameters"] * 8
    assert parts["optimizer"] < full_parts["optimizer"] / 20
    assert lora["training_state_bytes"] < full["training_state_bytes"]
    assert "LoRA rank 8" in format_description(lora)
