"""The trainer's parts: config, data discovery and split, code cache, checkpoints, schedule."""
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen_trainer import run_folder
from musicgen_trainer.data import DatasetError, find_clips, split_clips
from musicgen_trainer.code_cache import CodeCache
from musicgen_trainer.train_config import TrainConfig
from musicgen_trainer.step import apply_freeze, lr_lambda


def _wav(path, seconds=0.5, sr=44100, freq=440.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)
    return path


# --- config -----------------------------------------------------------------------

def test_config_validation_messages():
    with pytest.raises(ValueError, match="--data is required"):
        TrainConfig()
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(data="x", precision="fp8")
    with pytest.raises(ValueError, match="grad_accum must be >= 1"):
        TrainConfig(data="x", grad_accum=0)


def test_config_file_yaml_and_json_with_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("data: d\nbatch-size: 3\nfreeze: [emb]\n")
    cfg = TrainConfig.from_file(tmp_path / "c.yaml", lr=3e-4)
    assert (cfg.data, cfg.batch_size, cfg.freeze, cfg.lr) == ("d", 3, ["emb"], 3e-4)
    (tmp_path / "c.json").write_text(json.dumps({"data": "d", "steps": 7}))
    assert TrainConfig.from_file(tmp_path / "c.json").steps == 7


# --- data -------------------------------------------------------------------------

def test_folder_of_wav_and_txt_pairs(tmp_path):
    _wav(tmp_path / "jazz" / "a.wav")
    (tmp_path / "jazz" / "a.txt").write_text("smooth jazz, saxophone")
    _wav(tmp_path / "b.wav")  # no caption, no genre
    clips = find_clips(tmp_path)
    by_name = {c.path.name: c for c in clips}
    assert by_name["a.wav"].caption == "smooth jazz, saxophone" and by_name["a.wav"].genre == "jazz"
    assert by_name["b.wav"].caption == "" and by_name["b.wav"].genre == ""


def test_json_description_wins_over_txt(tmp_path):
    _wav(tmp_path / "a.wav")
    (tmp_path / "a.txt").write_text("from txt")
    (tmp_path / "a.json").write_text(json.dumps({"description": "from json", "genre": "x"}))
    assert find_clips(tmp_path)[0].caption == "from json"


def test_dataset_tools_manifest_with_split_and_sources(tmp_path):
    lines = []
    for track, split in (("rock/song", "train"), ("jazz/tune", "valid")):
        for seg in range(3):
            rel = f"{track}_{seg:03d}.wav"
            _wav(tmp_path / rel)
            (tmp_path / rel).with_suffix(".txt").write_text(f"{track} caption")
            lines.append(json.dumps({"path": rel, "duration": 0.5, "sample_rate": 44100, "amplitude": None,
                                     "weight": None, "info_path": None, "genre": track.split("/")[0],
                                     "source": f"{track}.mp3", "split": split, "segment": seg}))
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    train, valid = split_clips(find_clips(tmp_path))
    assert len(train) == 3 and len(valid) == 3
    assert {c.track for c in train} == {"rock/song.mp3"} and {c.genre for c in valid} == {"jazz"}


def test_audiocraft_data_jsonl(tmp_path):
    wav = _wav(tmp_path / "audio" / "x.wav")
    (tmp_path / "audio" / "x.txt").write_text("a caption")
    manifest = tmp_path / "data.jsonl"
    manifest.write_text(json.dumps({"path": str(wav), "duration": 0.5, "sample_rate": 44100}) + "\n")
    clips = find_clips(manifest, valid_fraction=0.0)
    assert [c.caption for c in clips] == ["a caption"]


def test_hash_split_never_separates_segments_of_a_track(tmp_path):
    for t in range(30):
        for seg in range(3):
            _wav(tmp_path / "g" / f"track{t}_{seg:03d}.wav", seconds=0.05)
    clips = find_clips(tmp_path, valid_fraction=0.3, seed=5)
    split_of = {}
    for c in clips:
        split_of.setdefault(c.track, set()).add(c.split)
    assert len(split_of) == 30 and all(len(s) == 1 for s in split_of.values())
    n_valid = sum("valid" in s for s in split_of.values())
    assert 2 <= n_valid <= 18
    again = find_clips(tmp_path, valid_fraction=0.3, seed=5)
    assert [c.split for c in again] == [c.split for c in clips]  # stable between runs


def test_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="dataset not found"):
        find_clips(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no audio files found"):
        find_clips(tmp_path)
    (tmp_path / "manifest.jsonl").write_text("{not json\n")
    with pytest.raises(DatasetError, match="manifest.jsonl:1"):
        find_clips(tmp_path)


# --- code cache ------------------------------------------------------------------------

def test_code_cache_encodes_once_and_reencodes_changed_files(tmp_path, tiny_model, monkeypatch):
    import musicgen_trainer.code_cache as cc
    a = _wav(tmp_path / "data" / "a.wav", seconds=1.0)
    bad = tmp_path / "data" / "broken.wav"
    bad.write_bytes(b"RIFF....WAVEfmt garbage")
    calls = []
    real = cc.encode_file
    monkeypatch.setattr(cc, "encode_file", lambda m, p: calls.append(p.name) or real(m, p))

    cache = CodeCache(tiny_model.compression_model, tmp_path / "cache")
    clips = find_clips(tmp_path / "data")
    codes, kept, skipped = cache.codes_for(clips, progress=False)
    assert [c.path.name for c in kept] == ["a.wav"] and codes[0].shape == (4, 50)
    assert skipped and skipped[0][0].path.name == "broken.wav" and skipped[0][1]
    assert sorted(calls) == ["a.wav", "broken.wav"]

    calls.clear()
    cache.codes_for(find_clips(tmp_path / "data"), progress=False)
    assert calls == ["broken.wav"]  # a.wav came from the cache
    _wav(a, seconds=2.0, freq=300.0)  # the file changes
    os.utime(a, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns + 10**9))
    calls.clear()
    codes, kept, _ = cache.codes_for(find_clips(tmp_path / "data"), progress=False)
    assert "a.wav" in calls and codes[0].shape == (4, 100)


def test_code_cache_key_depends_on_model(tmp_path):
    from musicgen_trainer.models import load_model
    a = CodeCache(load_model("tiny:1").compression_model, tmp_path)
    b = CodeCache(load_model("tiny:2").compression_model, tmp_path)
    assert a.dir != b.dir


# --- checkpoints and schedule ------------------------------------------------------------

def test_checkpoints_keep_last_and_resolve(tmp_path):
    from musicgen_trainer.run_folder import claim_run_folder
    run = claim_run_folder(TrainConfig(data="x", out=str(tmp_path / "run")), resuming=False)
    folder = run.checkpoints_dir
    for step in (10, 20, 30):
        run.save_state(step, {"x": torch.tensor(step)}, keep_last=2)
    assert [p.name for p in run_folder.list_states(folder)] == ["step_00000020.pt", "step_00000030.pt"]
    assert run_folder.resolve_resume("auto", run.own_states()).name == "step_00000030.pt"
    assert run_folder.resolve_resume("auto", []) is None
    assert run_folder.resolve_resume(str(folder), []).name == "step_00000030.pt"
    assert run_folder.load_state(folder / "step_00000030.pt")["x"] == 30
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]
    (folder / "junk.pt").write_bytes(b"xx")
    with pytest.raises(ValueError, match="cannot read training state"):
        run_folder.load_state(folder / "junk.pt")
    with pytest.raises(ValueError, match="not found"):
        run_folder.resolve_resume(str(tmp_path / "nope.pt"), [])


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(data="x", warmup_steps=10, lr_min_ratio=0.1)
    f = lr_lambda(cfg, total_steps=110)
    assert f(0) == pytest.approx(1 / 11) and f(9) == pytest.approx(10 / 11)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55)
    assert f(110) == pytest.approx(0.1)
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_freeze_matches_whole_components(tiny_model):
    import copy
    lm = copy.deepcopy(tiny_model.lm)
    n = apply_freeze(lm, ["transformer.layers.1"])
    assert n == sum(p.numel() for p in lm.transformer.layers[1].parameters())
    assert all(p.requires_grad for p in lm.transformer.layers[0].parameters())
    with pytest.raises(ValueError, match="matches no LM parameter"):
        apply_freeze(lm, ["transformer.layers.9"])


# --- precision, frozen weights, validation ------------------------------------------

def test_auto_precision_takes_fp16_on_gpus_that_only_emulate_bf16(monkeypatch):
    """A T4/V100: torch says bf16 is supported (emulated, slow) unless asked for the hardware."""
    from musicgen_trainer.step import resolve_precision
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # an A100
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("fp32", torch.device("cuda")) == "fp32"


def _state(model, config, precision="fp32"):
    """The parts of a TrainState that export_weights / validation_loss read (one CPU process)."""
    import contextlib
    from types import SimpleNamespace

    from musicgen_trainer.step import make_autocast
    acc = SimpleNamespace(num_processes=1, process_index=0, device=torch.device("cpu"))
    return SimpleNamespace(model=model, config=config, accelerator=acc, ema=None, sharded=False,
                           autocast=make_autocast(precision, acc.device) if precision != "fp32"
                           else contextlib.nullcontext)


def test_frozen_weights_kept_in_the_compute_dtype_and_exported_as_loaded():
    """--freeze with bf16: frozen parameters are stored in bf16 (no fp32 copy on the GPU; the
    function is called on CUDA only, checked here on CPU tensors); trainable ones stay fp32;
    the EMA and the export see the right dtypes, and the export holds the base's frozen weights."""
    from musicgen_trainer.models import load_model
    from musicgen_trainer.step import export_weights, keep_frozen_in_compute_dtype, update_ema
    model = load_model("tiny", device="cpu")
    lm = model.lm
    base = {k: v.clone() for k, v in lm.state_dict().items()}
    apply_freeze(lm, ["emb", "transformer.layers.0"])
    frozen = {n for n, p in lm.named_parameters() if not p.requires_grad}
    assert keep_frozen_in_compute_dtype(lm, "fp32") == 0
    cast = keep_frozen_in_compute_dtype(lm, "bf16")
    assert cast == sum(p.numel() for p in lm.parameters() if not p.requires_grad) > 0
    for name, p in lm.named_parameters():
        assert p.dtype == (torch.bfloat16 if name in frozen else torch.float32), name
    assert not torch.equal(lm.emb[0].weight.float(), base["emb.0.weight"])  # rounded to bf16

    config = TrainConfig(data="x", ema=True, ema_every=1, freeze=["emb"])
    state = _state(model, config, "bf16")
    state.ema = {n: p.detach().float().clone() for n, p in lm.named_parameters() if p.requires_grad}
    with torch.no_grad():
        lm.linears[0].weight.add_(1.0)  # "training" moved a trainable weight
    update_ema(state)
    weights = export_weights(state)
    assert all(weights[n].dtype == torch.float32 for n in weights)
    for name in frozen:
        assert torch.equal(weights[name], base[name]), name  # the base's, not the bf16 rounding
    assert not torch.equal(weights["linears.0.weight"], base["linears.0.weight"])


def test_validation_loss_is_the_training_objective():
    """On batches with padding (clips shorter than the window), validation computes exactly the
    training objective (padding fed as the special token), in eval mode with no dropout."""
    from musicgen_trainer.data import validation_batches
    from musicgen_trainer.models import load_model
    from musicgen_trainer.objective import micro_batch_loss, token_counts
    from musicgen_trainer.step import validation_loss
    model = load_model("tiny", device="cpu")
    g = torch.Generator().manual_seed(0)
    codes = [torch.randint(0, 2048, (4, n), generator=g).numpy() for n in (40, 25, 12)]
    captions = ["jazz piano", "rock", "a much longer caption about strings"]
    state = _state(model, TrainConfig(data="x", batch_size=3))
    model.lm.train()
    got = validation_loss(state, codes, captions, n_frames=40)
    assert model.lm.training  # the mode it had is restored

    batch = next(validation_batches(codes, captions, 40, 3))
    assert not batch.frame_valid.all()  # padded
    model.lm.eval()
    with torch.no_grad():
        expected, _ = micro_batch_loss(model.lm, batch.codes, batch.frame_valid, batch.captions,
                                       token_counts(model.lm, batch.frame_valid))
    assert got == pytest.approx(expected.item(), rel=1e-5)


# --- --show: memory, disk, captions ----------------------------------------------------

def test_state_size_estimate_disk_and_caption_warnings_in_a_real_run(tmp_path, monkeypatch, capsys):
    """A raw library (audio, no captions) with --ema and --freeze: the run warns that captions
    come from `dataset_tools prepare` (naming the folder), warns before training when the states
    will not fit the disk, and the state it writes has the size training_state_bytes predicts."""
    from musicgen_trainer import preflight
    from musicgen_trainer.finetune import train
    from musicgen_trainer.models import load_model
    library = tmp_path / "library"
    for i in range(2):
        _wav(library / f"song{i}.wav", seconds=1.0, sr=32000, freq=220.0 * (i + 1))
    monkeypatch.setattr(preflight, "disk_free_bytes", lambda path: 10**6)  # 1 MB free
    config = TrainConfig(data=str(library), model="tiny", out=str(tmp_path / "run"), steps=1, batch_size=2,
                         segment_seconds=1.0, valid_fraction=0.0, sample_every=0, progress=False, device="cpu",
                         cache_dir=str(tmp_path / "cache"), ema=True, freeze=["emb"], keep_last=2)
    train(config)
    out = capsys.readouterr().out
    assert f"no captions found in {library}" in out
    assert f"python -m dataset_tools prepare {library} {library}-prepared" in out
    assert "manifest.jsonl" in out and ".json/.txt" in out
    assert "will not fit on the disk" in out and "--keep-last 2" in out

    lm = load_model("tiny", device="cpu").lm
    apply_freeze(lm, ["emb"])
    predicted = preflight.training_state_bytes(lm, ema=True)
    written = run_folder.list_states(tmp_path / "run" / "checkpoints")[-1].stat().st_size
    assert 0.8 < written / predicted < 1.2, (written, predicted)
    assert preflight.training_state_bytes(lm, ema=False) < predicted  # the EMA is counted


def test_show_prints_ema_memory_state_size_and_disk_warning(tmp_path, monkeypatch):
    from musicgen_trainer import preflight
    from musicgen_trainer.dry_run import describe, estimate_memory, format_description
    _wav(tmp_path / "data" / "a.wav")
    (tmp_path / "data" / "a.txt").write_text("a caption")
    config = dict(data=str(tmp_path / "data"), model="tiny", out=str(tmp_path / "run"), device="cpu")
    monkeypatch.setattr(preflight, "disk_free_bytes", lambda path: 10**12)
    plain = describe(TrainConfig(**config))
    assert plain["warnings"] == []
    monkeypatch.setattr(preflight, "disk_free_bytes", lambda path: 10**6)
    ema = describe(TrainConfig(**config, ema=True))
    extra = ema["trainable_parameters"] * 4 * 1.1 / 2**30  # the fp32 EMA shadow on the GPU
    assert ema["estimated_peak_memory_gib"] - plain["estimated_peak_memory_gib"] == pytest.approx(extra)
    assert ema["training_state_bytes"] - plain["training_state_bytes"] == ema["trainable_parameters"] * 4
    text = format_description(ema)
    assert "EMA included" in text and "training states" in text and "will not fit on the disk" in text
    # the estimate is printed by component, and the components make the total
    parts = ema["memory_breakdown"]
    assert set(parts) == {"weights", "gradients", "optimizer", "ema", "activations", "logits"}
    # gradients and activations take turns: the peak holds the larger (no accumulation here)
    peak = parts["weights"] + parts["optimizer"] + parts["ema"] + max(parts["gradients"], parts["activations"]
                                                                       + parts["logits"])
    assert peak * 1.1 / 2**30 == pytest.approx(ema["estimated_peak_memory_gib"])
    assert parts["ema"] == parts["gradients"] == ema["trainable_parameters"] * 4
    assert parts["optimizer"] == ema["trainable_parameters"] * 8
    assert "of which" in text and "optimiser states" in text and "EMA" in ema["memory_breakdown_line"]
    assert "EMA" not in plain["memory_breakdown_line"]
    # frozen LM parameters are counted in the compute dtype under bf16
    kw = dict(lm_params=1000, frozen_other=0, lm_dim=8, layers=1, batch=1, frames=1, codebooks=1, card=1,
              checkpointing=False)
    full, half = estimate_memory(trainable=1000, precision="bf16", **kw), estimate_memory(trainable=0, precision="bf16", **kw)
    assert full.weights - half.weights == 1000 * (4 - 2)
    assert full.optimizer == 1000 * 8 and half.optimizer == half.gradients == 0


def test_show_counts_the_melody_models_prepended_conditions_and_separator(tmp_path, monkeypatch):
    """Before: --show's estimate ignored what a melody model puts in front of the audio tokens
    (the chroma's chroma_len positions and the caption's T5 tokens) and its frozen demucs."""
    from musicgen_trainer import dry_run
    from musicgen_trainer.melody import melody_conditioner
    from musicgen_trainer.models import load_model
    _wav(tmp_path / "data" / "a.wav")
    (tmp_path / "data" / "a.txt").write_text("a caption")
    config = TrainConfig(data=str(tmp_path / "data"), model="tiny-melody", out=str(tmp_path / "run"),
                         device="cpu", segment_seconds=1.0, batch_size=2)
    d = dry_run.describe(config)
    conditioner = melody_conditioner(load_model("tiny-melody", device="cpu").lm)
    demucs = conditioner.__dict__["demucs"]
    # 235 chroma positions (the model's 30 s window) + ByT5's 9 bytes of "a caption" and </s>
    assert d["condition_prefix"] == conditioner.chroma_len + 10 == 235 + 10
    assert d["separator_parameters"] == sum(t.numel() for t in [*demucs.parameters(), *demucs.buffers()]) > 0
    m = d["model"]
    without = dry_run.estimate_memory_gib(
        m["lm_parameters"], d["trainable_parameters"], m["text_encoder_parameters_frozen"] + m["compression_parameters"],
        m["lm_dim"], m["lm_layers"], 2, 50, m["codebooks"], m["card"], d["precision"], False)
    from musicgen_trainer.memory_estimate import ACTIVATIONS_PER_TOKEN
    per_position = ACTIVATIONS_PER_TOKEN * m["lm_dim"] * 4 * m["lm_layers"]  # fp32 activations per layer and position
    grown = (2 * d["condition_prefix"] * per_position + d["separator_parameters"] * 4) * 1.1 / 2**30
    assert d["estimated_peak_memory_gib"] - without == pytest.approx(grown, rel=1e-6)
    assert "after 245 prepended condition positions" in dry_run.format_description(d)
    plain = dry_run.describe(TrainConfig(data=str(tmp_path / "data"), model="tiny", out=str(tmp_path / "run"),
                                         device="cpu"))
    assert plain["condition_prefix"] == plain["separator_parameters"] == 0  # cross-attention: nothing prepended


def test_docs_gpu_tables_are_the_estimate():
    """docs/training.md's "What fits on your GPU" tables are gpu_tables()'s output: if this
    fails, paste `python -c "from musicgen_trainer.dry_run import gpu_tables; print(gpu_tables())"`."""
    from pathlib import Path

    from musicgen_trainer.dry_run import RELEASED_LM, gpu_tables, released_estimate
    text = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text(encoding="utf-8")
    table = text.split("<!-- gpu-tables -->\n")[1].split("\n<!-- /gpu-tables -->")[0]
    assert table == gpu_tables()
    # the disk sizes quoted under the tables: 12 bytes per parameter (16 with the EMA)
    for size, (params, _, _) in RELEASED_LM.items():
        assert f"{params * 12 / 1e9:.{1 if size == 'small' else 0}f} GB" in text.split("Disk:")[1]
    assert "12 GB | small: batch 2 " in table and released_estimate("small", 3, False) > 11  # batch 3 does not fit 12 GB


def test_released_sizes_are_the_architectures():
    """The counts the tables use: the LMs rebuilt (on the meta device: no memory) from the
    released models' sizes, and T5-base's encoder (our local T5 has a 384-token vocabulary)."""
    from musicgen_trainer.dry_run import RELEASED_LM, T5_BASE_ENCODER
    from musicgen_trainer.models import count_parameters
    from musicgen_trainer.tiny import build_lm_from_config, random_preset, tiny_xp_config
    for size, (params, dim, layers) in RELEASED_LM.items():
        with torch.device("meta"):
            lm = build_lm_from_config(tiny_xp_config(random_preset(size)), device="meta")
        assert (count_parameters(lm), lm.dim, len(lm.transformer.layers)) == (params, dim, layers)
    t5 = lm.condition_provider.conditioners["description"].__dict__["t5"]
    assert count_parameters(t5) + (32128 - 384) * 768 == T5_BASE_ENCODER


# --- accumulation vs one larger batch ----------------------------------------------------

def test_accumulation_is_a_larger_batch_only_when_captions_pad_to_the_same_length():
    """audiocraft zero-pads T5's outputs to the batch's longest caption and its cross-attention
    attends to that padding, so an item's loss depends on its batch's longest caption. Captions
    of equal token length: 2 micro-batches of 2 give the loss of one batch of 4 (to rounding).
    Different lengths: a small but real difference (documented in docs/training.md), the same
    one audiocraft's own training has between batch compositions."""
    from musicgen_trainer.models import load_model
    from musicgen_trainer.objective import micro_batch_loss, token_counts
    lm = load_model("tiny", device="cpu").lm.eval()  # eval: no dropout
    codes = torch.randint(0, 2048, (4, 4, 24), generator=torch.Generator().manual_seed(0))
    frame_valid = torch.ones(4, 24, dtype=torch.bool)
    counts = token_counts(lm, frame_valid)

    def loss(groups, captions):
        with torch.no_grad():
            return sum(micro_batch_loss(lm, codes[g], frame_valid[g], [captions[i] for i in g], counts)[0]
                       for g in groups).item()

    big, accumulated = [[0, 1, 2, 3]], [[0, 1], [2, 3]]
    same = ["jazz", "rock", "folk", "soul"]  # byte-level tokens: 4 + </s> each
    assert loss(accumulated, same) == pytest.approx(loss(big, same), rel=1e-6)
    mixed = ["jazz", "rock", "a long caption about folk strings", "soul"]
    gap = abs(loss(accumulated, mixed) - loss(big, mixed)) / loss(big, mixed)
    assert 1e-5 < gap < 1e-2, gap


def test_disk_warning_counts_the_states_a_resumed_run_already_has(tmp_path, monkeypatch):
    from musicgen_trainer import preflight
    monkeypatch.setattr(preflight, "disk_free_bytes", lambda path: 150)
    assert preflight.disk_space_warning(tmp_path, keep_last=2, state_bytes=100) is not None  # needs 300
    assert preflight.disk_space_warning(tmp_path, keep_last=2, state_bytes=100, existing=2) is None  # needs 100 more
    assert "free space" in preflight.disk_space_warning(tmp_path, keep_last=2, state_bytes=100, existing=1)
    # the exports count too (export/, export-best/ and the new best before the swap)
    assert preflight.disk_space_warning(tmp_path, keep_last=2, state_bytes=100, existing=2, export_bytes=200) is not None
    from musicgen_trainer.models import load_model
    tiny = load_model("tiny", device="cpu")
    one = preflight.exports_bytes(tiny, "fp16", keep_best=False)
    assert preflight.exports_bytes(tiny, "fp16", keep_best=True) == 3 * one
    assert preflight.exports_bytes(tiny, "fp32", keep_best=False) > one


def test_dropouts_default_to_the_models_own_rates():
    """--cond-dropout/--word-dropout default to what the model was trained with (its config: e.g.
    0.2/0.2 in audiocraft's melody grid), not a fixed 0.3; given options win."""
    from musicgen_trainer.models import load_model
    from musicgen_trainer.step import prepare_lm_for_training, resolve_dropouts
    lm = load_model("tiny", device="cpu").lm
    assert resolve_dropouts(TrainConfig(data="x"), lm) == (pytest.approx(0.3), pytest.approx(0.3))
    lm.cfg_dropout.p = 0.2
    lm.condition_provider.conditioners["description"].word_dropout = 0.2
    assert resolve_dropouts(TrainConfig(data="x"), lm) == (pytest.approx(0.2), pytest.approx(0.2))
    assert resolve_dropouts(TrainConfig(data="x", cond_dropout=0.1, word_dropout=0.0), lm) == (0.1, 0.0)
    with pytest.raises(ValueError, match="cond_dropout"):
        TrainConfig(data="x", cond_dropout=1.0)
    prepare_lm_for_training(SimpleNamespace(lm=lm, compression_model=torch.nn.Identity()), TrainConfig(data="x"))
    assert lm.cfg_dropout.p == 0.0  # audiocraft's own is off: our sampler draws it


def test_resume_keeps_the_base_models_frozen_weights():
    """A state saved with frozen weights rounded to bf16 (kept in the compute dtype on CUDA) does
    not round them when loaded: frozen weights never change, so the base's own stay."""
    from musicgen_trainer.finetune import _load_trained_weights
    from musicgen_trainer.models import load_model
    lm = load_model("tiny", device="cpu").lm
    apply_freeze(lm, ["emb"])
    base = lm.emb[0].weight.detach().clone()
    saved = {k: v.clone() for k, v in lm.state_dict().items()}
    saved["emb.0.weight"] = saved["emb.0.weight"].to(torch.bfloat16)
    saved["linears.0.weight"] = saved["linears.0.weight"] + 1.0  # a trained weight: loaded
    _load_trained_weights(lm, saved)
    assert torch.equal(lm.emb[0].weight, base)
    assert torch.equal(lm.linears[0].weight, saved["linears.0.weight"])
    del saved["linears.0.weight"]
    with pytest.raises(KeyError, match="linears.0.weight"):
        _load_trained_weights(lm, saved)
