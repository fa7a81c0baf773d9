"""Bad input: every bad file is skipped with a reason, and the batch goes on."""
import numpy as np
import pytest
import soundfile as sf

from genre_classifier.data import DatasetError
from genre_classifier.extract import extract_many
from genre_classifier.features import FeatureSettings
from genre_classifier.toy import toy_track
from genre_classifier.training import TrainConfig, train
from gc_helpers import needs_ffmpeg, to_mp3, write_wav


def _bad_folder(root):
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "good.wav": write_wav(root / "good.wav", 4.0, genre="drone", seed=1),
        "empty.wav": root / "empty.wav",
        "text.mp3": root / "text.mp3",
        "truncated.wav": root / "truncated.wav",
        "silent.wav": write_wav(root / "silent.wav", 4.0, silent=True),
        "tiny.wav": root / "tiny.wav",
        "short.wav": write_wav(root / "short.wav", 1.2, genre="beats", seed=2),
        "missing.wav": root / "missing.wav",
        "good2.flac": root / "good2.flac",
    }
    files["empty.wav"].write_bytes(b"")
    files["text.mp3"].write_text("this is not audio at all\n" * 50)
    files["truncated.wav"].write_bytes(files["good.wav"].read_bytes()[:30])  # header cut off
    sf.write(files["tiny.wav"], np.full(2205, 0.3, np.float32), 44100)  # 0.05 s
    sf.write(files["good2.flac"], toy_track("buzz", 5.0, seed=3), 44100)
    return files


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_files_are_skipped_with_reasons(tmp_path, workers):
    files = _bad_folder(tmp_path / "in")
    names = list(files)
    results = {names[r.index]: r for r in extract_many(list(files.values()), FeatureSettings(),
                                                        workers=workers, cache_dir=None, progress=False)}
    assert len(results) == len(files)
    assert results["good.wav"].ok and results["good2.flac"].ok
    assert results["short.wav"].ok and results["short.wav"].features.padded  # padded, not dropped
    expect = {"empty.wav": "empty", "text.mp3": "", "truncated.wav": "", "silent.wav": "silent",
              "tiny.wav": "too short", "missing.wav": "not found"}
    for name, words in expect.items():
        r = results[name]
        assert not r.ok and r.reason, name
        assert "\n" not in r.reason
        assert words in r.reason, (name, r.reason)


@needs_ffmpeg
def test_mp3_decodes_through_ffmpeg(tmp_path):
    mp3 = to_mp3(write_wav(tmp_path / "a.wav", 4.0, genre="plucks", seed=9))
    (result,) = list(extract_many([mp3], FeatureSettings(), workers=1, progress=False))
    assert result.ok and result.features.duration == pytest.approx(4.0, abs=0.1)


def test_genre_with_only_bad_files_is_named(tmp_path):
    data = tmp_path / "data"
    for i in range(4):  # 4: the fewest recordings a genre's split accepts (2 test, 1 validation, 1 training)
        write_wav(data / "drone" / f"d{i}.wav", 4.0, genre="drone", seed=i)
        (data / "broken" / f"b{i}.wav").parent.mkdir(parents=True, exist_ok=True)
        (data / "broken" / f"b{i}.wav").write_bytes(b"garbage" * 100)
    config = TrainConfig(data=data, out=tmp_path / "m", workers=1, use_cache=False, progress=False)
    with pytest.raises(DatasetError, match="genre 'broken' has no usable tracks"):
        train(config)


def test_train_config_rejects_nonsense(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="dataset folder not found"):
        TrainConfig(data=tmp_path / "nope", out=tmp_path / "m")
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(data=tmp_path / "d", out=tmp_path / "m", epochs=0)
    with pytest.raises(ValueError, match="head"):
        TrainConfig(data=tmp_path / "d", out=tmp_path / "m", head="transformer")
    with pytest.raises(ValueError, match="test_fraction"):
        TrainConfig(data=tmp_path / "d", out=tmp_path / "m", test_fraction=0)
