"""Features: the MFCC equals librosa's, windows cover the whole track, the cache is content-keyed."""
import shutil

import numpy as np
import pytest

from genre_classifier.extract import extract_one
from genre_classifier.features import (
    FeatureError, FeatureSettings, features_from_audio, mfcc, track_windows, window_starts,
)
from genre_classifier.toy import toy_track
from gc_helpers import write_wav

SETTINGS = FeatureSettings()


def test_default_settings_give_130_by_13_windows():
    assert (SETTINGS.sample_rate, SETTINGS.n_mfcc, SETTINGS.n_fft, SETTINGS.hop_length) == (22050, 13, 2048, 512)
    assert SETTINGS.frames == 130
    audio = toy_track("drone", 3.0, seed=1, sample_rate=22050)
    assert mfcc(audio, SETTINGS).shape == (130, 13)


@pytest.mark.parametrize("seconds", [3.0, 7.3])
def test_mfcc_matches_librosa(seconds):
    librosa = pytest.importorskip("librosa")
    audio = toy_track("plucks", seconds, seed=3, sample_rate=22050)
    ours = mfcc(audio, SETTINGS)
    ref = librosa.feature.mfcc(y=audio, sr=22050, n_mfcc=13, n_fft=2048, hop_length=512).T
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=2e-3 * np.abs(ref).max())


@pytest.mark.parametrize("total", [130, 131, 259, 260, 1000, 1292])
def test_windows_cover_the_whole_track_evenly(total):
    starts = window_starts(total, 130)
    assert starts[0] == 0 and starts[-1] == total - 130
    assert len(starts) == -(-total // 130)
    covered = np.zeros(total, bool)
    for s in starts:
        covered[s:s + 130] = True
    assert covered.all()
    gaps = np.diff(starts)
    assert gaps.size == 0 or gaps.max() - gaps.min() <= 1  # evenly spaced


def test_track_windows_shape():
    m = np.random.default_rng(0).standard_normal((300, 13)).astype(np.float32)
    w = track_windows(m, 130)
    assert w.shape == (3, 130, 13)
    np.testing.assert_array_equal(w[-1], m[-130:])


def test_short_track_is_padded_not_dropped():
    audio = toy_track("beats", 1.5, seed=2, sample_rate=22050)
    feats = features_from_audio(audio, SETTINGS)
    assert feats.padded and feats.duration == pytest.approx(1.5, abs=1e-3)
    assert feats.windows(SETTINGS).shape == (1, 130, 13)


def test_too_short_and_silent_are_refused_with_a_reason():
    with pytest.raises(FeatureError, match="too short"):
        features_from_audio(np.full(2000, 0.1, np.float32), SETTINGS)
    with pytest.raises(FeatureError, match="silent"):
        features_from_audio(np.zeros(22050 * 4, np.float32), SETTINGS)


def test_settings_round_trip_and_missing_keys():
    data = SETTINGS.to_dict()
    assert FeatureSettings.from_dict(data) == SETTINGS and data["frames"] == 130
    data.pop("hop_length")
    with pytest.raises(KeyError, match="hop_length"):
        FeatureSettings.from_dict(data)
    with pytest.raises(ValueError, match="n_mfcc"):
        FeatureSettings(n_mfcc=0)


def test_cache_is_keyed_by_content_and_settings(tmp_path):
    cache = tmp_path / "cache"
    wav = write_wav(tmp_path / "a.wav", 4.0, genre="buzz", seed=4)
    first = extract_one(0, wav, SETTINGS, str(cache))
    assert first.ok and not first.cached
    again = extract_one(0, wav, SETTINGS, str(cache))
    assert again.cached and np.array_equal(again.features.mfcc, first.features.mfcc)
    renamed = tmp_path / "elsewhere" / "b.wav"
    renamed.parent.mkdir()
    shutil.copy(wav, renamed)
    assert extract_one(0, renamed, SETTINGS, str(cache)).cached  # same bytes, other name: hit
    other = extract_one(0, wav, FeatureSettings(n_mfcc=20), str(cache))
    assert not other.cached and other.features.mfcc.shape[1] == 20  # other settings: miss
    write_wav(wav, 4.0, genre="buzz", seed=5)  # edited file: miss
    assert not extract_one(0, wav, SETTINGS, str(cache)).cached
