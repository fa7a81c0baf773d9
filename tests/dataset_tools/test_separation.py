"""Source separation engine and library API, offline with models built in code.

``tiny``: a randomly initialised ``demucs.htdemucs.HTDemucs`` (the real architecture,
~6 k parameters) working at 8 kHz with 1 s windows, so a 60 s song is ~80 windows and
every test input is resampled to the model's rate and back. ``EchoVocals`` returns the
mix as "vocals" and silence elsewhere, so exact reconstruction is the expected output.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import torch

from dataset_tools.separation import SeparateOptions, instrumental, separate, separate_audio
from dataset_tools.separation.model import random_htdemucs, separator_from_model
from dataset_tools.separation.options import SEPARATION_BLOCK_FRAMES
from dataset_tools.separation.reader import measure, open_input
from dataset_tools.separation.stream import StemStream

RATE = 8000  # the test models' rate
SOURCES = ["drums", "bass", "other", "vocals"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py


@pytest.fixture(scope="module")
def tiny():
    return separator_from_model(random_htdemucs(samplerate=RATE, segment=1, seed=0), device="cpu", name="tiny")


class EchoVocals(torch.nn.Module):
    """[B, C, L] -> [B, 4, C, L]: the input as vocals, zeros for the other sources."""
    sources, samplerate, audio_channels, segment = SOURCES, RATE, 2, 1.0

    def forward(self, x):
        zero = torch.zeros_like(x)
        return torch.stack([zero, zero, zero, x], dim=1)


@pytest.fixture(scope="module")
def echo():
    return separator_from_model(EchoVocals(), device="cpu", name="echo")


def noise(seconds: float, rate: int, channels: int = 2, seed: int = 0) -> np.ndarray:
    """``[channels, n]`` (``[n]`` for 1) float32 noise with a DC offset, like a real mix's."""
    rng = np.random.default_rng(seed)
    x = (0.2 * rng.standard_normal((channels, int(seconds * rate))) + 0.01).astype(np.float32)
    return x[0] if channels == 1 else x


def tone(seconds: float, rate: int, freq: float = 220.0, channels: int = 2) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = np.stack([0.5 * np.sin(2 * np.pi * freq * t + k) for k in range(channels)]).astype(np.float32)
    return x[0] if channels == 1 else x


# --- the overlap-add engine ---------------------------------------------------------------------

@pytest.mark.parametrize("overlap, shifts", [(0.25, 0), (0.0, 0), (0.5, 0), (0.25, 2)])
def test_windows_cross_fade_back_to_the_input_exactly(echo, overlap, shifts):
    # Same rate in and out: any misplaced window or wrong weight normalisation shows.
    x = noise(7.3, RATE)
    out = separate_audio(x, RATE, echo, stems=["vocals", "instrumental", "drums"], overlap=overlap, shifts=shifts)
    assert out["vocals"].shape == x.shape
    np.testing.assert_allclose(out["vocals"], x, atol=2e-6)
    np.testing.assert_allclose(out["instrumental"], 0.0, atol=2e-6)
    # demucs adds the mix mean back to every source estimate
    np.testing.assert_allclose(out["drums"], x.mean(0).mean(), atol=1e-6)


def test_streaming_matches_demucs_apply_model_on_the_whole_track(tiny):
    from demucs.apply import apply_model
    x = noise(7.0, RATE, seed=1)[:, :RATE * 7 - 77]
    ours = separate_audio(x, RATE, tiny, stems=SOURCES)
    ref = x.mean(0)
    mix = torch.from_numpy((x - ref.mean()) / ref.std())[None]
    theirs = apply_model(tiny.models[0], mix, shifts=0, split=True, overlap=0.25)[0].numpy()
    theirs = theirs * ref.std() + ref.mean()
    # Identical windows and weights, except windows running past the end: demucs fills them
    # with earlier audio, we with silence after the end. Everything before them must agree.
    stride, n = int(0.75 * RATE), x.shape[-1]
    last_start = min(s for s in range(0, n, stride) if s + RATE > n)
    for k, name in enumerate(SOURCES):
        np.testing.assert_allclose(ours[name][:, :last_start], theirs[k][:, :last_start], atol=1e-5)


def _hdemucs():  # the configuration of demucs' own "demucs_unittest" model, at 8 kHz
    from demucs.hdemucs import HDemucs
    torch.manual_seed(1)
    return HDemucs(sources=SOURCES, channels=4, samplerate=RATE, segment=1).eval()


def _bag():  # like htdemucs_ft: one model per source, weights pick each model's speciality
    from demucs.apply import BagOfModels
    return BagOfModels([random_htdemucs(samplerate=RATE, segment=1, seed=s) for s in (1, 2)],
                       weights=[[1.0, 0.0, 1.0, 0.5], [0.0, 1.0, 1.0, 0.5]]).eval()


@pytest.mark.parametrize("build", [_hdemucs, _bag], ids=["hdemucs", "bag_of_models"])
def test_other_architectures_and_bags_match_demucs(build):
    from demucs.apply import apply_model
    net = build()
    sep = separator_from_model(net, device="cpu")
    x = noise(2.5, RATE, seed=2)
    ours = separate_audio(x, RATE, sep, stems=SOURCES)
    ref = x.mean(0)
    theirs = apply_model(net, torch.from_numpy((x - ref.mean()) / ref.std())[None], shifts=0, overlap=0.25)[0]
    theirs = theirs.numpy() * ref.std() + ref.mean()
    for k, name in enumerate(SOURCES):  # windows before the one that runs past the end
        np.testing.assert_allclose(ours[name][:, :RATE + RATE // 2], theirs[k][:, :RATE + RATE // 2], atol=1e-5)


def test_time_domain_demucs_model(tiny):
    from demucs.demucs import Demucs
    torch.manual_seed(3)
    sep = separator_from_model(Demucs(sources=SOURCES, channels=4, depth=2, samplerate=RATE, segment=1,
                                      lstm_layers=0).eval(), device="cpu")
    x = noise(2.2, 44100, seed=3)
    out = separate_audio(x, 44100, sep, stems=["vocals", "instrumental"])
    assert out["vocals"].shape == x.shape and np.isfinite(out["vocals"]).all()
    np.testing.assert_allclose(out["vocals"] + out["instrumental"], x, atol=1e-6)


def test_resampling_both_ways_keeps_timing_and_length(echo):
    # 44.1 kHz in, 8 kHz model, back to 44.1 kHz: a tone below 4 kHz comes back in place.
    rate = 44100
    x = tone(3.0, rate)[:, :rate * 3 - 5]
    out = separate_audio(x, rate, echo, stems=["vocals"])["vocals"]
    assert out.shape == x.shape
    edge = rate // 20  # the resampler's filter rings at the very ends
    np.testing.assert_allclose(out[:, edge:-edge], x[:, edge:-edge], atol=2e-3)


@pytest.mark.parametrize("channels", [1, 2])
def test_instrumental_keeps_shape_and_is_mix_minus_vocals(tiny, channels):
    x = noise(2.5, 22050, channels=channels, seed=3)
    inst = instrumental(x, 22050, tiny)
    out = separate_audio(x, 22050, tiny, stems=["vocals", "instrumental"])
    assert inst.shape == x.shape and inst.dtype == np.float32
    np.testing.assert_array_equal(inst, out["instrumental"])
    np.testing.assert_allclose(inst + out["vocals"], x, atol=1e-6)
    assert np.abs(out["vocals"]).mean() > 1e-3  # the random model does separate something


def test_sum_mode_is_the_other_sources_added(tiny):
    x = noise(2.0, RATE, seed=4)
    out = separate_audio(x, RATE, tiny, stems=["instrumental", *SOURCES], instrumental_mode="sum")
    np.testing.assert_allclose(out["instrumental"], out["drums"] + out["bass"] + out["other"], atol=1e-6)
    assert np.abs(out["instrumental"] + out["vocals"] - x).max() > 1e-3  # not guaranteed to sum back


def test_shifts_are_reproducible_and_change_the_result(tiny):
    x = noise(3.0, RATE, seed=5)
    a = separate_audio(x, RATE, tiny, shifts=1, seed=7)["vocals"]
    b = separate_audio(x, RATE, tiny, shifts=1, seed=7)["vocals"]
    plain = separate_audio(x, RATE, tiny, shifts=0)["vocals"]
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - plain).max() > 1e-4


def test_silence_stays_finite(tiny):
    out = separate_audio(np.zeros((2, RATE * 2), np.float32), RATE, tiny, stems=["vocals", "instrumental"])
    assert all(np.isfinite(v).all() for v in out.values())


def test_more_than_two_channels_give_stereo(echo):
    x = noise(1.5, RATE, channels=6, seed=6)
    out = separate_audio(x, RATE, echo, stems=["vocals"])["vocals"]
    expected = x[:2] + x[2:].mean(0) / np.sqrt(2.0)  # front pair + the rest folded in
    np.testing.assert_allclose(out, expected, atol=2e-6)


def test_tiny_input_shorter_than_a_window(tiny):
    x = noise(0.01, 44100, seed=8)
    out = separate_audio(x, 44100, tiny, stems=["vocals", "instrumental"])
    assert out["vocals"].shape == x.shape == out["instrumental"].shape


# --- bounded memory -------------------------------------------------------------------------------

def _stream_file(path, sep):
    """Run the stream over a file, discarding output; (frames out, stream, traced peak bytes)."""
    inp = open_input(path)
    tracemalloc.start()
    stream = StemStream(sep, inp.rate, inp.channels, measure(inp, 2))
    frames = sum(mix.shape[-1] for mix, _ in stream.run(inp.blocks()))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return frames, stream, peak


def test_long_inputs_are_processed_in_chunks_in_flat_memory(tmp_path, tiny):
    rate = 22050
    runs = {}
    for seconds in (10, 60):
        path = tmp_path / f"song{seconds}.wav"
        sf.write(path, noise(seconds, rate, seed=seconds).T, rate, subtype="FLOAT")
        runs[seconds] = _stream_file(path, tiny)
        assert runs[seconds][0] == seconds * rate  # every frame comes out, no more
    (_, short, peak10), (_, long, peak60) = runs[10], runs[60]
    assert long.ola.windows_run >= 5 * short.ola.windows_run > 0  # work grows with length...
    # ...buffers do not: at most one decoded block plus a few model windows, whatever the length
    bound = SEPARATION_BLOCK_FRAMES + 3 * rate * 1
    assert short.peak_buffered <= bound and long.peak_buffered <= bound, (short.peak_buffered, long.peak_buffered)
    assert peak60 < 1.25 * peak10 + 256_000, (peak10, peak60)
    # Holding the decoded song and its 4 stems (what a whole-track apply_model does) takes
    # 5 x 60 s of stereo float32; the stream needs a fraction of it.
    assert peak60 < 60 * rate * 2 * 4 * 5 / 2


def test_separate_files_memory_does_not_grow_with_length(tmp_path, tiny):
    peaks = {}
    for seconds in (10, 60):
        path = tmp_path / f"in{seconds}.flac"
        sf.write(path, noise(seconds, 44100, seed=seconds).T, 44100)
        tracemalloc.start()
        report = separate([path], tmp_path / "out", SeparateOptions(stems="all,instrumental", progress=False),
                          separator=tiny)
        peaks[seconds] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        (result,) = report.files
        assert result.status == "separated", result.reason
        for stem in ["instrumental", *SOURCES]:
            assert sf.info(result.outputs[stem]).frames == seconds * 44100
    assert peaks[60] < 1.25 * peaks[10] + 256_000, peaks
    assert peaks[60] < 60 * 44100 * 2 * 4 * 6 / 3  # a fraction of the decoded song + its 5 stems


# --- GPU (only where there is one) -------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_gpu_matches_cpu():
    model = random_htdemucs(samplerate=RATE, segment=1, seed=0)
    cpu = separator_from_model(model, device="cpu")
    x = noise(3.0, RATE, seed=9)
    want = separate_audio(x, RATE, cpu, stems=["vocals"])["vocals"]
    gpu = separator_from_model(random_htdemucs(samplerate=RATE, segment=1, seed=0), device="cuda")
    got = separate_audio(x, RATE, gpu, stems=["vocals"])["vocals"]
    np.testing.assert_allclose(got, want, atol=1e-3)
