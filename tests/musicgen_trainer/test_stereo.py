"""Stereo models (facebook/musicgen-stereo-* and the offline ``tiny-stereo``): built like the
released ones, real left/right codes, mono data refused unless asked for, and a whole
train -> export -> reload (ours and audiocraft's loader) -> generate round trip."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen_trainer import cli_generate
from musicgen_trainer.data import DatasetError, find_clips
from musicgen_trainer.code_cache import CodeCache, encode_file
from musicgen_trainer.exports import LM_FILE
from musicgen_trainer.finetune import train
from musicgen_trainer.models import format_summary, load_model, model_summary
from musicgen_trainer.train_config import TrainConfig
from mt_helpers import supply_tiny_modules

RATE = 44100


def _tone(seconds, freq, rate=RATE):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3.0 * t))).astype(np.float32)


def _stereo(seconds, left, right):
    """``[n, 2]``: a different tone on each side."""
    return np.stack([_tone(seconds, left), _tone(seconds, right)], axis=1)


@pytest.fixture(scope="module")
def stereo_model():
    return load_model("tiny-stereo", device="cpu")


@pytest.fixture(scope="module")
def stereo_data(tmp_path_factory):
    """Two genre folders of 2-channel WAV + .txt pairs, left and right different."""
    root = tmp_path_factory.mktemp("stereo")
    for genre, base in (("jazz", 220.0), ("rock", 330.0)):
        (root / genre).mkdir()
        for i in range(2):
            sf.write(root / genre / f"{genre}_{i}.wav", _stereo(1.2, base * (i + 1), base * (i + 1.5)), RATE)
            (root / genre / f"{genre}_{i}.txt").write_text(f"{genre}, take {i}")
    return root


def _config(data, out, cache, **kw):
    base = dict(data=str(data), model="tiny-stereo", out=str(out), cache_dir=str(cache), batch_size=2,
                segment_seconds=1.0, lr=2e-3, warmup_steps=1, steps=3, sample_every=0, valid_every=3,
                save_every=1000, progress=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _logits(model, codes, captions):
    from audiocraft.modules.conditioners import ConditioningAttributes
    attrs = [ConditioningAttributes(text={"description": c}) for c in captions]
    with torch.no_grad():
        return model.lm.compute_predictions(codes, attrs).logits


def _check_stereo(model):
    from audiocraft.models.encodec import InterleaveStereoCompressionModel
    assert model.audio_channels == 2 and model.lm.n_q == 8
    assert isinstance(model.compression_model, InterleaveStereoCompressionModel)
    assert model.compression_model.model.channels == 1  # one mono codec, applied to each side
    # each left/right pair of a level shares a delay, as in audiocraft's stereo grid
    assert list(model.lm.cfg.codebooks_pattern.delay.delays) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_tiny_stereo_is_built_like_the_released_stereo_models(stereo_model):
    _check_stereo(stereo_model)
    summary = model_summary(stereo_model)
    assert summary["stereo"] and summary["audio_channels"] == 2 and summary["codebooks"] == 8
    assert "32000 Hz, stereo" in format_summary(summary)  # not only the name "tiny-stereo"
    assert not model_summary(load_model("tiny", device="cpu"))["stereo"]


def test_stereo_files_give_different_left_and_right_codes(stereo_model, tmp_path):
    """Codes [8, T] interleave L1 R1 L2 R2 ...: each side's codebooks are the mono codec's codes
    of that side alone, so a file whose sides differ has different left and right codes; a
    3-channel file keeps its front left/right (not their mean copied to both sides)."""
    from dataset_tools.audio_io import load_audio
    codec = stereo_model.compression_model
    noise = 0.2 * np.random.default_rng(0).standard_normal(RATE).astype(np.float32)
    sides = np.stack([noise, _tone(1.0, 555.0)], axis=1)
    sf.write(tmp_path / "st.wav", sides, RATE)
    codes = encode_file(codec, tmp_path / "st.wav")
    assert codes.shape == (8, 50)
    audio, _ = load_audio(tmp_path / "st.wav", sample_rate=32000, mono=False)
    with torch.no_grad():
        alone = [codec.model.encode(torch.from_numpy(audio[c:c + 1])[None])[0][0].numpy() for c in (0, 1)]
    np.testing.assert_array_equal(codes[0::2], alone[0])
    np.testing.assert_array_equal(codes[1::2], alone[1])
    assert (codes[0::2] != codes[1::2]).any()

    sf.write(tmp_path / "three.wav", np.concatenate([sides, np.zeros((RATE, 1), np.float32)], axis=1), RATE)
    np.testing.assert_array_equal(encode_file(codec, tmp_path / "three.wav"), codes)


def test_stereo_model_refuses_mono_data_before_encoding(tmp_path):
    data = tmp_path / "mono"
    data.mkdir()
    for i in range(3):
        sf.write(data / f"clip_{i}.wav", _tone(1.0, 220.0 * (i + 1)), RATE)
        (data / f"clip_{i}.txt").write_text(f"take {i}")
    sf.write(data / "clip_3.wav", _stereo(1.0, 220.0, 330.0), RATE)
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError) as err:
        train(_config(data, tmp_path / "run", cache))
    message = str(err.value)
    assert "\n" not in message and message.startswith("3 of 4 audio files are mono")
    assert "--channels 2" in message and "--allow-mono-for-stereo" in message
    assert not list(cache.rglob("*.npy"))  # stopped before encoding anything
    # Asked for explicitly, it trains (mono copied to both sides) and exports.
    export = train(_config(data, tmp_path / "run", cache, allow_mono_for_stereo=True, steps=1))
    assert (export / LM_FILE).is_file()


def test_dual_mono_stereo_files_are_refused_after_encoding(tmp_path):
    """A 2-channel file with the same signal on both sides (what prepare --channels 2 makes of a
    mono source) passes the header check; its codes show it, and training stops unless allowed."""
    data = tmp_path / "dual"
    data.mkdir()
    for i in range(2):
        tone = _tone(1.0, 220.0 * (i + 1))
        sf.write(data / f"dual_{i}.wav", np.stack([tone, tone], axis=1), RATE)
        (data / f"dual_{i}.txt").write_text(f"take {i}")
    sf.write(data / "real.wav", _stereo(1.0, 220.0, 330.0), RATE)
    (data / "real.txt").write_text("real stereo")
    with pytest.raises(DatasetError) as err:
        train(_config(data, tmp_path / "run", tmp_path / "cache", valid_fraction=0.0))
    message = str(err.value)
    assert "\n" not in message and message.startswith("2 of 3 stereo files have identical left and right")
    assert "--allow-mono-for-stereo" in message
    export = train(_config(data, tmp_path / "run", tmp_path / "cache", valid_fraction=0.0, steps=1,
                           allow_mono_for_stereo=True))
    assert (export / LM_FILE).is_file()


def test_cache_entries_depend_on_the_files_channel_count(stereo_model, tmp_path, monkeypatch):
    """A stereo model's cache entry of a mono file (copied to both sides) is never reused for a
    stereo file at the same path, size and time."""
    from musicgen_trainer import code_cache as data_module
    sf.write(tmp_path / "a.wav", _tone(1.0, 220.0), RATE)
    clips = find_clips(tmp_path)
    cache = CodeCache(stereo_model.compression_model, tmp_path / "cache")
    (mono_codes,), _, _ = cache.codes_for(clips, progress=False)
    assert np.array_equal(mono_codes[0::2], mono_codes[1::2])
    monkeypatch.setattr(data_module, "file_channels", lambda path: 2)  # as if the header said stereo
    monkeypatch.setattr(data_module, "encode_file", lambda model, path: np.ones((8, 3), np.int16))
    (codes,), _, _ = cache.codes_for(clips, progress=False)
    assert codes.shape == (8, 3)  # encoded again, not the mono entry
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 2


def test_stereo_train_export_reload_and_generate(stereo_data, tmp_path, capsys, monkeypatch):
    export = train(_config(stereo_data, tmp_path / "run", tmp_path / "cache"))
    ours = load_model(str(export), device="cpu")
    _check_stereo(ours)

    # audiocraft's own loader rebuilds the stereo wrapper from the export's config
    # (its T5 download is replaced by the export's frozen tiny T5, see test_loading.py).
    from audiocraft.models import MusicGen
    supply_tiny_modules(monkeypatch, export)
    theirs = MusicGen.get_pretrained(str(export), device="cpu")
    _check_stereo(theirs)
    codes = torch.randint(0, 2048, (1, 8, 20))
    a, b = _logits(ours, codes, ["jazz"]), _logits(theirs, codes, ["jazz"])
    valid = ~torch.isnan(a)
    torch.testing.assert_close(a[valid], b[valid])

    code = cli_generate.main(["--model", str(export), "--prompt", "jazz", "--duration", "0.4",
                              "--seed", "1", "--out", str(tmp_path / "gen")])
    assert code == 0, capsys.readouterr().err
    wav = next((tmp_path / "gen").glob("*.wav"))
    audio, rate = sf.read(wav)
    assert rate == 32000 and audio.shape == (12800, 2)
    assert json.loads(wav.with_suffix(".json").read_text())["channels"] == 2


def test_show_says_stereo_and_counts_mono_files(stereo_data, tmp_path):
    from musicgen_trainer.dry_run import describe, format_description
    shown = format_description(describe(_config(stereo_data, tmp_path / "run", tmp_path / "cache")))
    assert shown.splitlines()[0].endswith(", stereo)") and "mono files" not in shown
    sf.write(stereo_data / "jazz" / "mono_take.wav", _tone(1.0, 440.0), RATE)
    try:
        shown = format_description(describe(_config(stereo_data, tmp_path / "run", tmp_path / "cache")))
    finally:
        (stereo_data / "jazz" / "mono_take.wav").unlink()
    assert "mono files" in shown and "--allow-mono-for-stereo" in shown
