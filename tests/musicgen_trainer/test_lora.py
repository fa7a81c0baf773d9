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
from mt_helpers import greedy_reproduction, train_stopped_after


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


# The default targets plus the attention's q/k/v projection (in_proj, opt-in: it costs step time).
WITH_IN_PROJ = ["in_proj", "out_proj", "linear1", "linear2"]


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
    train(_config(two_clips, root / "run", root / "cache", steps=4, lora_targets=WITH_IN_PROJ))
    return root / "run"


def test_only_adapters_train_and_base_stays_bit_identical(lora_run, tiny_model):
    from musicgen_trainer.lora import load_with_adapter, merged_state_dict
    saved = _last_state(lora_run)
    weights = saved["lm"]  # a training state holds what trains: the adapters (and buffers), not the base
    adapters = {k: v for k, v in weights.items() if ".lora_" in k}
    assert adapters and all(".lora_A.default." in k or ".lora_B.default." in k for k in adapters)
    assert not [k for k, v in weights.items() if ".lora_" not in k and v.is_floating_point() and v.numel() > 1000]
    assert any(v.abs().max() > 0 for k, v in adapters.items() if "lora_B" in k)  # B starts at 0: it trained
    # The attention's query/key/value projection (the raw in_proj_weight) has adapters too, and they trained.
    in_proj = {k: v for k, v in adapters.items() if k.endswith(("self_attn.lora_B.default.weight",
                                                                   "cross_attention.lora_B.default.weight"))}
    assert len(in_proj) == 2 * len(tiny_model.lm.transformer.layers)
    assert all(v.shape == (3 * tiny_model.lm.dim, 4) and v.abs().max() > 0 for v in in_proj.values())
    # The base stayed bit-identical: the export is the untouched base merged with the trained adapters.
    unmerged = load_with_adapter("tiny", lora_run / "adapter", device="cpu", merge=False)
    expected = merged_state_dict(unmerged.lm)
    exported = torch.load(lora_run / "export" / "state_dict.bin", weights_only=True)["best_state"]
    base = tiny_model.lm.state_dict()
    assert exported.keys() == base.keys()
    changed = 0
    for key, value in exported.items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-6)
        changed += not torch.equal(value, base[key])
    assert 0 < changed < len(base)  # adapted weights moved, the rest is the base's own
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


def _with_lm(model, lm):
    """A shallow copy of the MusicGen ``model`` generating with ``lm`` (the shared fixture stays as it is)."""
    import copy
    other = copy.copy(model)
    other.lm = lm.eval()
    return other


def _random_adapters(lm, seed=0):
    """Seeded A and non-zero B matrices (B starts at 0, A at a draw from the global RNG): the
    adapters act without training, the same in every copy."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in lm.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))


def test_in_proj_adapters_merge_and_stream_as_unmerged(tiny_model):
    """The q/k/v projection alone (peft's ParamWrapper on in_proj_weight, which cross attention
    slices into q / k / v): merged weights give the unmerged model's logits and, with the KV cache
    of streaming generation, the same greedy tokens (also with the weights folded for sampling)."""
    import copy
    from musicgen_trainer.lora import apply_lora, merge_in_place, merged_state_dict, raw_weights_folded
    lm = copy.deepcopy(tiny_model.lm)
    assert apply_lora(lm, 4, targets=["in_proj"]) == 2 * len(lm.transformer.layers) * 4 * (lm.dim + 3 * lm.dim)
    _random_adapters(lm)
    merged = copy.deepcopy(tiny_model.lm)
    merged.load_state_dict(merged_state_dict(lm))  # the base's own key names
    in_place = copy.deepcopy(lm)
    merge_in_place(in_place)
    assert not any(".lora_" in k or ".base_layer." in k for k in in_place.state_dict())
    codes = torch.randint(0, 2048, (2, 4, 20), generator=torch.Generator().manual_seed(0))
    captions = ["jazz piano", "rock guitar"]
    models = [_with_lm(tiny_model, m) for m in (lm, merged, in_place)]
    reference = _logits(models[0], codes, captions)
    assert not torch.allclose(_logits(tiny_model, codes, captions), reference, atol=1e-3)  # in_proj's adapter acts
    for model in models[1:]:
        torch.testing.assert_close(_logits(model, codes, captions), reference, rtol=1e-4, atol=1e-4)
    tokens = []
    for model in models:
        model.set_generation_params(use_sampling=True, top_k=1, duration=0.5, cfg_coef=3.0)
        with torch.no_grad():
            tokens.append(model.generate(captions, progress=False, return_tokens=True)[1])
    assert torch.equal(tokens[0], tokens[1]) and torch.equal(tokens[0], tokens[2])
    # Training samples fold in_proj's W + s B A once (raw_weights_folded): the same tokens, and after
    # it the frozen base is as it was and peft reparametrises per call again.
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    with raw_weights_folded(lm), torch.no_grad():
        assert lm.transformer.layers[0].self_attn.merged
        tokens.append(models[0].generate(captions, progress=False, return_tokens=True)[1])
    assert torch.equal(tokens[0], tokens[3])
    assert not lm.transformer.layers[0].self_attn.merged
    assert all(torch.equal(v, before[k]) for k, v in lm.state_dict().items())
    torch.testing.assert_close(_logits(models[0], codes, captions), reference, rtol=0, atol=0)


def test_in_proj_adapters_with_activation_checkpointing_get_the_same_gradients(tiny_model):
    """With --activation-checkpointing (the planner's choice for medium / large) each layer's forward
    runs again in backward, peft's reparametrisation of in_proj included: the same loss and gradients."""
    import copy
    from audiocraft.modules.conditioners import ConditioningAttributes
    from musicgen_trainer.lora import apply_lora
    codes = torch.randint(0, 2048, (2, 4, 12), generator=torch.Generator().manual_seed(4))
    attrs = [ConditioningAttributes(text={"description": c}) for c in ("jazz piano", "rock guitar")]
    grads = []
    for checkpointing in ("none", "torch"):
        lm = copy.deepcopy(tiny_model.lm)
        apply_lora(lm, 4, targets=WITH_IN_PROJ)
        _random_adapters(lm)
        lm.transformer.checkpointing = checkpointing
        out = lm.compute_predictions(codes, attrs)
        out.logits[out.mask].logsumexp(-1).mean().backward()
        grads.append({n: p.grad for n, p in lm.named_parameters() if p.requires_grad})
    assert any(n.endswith("self_attn.lora_A.default.weight") for n in grads[0])
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6)


def test_peft_loads_the_adapter_folder_by_itself(lora_run, tiny_model):
    """adapter_config.json + adapter_model.safetensors are peft's format: peft's own config and
    state-dict loading (no musicgen_lora.json) rebuild the adapters, in_proj's included."""
    import copy
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from musicgen_trainer.models import load_model
    config = LoraConfig.from_pretrained(str(lora_run / "adapter"))
    assert config.target_parameters == ["in_proj_weight"] and config.base_model_name_or_path == "tiny"
    lm = copy.deepcopy(tiny_model.lm)
    inject_adapter_in_model(config, lm)
    result = set_peft_model_state_dict(lm, load_file(str(lora_run / "adapter" / "adapter_model.safetensors")))
    assert not result.unexpected_keys
    codes = torch.randint(0, 2048, (2, 4, 20), generator=torch.Generator().manual_seed(1))
    captions = ["jazz piano", "rock guitar"]
    torch.testing.assert_close(_logits(_with_lm(tiny_model, lm), codes, captions),
                               _logits(load_model(lora_run / "export", device="cpu"), codes, captions),
                               rtol=1e-4, atol=1e-4)


def test_adapter_without_in_proj_still_loads(tiny_model, two_clips, tmp_path):
    """An adapter of the earlier default targets (out_proj, linear1, linear2; musicgen_lora.json
    records them) keeps its key names and loads, merged and unmerged, to the same logits."""
    import copy
    from musicgen_trainer.lora import apply_lora, load_with_adapter, merged_state_dict, save_adapter
    old_targets = ["out_proj", "linear1", "linear2"]
    lm = copy.deepcopy(tiny_model.lm)
    apply_lora(lm, 4, targets=old_targets)
    _random_adapters(lm, seed=3)
    folder = save_adapter(lm, lm.state_dict(), tmp_path / "adapter",
                          _config(two_clips, tmp_path / "run", tmp_path / "cache", lora_targets=old_targets))
    record = json.loads((folder / "musicgen_lora.json").read_text())
    assert record["targets"] == old_targets
    assert "transformer.layers.0.self_attn.out_proj.lora_A.weight" in record["shapes"]  # the names as before
    assert not any(".base_layer." in k or k.endswith("attn.lora_A.weight") for k in record["shapes"])
    merged = copy.deepcopy(tiny_model.lm)
    merged.load_state_dict(merged_state_dict(lm))
    codes = torch.randint(0, 2048, (2, 4, 20), generator=torch.Generator().manual_seed(2))
    captions = ["jazz piano", "rock guitar"]
    reference = _logits(_with_lm(tiny_model, merged), codes, captions)
    for merge in (True, False):
        loaded = load_with_adapter("tiny", folder, device="cpu", merge=merge)
        torch.testing.assert_close(_logits(loaded, codes, captions), reference, rtol=1e-4, atol=1e-4)


def test_dropout_applies_to_the_linear_adapters_with_in_proj_targeted(tiny_model):
    """peft's parameter adapters refuse dropout; --lora-dropout then acts on the nn.Linear adapters only."""
    import copy
    from peft.tuners.lora import Linear, ParamWrapper
    from musicgen_trainer.lora import apply_lora, lora_layers
    lm = copy.deepcopy(tiny_model.lm)
    apply_lora(lm, 4, dropout=0.25, targets=WITH_IN_PROJ)
    layers = list(lora_layers(lm).values())
    assert any(isinstance(layer, ParamWrapper) for layer in layers)
    assert all(layer.lora_dropout["default"].p == 0.25 for layer in layers if isinstance(layer, Linear))


def test_a_target_that_matches_nothing_is_a_one_line_error(tiny_model):
    """peft refuses targets only when none matches: a misspelt one next to good ones is refused too."""
    import copy
    from musicgen_trainer.lora import apply_lora
    for targets in (["in_proj", "linaer1"], ["linaer1"]):
        with pytest.raises(ValueError, match="--lora-targets linaer1: no matching linear layer") as info:
            apply_lora(copy.deepcopy(tiny_model.lm), 4, targets=targets)
        assert "\n" not in str(info.value)


def test_planner_counts_the_adapters_apply_lora_adds(tiny_model):
    """--show / --gpu-memory count LoRA's parameters (and in_proj's reparametrised weights) per
    target as apply_lora adds them; the released models' per-layer shapes are the tiny layer's."""
    import copy
    from musicgen_trainer.lora import DEFAULT_TARGETS, apply_lora
    from musicgen_trainer.planner import lora_parameter_count, lora_reparametrised, released_lora_shapes
    base = tiny_model.lm
    for targets in (DEFAULT_TARGETS, WITH_IN_PROJ, ["in_proj"], ["self_attn.in_proj", "linear1"], ["out_proj", "linear2"]):
        assert lora_parameter_count(base, 8, targets) == apply_lora(copy.deepcopy(base), 8, targets=targets), targets
    layer = base.transformer.layers[0]
    assert lora_reparametrised(base, WITH_IN_PROJ) == len(base.transformer.layers) * 2 * layer.self_attn.in_proj_weight.numel()
    assert lora_reparametrised(base, DEFAULT_TARGETS) == lora_reparametrised(base, ["out_proj"]) == 0
    shapes = {"self_attn.in_proj": layer.self_attn.in_proj_weight.shape,
              "cross_attention.in_proj": layer.cross_attention.in_proj_weight.shape,
              "self_attn.out_proj": layer.self_attn.out_proj.weight.shape,
              "cross_attention.out_proj": layer.cross_attention.out_proj.weight.shape,
              "linear1": layer.linear1.weight.shape, "linear2": layer.linear2.weight.shape}
    assert released_lora_shapes(base.dim) == {k: tuple(v) for k, v in shapes.items()}


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
    too here (--lora-train-heads); embeddings and norms stay frozen."""
    config = _config(two_clips, tmp_path / "run", tmp_path / "cache", steps=500, lr=1e-2, warmup_steps=10,
                     word_dropout=0.0, weight_decay=0.0, lora=32, lora_train_heads=True)
    export = train(config)
    history = _last_state(tmp_path / "run")["history"]
    assert history[-1]["loss"] < 0.05 < history[0]["loss"]
    _, _, agreement = greedy_reproduction(export, two_clips, tmp_path / "cache")
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
    # a pickle renamed to adapter_model.safetensors: refused in one line, nothing in it runs
    import pickle
    trapped = shutil.copytree(lora_run / "adapter", tmp_path / "trapped")
    marker = tmp_path / "payload-ran"
    (trapped / "adapter_model.safetensors").write_bytes(pickle.dumps({"x": _Payload(str(marker))}))
    code = cli_generate.main(["--model", "tiny", "--lora", str(trapped), "--prompt", "x", "--duration", "0.2",
                              "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "not a readable safetensors file" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


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
    assert parts["activations"] == full_parts["activations"]  # the default targets: nn.Linear adapters only
    # with in_proj, its adapted weight W + s B A ([3 dim, dim], fp32 here) is kept for backward in every layer
    with_in_proj = describe(TrainConfig(**common, lora=8, lora_targets=WITH_IN_PROJ))["memory_breakdown"]
    layers, dim = full["model"]["lm_layers"], full["model"]["lm_dim"]
    assert with_in_proj["activations"] - full_parts["activations"] == layers * 2 * 3 * dim * dim * 4
    assert "LoRA rank 8" in format_description(lora)


def _base_folder(root, name):
    folder = Path(root) / name
    folder.mkdir(parents=True)
    return str(folder)


def test_base_fingerprint_tells_apart_bases_that_differ_outside_the_embeddings(tiny_model, tmp_path):
    """A merged LoRA fine-tune changes no emb.* weight: two runs' export-best of one release differ
    elsewhere only. An adapter of one is refused on the other (one line); on the same weights in
    another folder (a copy) it is accepted."""
    import copy

    from musicgen_trainer.lora import apply_lora, check_base
    base_a = copy.deepcopy(tiny_model.lm)
    base_b = copy.deepcopy(tiny_model.lm)
    with torch.no_grad():
        for name, param in base_b.named_parameters():
            if not name.startswith("emb."):
                param.add_(0.5)
    adapted = copy.deepcopy(base_a)
    apply_lora(adapted, 4, train_heads=True)
    with torch.no_grad():  # training changes the heads: the fingerprint is the base's as loaded
        for name, param in adapted.named_parameters():
            if name.startswith("linears."):
                param.add_(1.0)
    config = TrainConfig(data="x", model=_base_folder(tmp_path, "runA/export-best"), lora=4,
                         lora_train_heads=True)
    from musicgen_trainer.lora import read_adapter_record, save_adapter
    folder = save_adapter(adapted, adapted.state_dict(), tmp_path / "runA/export-best/adapter", config,
                          shareable=True)
    record = read_adapter_record(folder)
    other = _base_folder(tmp_path, "runB/export-best")
    with pytest.raises(ValueError, match="trained on base model 'export-best' with other weights than") as info:
        check_base(record, other, folder, lm=base_b)
    assert "\n" not in str(info.value)
    check_base(record, _base_folder(tmp_path, "copy/export-best"), folder, lm=copy.deepcopy(base_a))
    check_base(record, _base_folder(tmp_path, "renamed"), folder, lm=base_a)


def test_a_base_of_the_recorded_name_with_other_weights_is_refused(tiny_model):
    """An adapter recording base ``small`` (a local folder's last name) on the hub's ``small``: the
    loaded weights' fingerprint is compared whatever the name branch."""
    from musicgen_trainer.lora import base_fingerprint, check_base
    record = {"base_model": "tiny", "base_model_path": None, "base_fingerprint": "0" * 32,
              "base_fingerprint_version": 2}
    check_base(record, "tiny", "adapter")  # before loading: the name alone
    with pytest.raises(ValueError, match="trained on base model 'tiny' with other weights than 'tiny' has"):
        check_base(record, "tiny", "adapter", lm=tiny_model.lm)
    check_base({**record, "base_fingerprint": base_fingerprint(tiny_model.lm.state_dict())}, "tiny", "adapter",
               lm=tiny_model.lm)
