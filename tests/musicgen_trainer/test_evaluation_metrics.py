"""The evaluation metrics (musicgen_trainer/evaluation/): Fréchet distance and its interval,
the offline embeddings, CLAP, sanity flags, memorisation, genre adherence, held-out CE.

Synthetic audio throughout ("music": genre_classifier.toy's tracks with random notes and
tempi), the tiny MusicGen, a tiny genre classifier trained here in seconds and a tiny random
CLAP."""
import numpy as np
import pytest
import torch
from scipy import linalg

from dataset_tools.midi_render import find_soundfont
from genre_classifier.toy import TOY_GENRES, toy_track
from musicgen_trainer.evaluation import sanity
from musicgen_trainer.evaluation.fad import fad_with_interval, frechet_distance

SR = 32_000


def music(seed0: int, n: int = 8, genres=("plucks",), seconds: float = 4.0, sr: int = SR) -> list:
    """n clips of synthetic music of ``genres`` (in turn), each with its own notes and tempo."""
    return [toy_track(genres[i % len(genres)], seconds, seed0 + i, sr) for i in range(n)]


def noise(seed: int, n: int = 8, seconds: float = 4.0) -> list:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(int(seconds * SR)) * 10 ** (rng.uniform(-20, -6) / 20)).astype(np.float32)
            for _ in range(n)]


def textbook_fd(a, b) -> float:
    """The formula as usually written (scipy's sqrtm of the covariance product)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa + sb - 2 * linalg.sqrtm(sa @ sb).real))


# --- Fréchet distance -------------------------------------------------------------------------

@pytest.mark.parametrize("n, d", [(8, 32), (300, 16)])  # fewer clips than dimensions (the usual case), and more
def test_frechet_distance_is_the_formula_and_zero_for_a_set_with_itself(n, d):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(n, d)) * rng.uniform(0.5, 5, d)
    b = rng.normal(size=(n + 5, d)) * 1.5 + 0.3
    assert frechet_distance(a, b) == pytest.approx(textbook_fd(a, b), rel=1e-6)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    scale = np.trace(np.cov(a, rowvar=False))
    assert 0.0 <= frechet_distance(a, a) <= 1e-6 * scale
    assert 0.0 <= frechet_distance(a, a.copy()[::-1]) <= 1e-6 * scale   # the order of the clips is irrelevant


def test_frechet_distance_refuses_unusable_sets_in_one_line():
    rng = np.random.default_rng(0)
    for a, b in [(rng.normal(size=(1, 4)), rng.normal(size=(5, 4))),    # one clip: no covariance
                 (rng.normal(size=(5, 4)), rng.normal(size=(5, 3))),    # different embedding sizes
                 (np.full((3, 2), np.nan), rng.normal(size=(5, 2))),
                 (rng.normal(size=5), rng.normal(size=5))]:
        with pytest.raises(ValueError) as err:
            frechet_distance(a, b)
        assert "\n" not in str(err.value)


def test_bootstrap_interval_contains_the_estimate_and_says_how_many_clips():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(12, 6)), rng.normal(size=(10, 6)) + 0.5
    result = fad_with_interval(a, b, n_boot=100, seed=0)
    assert result["fad"] == pytest.approx(frechet_distance(a, b))
    assert 0 <= result["low"] < result["fad"] < result["high"]
    assert (result["n_a"], result["n_b"], result["n_boot"], result["level"]) == (12, 10, 100, 0.95)
    assert fad_with_interval(a, b, n_boot=100, seed=0) == result                  # seeded: reproducible
    same = fad_with_interval(a, a, n_boot=100, seed=0)     # replicates of X vs X are > 0, the figure is 0
    assert same["fad"] == pytest.approx(0.0, abs=1e-9) and same["low"] == 0.0 < same["high"]
    narrow = fad_with_interval(a, b, n_boot=100, seed=0, level=0.5)
    assert result["low"] <= narrow["low"] <= narrow["high"] <= result["high"]


# --- embeddings: music vs noise ---------------------------------------------------------------

@pytest.fixture(scope="module")
def clip_sets():
    """Two sets of the same kind of music (different notes and tempi), and noise."""
    return {"music": music(0), "other_music": music(100), "noise": noise(0)}


def assert_music_closer_to_music_than_to_noise(embed, sets, factor=5.0):
    e = {name: embed(waves) for name, waves in sets.items()}
    same_kind = frechet_distance(e["music"], e["other_music"])
    to_noise = frechet_distance(e["music"], e["noise"])
    assert to_noise > factor * same_kind > 0, (to_noise, same_kind)


def test_encodec_embeddings_music_vs_noise(tiny_model, clip_sets):
    """The model's own EnCodec latents (mean and std over time): FAD(music, noise) is many times
    FAD(music, other music of the same kind), even with the tiny model's random codec."""
    from musicgen_trainer.evaluation.embeddings import encodec_embeddings
    codec = tiny_model.compression_model
    emb = encodec_embeddings(codec, clip_sets["music"][:2], SR)
    dim = codec.encoder.dimension
    assert emb.shape == (2, 2 * dim) and np.isfinite(emb).all()
    assert encodec_embeddings(codec, clip_sets["music"][:2], SR, stats="mean").shape == (2, dim)
    # Stereo clips are embedded as their mono mix; another rate is resampled to the codec's.
    left, right = clip_sets["music"][0], clip_sets["music"][1]
    mixed = encodec_embeddings(codec, [(left + right) / 2], SR)
    assert np.allclose(encodec_embeddings(codec, [np.stack([left, right])], SR), mixed, rtol=1e-5, atol=1e-9)
    from dataset_tools.audio_io import resample
    at_44k = encodec_embeddings(codec, [resample(left, SR, 44_100)], 44_100)
    assert np.allclose(at_44k, emb[:1], rtol=0.05, atol=1e-3 * np.abs(emb).max())
    assert_music_closer_to_music_than_to_noise(lambda w: encodec_embeddings(codec, w, SR), clip_sets)


@pytest.fixture(scope="module")
def genre_model(tmp_path_factory):
    """A tiny genre classifier trained here (4 toy genres x 6 tracks of 3-4 s, a few epochs;
    split by track 3 train / 1 val / 2 test per genre) and its data folder."""
    from genre_classifier.toy import make_toy_dataset
    from genre_classifier.training import TrainConfig, train
    root = tmp_path_factory.mktemp("genre")
    make_toy_dataset(root / "data", tracks_per_genre=6, seconds=(3.0, 4.0), seed=3)
    folder = train(TrainConfig(data=root / "data", out=root / "model", epochs=8, patience=8, batch_size=16,
                               val_fraction=0.2, test_fraction=0.34, seed=0, workers=1, progress=False))
    return root / "data", folder


def test_classifier_embeddings_music_vs_noise(genre_model, clip_sets):
    """The genre classifier's penultimate layer (Dense 64), averaged over a clip's windows."""
    from genre_classifier.model_folder import load_classifier
    from musicgen_trainer.evaluation.embeddings import classifier_embeddings
    classifier = load_classifier(genre_model[1])
    silent_and_short = [np.zeros(SR * 2, np.float32), music(5, 1, seconds=0.2)[0]]  # the classifier skips these
    emb = classifier_embeddings(classifier, clip_sets["music"][:2] + silent_and_short, SR)
    assert emb.shape == (4, 64) and np.isfinite(emb).all()
    # a classifier trained on a few toy clips separates less than the codec: twice is still clear
    assert_music_closer_to_music_than_to_noise(lambda w: classifier_embeddings(classifier, w, SR), clip_sets, factor=2.0)


# --- CLAP ---------------------------------------------------------------------------------------

def test_tiny_clap_scores_one_per_clip_and_missing_weights_fail_in_one_line():
    from musicgen_trainer.evaluation.embeddings import clap_embeddings, clap_scores, load_clap, tiny_clap
    from musicgen_trainer.models import ModelUnavailableError
    waves = music(0, 3, genres=TOY_GENRES, seconds=2.0) + [np.stack(music(9, 2, seconds=12.0))]  # stereo, > 10 s
    prompts = ["drone music", "beats", "plucked strings, fast", "a long stereo clip"]
    clap = tiny_clap(seed=0)
    scores = clap_scores(clap, prompts, waves, SR)
    assert scores.shape == (4,) and np.all(np.abs(scores) <= 1 + 1e-9)
    assert np.allclose(clap_scores(tiny_clap(seed=0), prompts, waves, SR), scores)   # deterministic
    audio, text = clap_embeddings(clap, waves, SR, prompts)
    assert audio.shape == text.shape == (4, 8)
    assert np.allclose(np.linalg.norm(audio, axis=1), 1) and np.allclose(np.linalg.norm(text, axis=1), 1)
    with pytest.raises(ValueError):
        clap_scores(clap, prompts[:2], waves, SR)
    for name in ("laion/clap-htsat-unfused", "/nonexistent/clap-folder"):   # not on this machine
        with pytest.raises(ModelUnavailableError) as err:
            load_clap(name)
        assert "\n" not in str(err.value) and "CLAP" in str(err.value)


# --- sanity flags -------------------------------------------------------------------------------

def test_sanity_flags_fire_on_planted_silent_clipped_and_looped_audio():
    tune = music(3, 1, seconds=10.0)[0]
    mostly_silent = np.zeros(10 * SR, np.float32)
    mostly_silent[:3 * SR] = tune[:3 * SR]                        # 3 s of music, 7 s of silence
    assert sanity.sanity_flags(mostly_silent, SR) == ["silent"]
    clipped = np.clip(tune * 4, -1, 1)                             # 12 dB too hot, then clipped
    assert sanity.sanity_flags(clipped, SR) == ["clipped"]
    for genre in ("plucks", "buzz"):
        loop = np.tile(toy_track(genre, 1.3, 5, SR), 8)[:10 * SR]  # a 1.3 s phrase over and over
        assert sanity.sanity_flags(loop, SR) == ["repetitive"], genre
    assert sanity.sanity_flags(np.stack([loop, loop]), SR) == ["repetitive"]          # stereo [C, n]
    assert sanity.sanity_flags(np.zeros(10 * SR), SR) == ["silent"]


def test_sanity_flags_stay_quiet_on_music():
    """Synthetic music of every toy genre (drums and drones included), mono and stereo."""
    for wave in music(20, 4, genres=TOY_GENRES, seconds=10.0):
        assert sanity.sanity_flags(wave, SR) == []
    assert sanity.sanity_flags(np.stack(music(40, 2, seconds=6.0)), SR) == []


@pytest.mark.skipif(find_soundfont() is None, reason="no General MIDI soundfont installed")
def test_sanity_flags_stay_quiet_on_the_example_library(tmp_path):
    """Pieces of the example library rendered by FluidSynth: real compositions (repeated phrases
    included), with their release tails of silence."""
    from dataset_tools.audio_io import load_audio
    from dataset_tools.example import ExampleOptions, build_example
    report = build_example(tmp_path / "lib", ExampleOptions(pieces_per_genre=1, unknown_pieces=0, max_seconds=6.0,
                                                            workers=1, progress=False))
    assert len(report.files) >= 2
    for entry in report.files:
        wave, rate = load_audio(tmp_path / "lib" / entry["file"], mono=False)
        assert sanity.sanity_flags(wave, rate) == [], entry["file"]


def test_token_loops_are_repetitive_and_varied_tokens_are_not():
    rng = np.random.default_rng(0)
    varied = rng.integers(0, 2048, (4, 500))
    assert sanity.token_repetition(varied) < 0.05
    # Music that repeats bars still varies at the token level: a 50-frame bar repeated with a
    # fifth of its tokens changed each time is not a loop.
    bar = rng.integers(0, 2048, (4, 50))
    bars = np.concatenate([np.where(rng.random((4, 50)) < 0.2, rng.integers(0, 2048, (4, 50)), bar)
                           for _ in range(10)], axis=1)
    quiet_wave = music(1, 1, seconds=10.0)[0]
    assert sanity.sanity_flags(quiet_wave, SR, codes=torch.from_numpy(varied)) == []
    assert sanity.sanity_flags(quiet_wave, SR, codes=bars) == []
    loop = np.tile(rng.integers(0, 2048, (4, 37)), 14)[:, :500]                   # a 37-frame loop
    stuck = np.concatenate([varied[:, :50], np.full((4, 450), 7)], axis=1)         # one token from 1 s on
    for codes in (loop, torch.from_numpy(loop)[None], stuck):
        assert sanity.sanity_flags(quiet_wave, SR, codes=codes) == ["repetitive"]
    measures = sanity.sanity_measures(quiet_wave, SR, codes=loop)
    assert measures["repetition_from"] == "codes" and measures["repetition"] >= sanity.TOKEN_REPEAT_SHARE


def test_memorisation_overlap_finds_a_training_clip_and_not_a_new_one():
    rng = np.random.default_rng(0)
    training = [rng.integers(0, 2048, (4, 300 + 20 * i)) for i in range(5)]
    copied = training[3][:, 40:290]
    assert sanity.memorisation_overlap(copied, training) == 1.0
    assert sanity.memorisation_overlap(torch.from_numpy(copied), training) == 1.0
    new = rng.integers(0, 2048, (4, 250))
    assert sanity.memorisation_overlap(new, training) == 0.0
    # Half a training clip, then new music: about half its n-grams are verbatim.
    half = np.concatenate([training[1][:, :125], new[:, :125]], axis=1)
    assert 0.4 < sanity.memorisation_overlap(half, training) < 0.6
    # Silence (one repeated token) in both is not memorisation.
    silence = np.full((4, 250), 5)
    assert sanity.memorisation_overlap(silence, training + [np.full((4, 400), 5)]) == 0.0
    assert sanity.memorisation_overlap(copied, training) > sanity.MEMORISATION_THRESHOLD > \
        sanity.memorisation_overlap(new, training)


# --- genre adherence ----------------------------------------------------------------------------

def test_genre_adherence_of_real_held_out_clips_is_the_classifiers_own_accuracy(genre_model, tmp_path):
    """Planted case: the classifier's held-out test tracks fed in as "generated" clips score exactly
    as genre_classifier's own evaluation scores them (accuracy, confusion, each prediction)."""
    from dataset_tools.audio_io import load_audio
    from genre_classifier.evaluation import EvaluateConfig, evaluate
    from genre_classifier.model_folder import load_classifier
    from musicgen_trainer.evaluation.genre_adherence import genre_adherence
    data, folder = genre_model
    report = evaluate(EvaluateConfig(data=data, model=folder, out=tmp_path / "eval", workers=1, progress=False))
    tracks = report["tracks"]
    assert len(tracks) == 8                                       # the 2 test tracks of each genre
    waves, rates = zip(*(load_audio(data / t["files"][0], mono=False) for t in tracks))
    classifier = load_classifier(folder)
    got = genre_adherence(classifier, list(waves), rates[0], [t["genre"] for t in tracks])
    assert got["n"] == got["n_scored"] == report["track"]["count"]
    assert got["accuracy"] == report["track"]["accuracy"]
    assert got["confusion"] == report["track"]["confusion"]
    assert got["labels"] == report["labels"]
    assert [c["predicted"] for c in got["per_clip"]] == [t["predicted"] for t in tracks]
    assert [c["confidence"] for c in got["per_clip"]] == pytest.approx([t["confidence"] for t in tracks], abs=1e-4)
    assert got["mean_confidence"] == pytest.approx(np.mean([c["confidence"] for c in got["per_clip"]]))
    # At another rate (32 kHz, as MusicGen writes), the same clips are resampled to the classifier's.
    from dataset_tools.audio_io import resample
    at_32k = genre_adherence(classifier, [resample(w, rates[0], SR) for w in waves], SR,
                             [t["genre"] for t in tracks])
    assert at_32k["n_scored"] == len(tracks)
    # A silent clip cannot be scored: a miss, with the classifier's reason; unknown genres are refused.
    silent = genre_adherence(classifier, [np.zeros(SR * 4, np.float32), waves[0]], SR, ["beats", tracks[0]["genre"]])
    assert silent["per_clip"][0]["predicted"] is None and "silent" in silent["per_clip"][0]["reason"]
    assert silent["n"] == 2 and silent["n_scored"] == 1 and sum(map(sum, silent["confusion"])) == 1
    with pytest.raises(ValueError, match="unknown to the classifier"):
        genre_adherence(classifier, [waves[0]], SR, ["polka"])


# --- held-out cross-entropy ---------------------------------------------------------------------

def test_held_out_cross_entropy_is_the_validation_loss(tiny_model):
    """On clips longer and shorter than the window (crops and padding), the held-out CE is
    training's validation loss, per codebook too."""
    import contextlib
    import math
    from types import SimpleNamespace

    from musicgen_trainer.data import validation_batches
    from musicgen_trainer.evaluation.held_out import held_out_cross_entropy
    from musicgen_trainer.objective import micro_batch_loss, token_counts
    from musicgen_trainer.step import validation_loss
    from musicgen_trainer.train_config import TrainConfig
    g = torch.Generator().manual_seed(0)
    codes = [torch.randint(0, 2048, (4, n), generator=g).numpy() for n in (60, 25, 12, 40, 33)]
    captions = ["jazz piano", "rock", "a much longer caption about strings", "", "folk fiddle"]
    acc = SimpleNamespace(num_processes=1, process_index=0, device=torch.device("cpu"))
    state = SimpleNamespace(model=tiny_model, config=TrainConfig(data="x", batch_size=2), accelerator=acc,
                            sharded=False, autocast=contextlib.nullcontext)
    expected = validation_loss(state, codes, captions, n_frames=40)
    got = held_out_cross_entropy(tiny_model, codes, captions, n_frames=40, batch_size=2)
    assert got["mean"] == pytest.approx(expected, rel=1e-6)
    assert got["mean"] == pytest.approx(np.mean(got["per_codebook"]), rel=1e-9)
    assert got["perplexity"] == pytest.approx(math.exp(got["mean"]))
    assert got["n_clips"] == 5 and len(got["per_codebook"]) == 4
    # Per codebook: each codebook's CE summed over the batches over its valid positions.
    sums, counts = torch.zeros(4), torch.zeros(4)
    tiny_model.lm.eval()
    with torch.no_grad():
        for batch in validation_batches(codes, captions, 40, 2):
            sums += micro_batch_loss(tiny_model.lm, batch.codes, batch.frame_valid, batch.captions, torch.ones(4))[1]
            counts += token_counts(tiny_model.lm, batch.frame_valid)
    assert got["per_codebook"] == pytest.approx((sums / counts).tolist(), rel=1e-6)
    assert got["n_tokens"] == int(counts.sum()) and got["n_tokens_per_codebook"] == counts.int().tolist()
    # Padding does not count: fewer valid positions than clips x window x codebooks.
    assert got["n_tokens"] < 5 * 40 * 4


def test_validation_codes_are_the_runs_validation_split_through_the_code_cache(tiny_model, tmp_path):
    """`validation_codes` picks the clips training holds out (same split function and seed) and
    encodes them with the model's codec through the code cache; the CE runs on them end to end."""
    import soundfile as sf

    from musicgen_trainer.code_cache import CodeCache
    from musicgen_trainer.data import find_clips, split_clips
    from musicgen_trainer.evaluation.held_out import held_out_cross_entropy, validation_codes
    data = tmp_path / "data"
    (data / "folk").mkdir(parents=True)
    for i, wave in enumerate(music(60, 8, genres=TOY_GENRES, seconds=1.0, sr=44_100)):
        sf.write(data / "folk" / f"tune_{i}.wav", wave, 44_100)
        (data / "folk" / f"tune_{i}.txt").write_text(f"folk tune {i}")
    codes, captions, clips = validation_codes(tiny_model, data, valid_fraction=0.4, seed=0, cache_dir=tmp_path / "c")
    _, expected = split_clips(find_clips(data, 0.4, 0))
    assert clips == expected and 0 < len(clips) < 8
    assert captions == [c.caption for c in expected]
    cached, _, _ = CodeCache(tiny_model.compression_model, tmp_path / "c").codes_for(expected, progress=False)
    assert all(np.array_equal(a, b) and a.shape == (4, 50) for a, b in zip(codes, cached))
    result = held_out_cross_entropy(tiny_model, codes, captions)          # default window: 30 s, all padded
    assert np.isfinite(result["mean"]) and result["n_clips"] == len(clips)
    assert validation_codes(tiny_model, data, valid_fraction=0.0, cache_dir=tmp_path / "c") == ([], [], [])
