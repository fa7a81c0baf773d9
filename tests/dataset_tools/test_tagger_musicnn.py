"""``prepare --tagger musicnn`` (tagging_musicnn.py) on tiny random musicnn nets built offline:
their tags mean nothing, but they are deterministic for a seed and exercise the whole pass."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dt_helpers import MIN_SECONDS, SEGMENT_SECONDS, tone, write_audio

from dataset_tools.__main__ import main
from dataset_tools.cli import EXIT_BAD_INPUT
from dataset_tools.options import PrepareOptions
from dataset_tools.prepare import prepare
from dataset_tools.tagging_musicnn import load_musicnn_vocabulary

TAGGED = dict(tagger="musicnn", tagger_model="tiny", tag_threshold=0.0, max_tags_per_field=2)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """Three 3.5 s tracks (2 segments each): two jazz, one rock."""
    src = tmp_path_factory.mktemp("musicnn_lib") / "src"
    rng = np.random.default_rng(0)
    for rel, freq in (("jazz/Blue Tone.wav", 220.5), ("jazz/Night Walk.wav", 441.0), ("rock/Riff.wav", 882.0)):
        write_audio(src / rel, tone(3.5, freq=freq) + 0.05 * rng.standard_normal(int(3.5 * 44100)).astype(np.float32))
    return src


def _prepare(src: Path, out: Path, **options):
    return prepare(src, out, PrepareOptions(segment_seconds=SEGMENT_SECONDS, min_seconds=MIN_SECONDS, workers=1,
                                            progress=False, analyze=False, **options))


def _infos(out: Path) -> dict[str, dict]:
    return {p.relative_to(out).as_posix(): json.loads(p.read_text()) for p in sorted(out.glob("*/*.json"))}


def test_musicnn_tags_land_in_the_json_and_the_caption_and_are_deterministic_for_a_seed(src, tmp_path):
    vocabulary = load_musicnn_vocabulary().fields
    report = _prepare(src, tmp_path / "a", **TAGGED)
    infos = _infos(tmp_path / "a")
    assert len(infos) == 6 and report.tagging["model"].startswith("tiny-musicnn:0/p")
    for rel, info in infos.items():
        tags = info["tags"]
        assert all(len(tags[f]) == 2 and set(tags[f]) <= set(vocabulary[f]) for f in ("instrument", "mood", "style"))
        scores = [s for t in tags.values() for s in t.values()]
        assert all(0.0 < s < 1.0 for s in scores)
        assert info["moods"] == list(tags["mood"]) and info["instrument"] == " and ".join(tags["instrument"])
        assert " and ".join(tags["style"]) in info["description"]
        assert (tmp_path / "a" / rel).with_suffix(".txt").read_text() == info["description"]
    assert report.tagging["embeddings_computed"] == 3
    _prepare(src, tmp_path / "b", **TAGGED)
    again = _infos(tmp_path / "b")
    for rel, info in infos.items():
        for field, scores in info["tags"].items():
            assert list(again[rel]["tags"][field]) == list(scores)
            assert np.allclose(list(again[rel]["tags"][field].values()), list(scores.values()), atol=2e-4)
    _prepare(src, tmp_path / "c", **dict(TAGGED, tagger_model="tiny:1"))
    assert [i["tags"] for i in _infos(tmp_path / "c").values()] != [i["tags"] for i in infos.values()]


def test_a_new_musicnn_vocabulary_rescores_from_the_cache_without_reading_audio(src, tmp_path, monkeypatch):
    import dataset_tools.tagging as tagging
    out = tmp_path / "out"
    _prepare(src, out, **TAGGED)
    calls = []
    read = tagging.read_window
    monkeypatch.setattr(tagging, "read_window", lambda *a, **k: calls.append(a) or read(*a, **k))
    mine = tmp_path / "mine.yaml"
    mine.write_text("instrument: {piano: [mtt:piano], plucked: [mtt:harp, mtt:sitar, guitar]}\n"
                    "style: {Electronic: [ELECTRONIC, msd:House]}\n")
    report = _prepare(src, out, **dict(TAGGED, tag_vocabulary=str(mine)))
    assert calls == [] and report.tagging["embeddings_from_cache"] == 3 and report.tagging["embeddings_computed"] == 0
    for info in _infos(out).values():
        assert set(info["tags"]["instrument"]) == {"piano", "plucked"} and list(info["tags"]["style"]) == ["Electronic"]
        assert info["tags"]["mood"] == {} and "mood" not in info["description"]
    # The counter does count: without the cache the windows are read again.
    for cached in (out / tagging.CACHE_DIR).iterdir():
        cached.unlink()
    _prepare(src, out, **dict(TAGGED, tag_threshold=0.01))
    assert len(calls) == 3


def test_a_word_scores_the_best_of_its_model_tags_and_the_threshold_is_absolute():
    from dataset_tools.tagging_musicnn import MusicnnBackend, MusicnnVocabulary, all_tags
    tags = all_tags()
    vocabulary = MusicnnVocabulary({"style": {"rock": [tags.index("mtt:rock"), tags.index("msd:rock")],
                                              "pop": [tags.index("msd:pop")], "jazz": [tags.index("msd:jazz")]}})
    probs = np.zeros(100)
    probs[[tags.index("mtt:rock"), tags.index("msd:rock"), tags.index("msd:pop"), tags.index("msd:jazz")]] = \
        [0.2, 0.7, 0.5, 0.1]
    backend = MusicnnBackend(None, vocabulary)
    assert backend.score(probs, 0.3, 5) == {"style": {"rock": 0.7, "pop": 0.5}}
    assert backend.score(probs, 0.0, 1) == {"style": {"rock": 0.7}}
    assert backend.score(probs, 0.8, 5) == {"style": {}}   # independent sigmoids: no tag has to win


def test_missing_musicnn_weights_are_one_line_before_any_work(src, tmp_path):
    """Run in a fresh interpreter: the error comes before torch (or any model) is even imported."""
    code = ("import sys; from dataset_tools.__main__ import main; rc = main(sys.argv[1:]); "
            "print('torch' in sys.modules); sys.exit(rc)")
    env = {"XDG_CACHE_HOME": str(tmp_path / "empty_cache"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    for extra in ([], ["--tagger-model", str(tmp_path / "no_such_folder")]):
        out = tmp_path / "out"
        done = subprocess.run([sys.executable, "-c", code, "prepare", str(src), str(out), "--tagger", "musicnn",
                               *extra], capture_output=True, text=True, cwd=ROOT, env=env)
        assert done.returncode == EXIT_BAD_INPUT, done.stderr
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
        assert "fetch-tagger musicnn" in done.stderr and "--tagger-model DIR" in done.stderr
        assert done.stdout.strip() == "False" and not out.exists()


def test_an_unknown_model_tag_in_a_user_vocabulary_is_one_line(src, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("style: {grunge: [msd:grunge]}\n")
    code = main(["prepare", str(src), str(tmp_path / "out"), "--tagger", "musicnn", "--tagger-model", "tiny",
                 "--tag-vocabulary", str(bad)])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and err.count("\n") == 1, err
    assert "'msd:grunge'" in err and "mtt:guitar" in err and "msd:happy" in err
    assert not (tmp_path / "out").exists()
    bad.write_text("style: [electronic]\n")   # CLAP's plain-list shape: no model tags
    assert main(["prepare", str(src), str(tmp_path / "out"), "--tagger", "musicnn", "--tagger-model", "tiny",
                 "--tag-vocabulary", str(bad)]) == EXIT_BAD_INPUT
    assert "is a CLAP vocabulary" in capsys.readouterr().err


def test_the_threshold_default_is_the_taggers_own():
    from dataset_tools.options import DEFAULT_TAG_THRESHOLDS
    from dataset_tools.tagging import tag_threshold
    assert tag_threshold(PrepareOptions(tagger="clap")) == DEFAULT_TAG_THRESHOLDS["clap"] == 0.15
    assert tag_threshold(PrepareOptions(tagger="musicnn")) == DEFAULT_TAG_THRESHOLDS["musicnn"]
    assert tag_threshold(PrepareOptions(tagger="musicnn", tag_threshold=0.4)) == 0.4


def test_musicnn_resamples_as_it_was_trained_with_resampy_kaiser_best():
    """musicnn's features came from librosa.load(sr=16000) (resampy kaiser_best); soxr keeps more
    of the band near 8 kHz and moves the upper mel bands, hence the tags."""
    import librosa
    import torch
    from dataset_tools.musicnn import MODELS, log_mel, patches, tiny_musicnn
    rng = np.random.default_rng(1)
    wave = (0.3 * rng.standard_normal(int(4.0 * 44100))).astype(np.float32)   # white noise: energy up to 8 kHz
    model = tiny_musicnn(0)
    got = model.patch_probabilities(np.stack([wave, wave]), 44100)
    x = torch.as_tensor(patches(log_mel(librosa.resample(wave, orig_sr=44100, target_sr=16000,
                                                         res_type="kaiser_best"))))
    with torch.no_grad():
        want = torch.cat([torch.sigmoid(model.nets[m](x)) for m in MODELS], dim=1).double().numpy()
    assert got.shape == want.shape == (1, 100)
    assert np.abs(got - want).max() < 1e-4


def test_the_musicnn_identity_names_the_preprocessing_version(tmp_path):
    """Cached tag vectors are keyed by the identity: a new preprocessing must not reuse old ones."""
    from dataset_tools.musicnn import PREPROCESSING_VERSION, weight_paths
    from dataset_tools.tagging_musicnn import resolve_musicnn
    for path in weight_paths(tmp_path).values():
        path.write_bytes(b"x")
    for name in ("tiny", str(tmp_path)):
        assert resolve_musicnn(name)[1].endswith(f"/p{PREPROCESSING_VERSION}") and PREPROCESSING_VERSION >= 2


def test_the_musicnn_identity_hashes_the_weights_contents(tmp_path):
    """Same size, same mtime, other bytes: another identity (the cache must not serve old vectors)."""
    import os
    from dataset_tools.musicnn import weight_paths
    from dataset_tools.tagging_musicnn import resolve_musicnn
    ids = []
    for i, folder in enumerate((tmp_path / "a", tmp_path / "b")):
        folder.mkdir()
        for path in weight_paths(folder).values():
            path.write_bytes(bytes([i]) * 64)
            os.utime(path, ns=(10**18, 10**18))
        ids.append(resolve_musicnn(str(folder))[1].split("@")[1])
    assert ids[0] != ids[1]


def test_near_silent_patches_are_left_out_of_a_tracks_mean():
    from dataset_tools.tagging_musicnn import MusicnnBackend, UntaggableError, load_musicnn_vocabulary
    from dataset_tools.musicnn import tiny_musicnn
    backend = MusicnnBackend(tiny_musicnn(0), load_musicnn_vocabulary())
    music = tone(6.0, freq=441.0) + 0.05 * np.random.default_rng(2).standard_normal(6 * 44100).astype(np.float32)
    alone = backend.embed([(music, 44100)])
    quiet = 1e-4 * music   # -80 dB: near silence
    for silence in (np.zeros(9 * 44100, np.float32), quiet):
        assert np.abs(backend.embed([(music, 44100), (silence, 44100)]) - alone).max() < 1e-6
    # Within a window: 15 s = 5 patches, of which the 2 of music (and the one it spills into) count.
    probs = backend.model.patch_probabilities(np.concatenate([music, np.zeros(9 * 44100, np.float32)]), 44100)
    assert 2 <= len(probs) <= 3
    for windows in ([(np.zeros(6 * 44100, np.float32), 44100)], [(quiet, 44100)]):
        with pytest.raises(UntaggableError, match="silent"):
            backend.embed(windows)
    with pytest.raises(UntaggableError, match="too short"):
        backend.embed([(tone(0.1, freq=441.0), 44100)])
    assert backend.embed([(tone(1.2, freq=441.0), 44100)]).shape == (100,)


def test_too_short_and_silent_tracks_are_left_untagged_and_the_summary_says_why(src, tmp_path):
    lib = tmp_path / "lib"
    write_audio(lib / "rock/Riff.wav", tone(3.5, freq=882.0))
    write_audio(lib / "rock/Blip.wav", tone(0.7, freq=882.0))
    write_audio(lib / "rock/Hush.wav", np.zeros(int(3.5 * 44100), np.float32))
    report = _prepare(lib, tmp_path / "out", trim_db=None, **TAGGED)   # keep the silence: no trim
    infos = _infos(tmp_path / "out")
    untagged = {Path(p).stem.split("_")[0] for p, i in infos.items() if "tags" not in i}
    tagged = {Path(p).stem.split("_")[0] for p, i in infos.items() if "tags" in i}
    reasons = {u["source"]: u["reason"] for u in report.tagging["untaggable"]}
    assert tagged == {"Riff"} and untagged == {"Blip", "Hush"}
    assert "too short" in reasons["rock/Blip.wav"] and "silent" in reasons["rock/Hush.wav"]
    assert all(f"left untagged: {s}" in report.summary() for s in reasons)
    assert report.tagging["failed"] == []
    again = _prepare(lib, tmp_path / "out", trim_db=None, **TAGGED)   # settled: not retried as a failure would be
    assert again.tagging["untaggable"] == [] and again.tagging["tracks_tagged_this_run"] == 0
    off = _prepare(lib, tmp_path / "out", trim_db=None)   # tagger off: only Riff had tags to lose
    assert off.tagging["untagged_this_run"] == 1


def test_removing_musicnn_tags_names_musicnn_as_the_tagger_to_keep_them(src, tmp_path):
    out = tmp_path / "out"
    _prepare(src, out, **TAGGED)
    report = _prepare(src, out)   # tagger off: the tags go
    assert report.tagging["untagged_this_run"] == 3
    assert "tags removed from 3 track(s) (run with --tagger musicnn to keep them)" in report.summary()
    assert all("tags" not in info for info in _infos(out).values())


@pytest.mark.parametrize("text, words", [
    ("style: {rock: [mtt:rock], ' rock ': [msd:rock]}\n", ["'rock' twice"]),
    ("style: {Rock: [mtt:rock], rock: [msd:rock]}\n", ["'rock' twice"]),
    ("style:\n  rock: [mtt:rock]\n  rock: [msd:rock]\n", ["duplicate key 'rock'", "line 3"]),
    ("style:\n  rock: [mtt:rock]\nstyle:\n  pop: [msd:pop]\n", ["duplicate key 'style'"]),
    ("style:\n  prompt: '{} music'\n  tags: [rock, pop]\n", ["is a CLAP vocabulary", "musicnn needs"]),
    ("style: [rock, pop]\nmood: [calm]\n", ["is a CLAP vocabulary", "musicnn needs"]),
])
def test_a_musicnn_vocabulary_with_a_word_twice_or_a_clap_vocabulary_is_one_line(tmp_path, text, words):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ValueError) as exc:
        load_musicnn_vocabulary(bad)
    message = str(exc.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_a_bad_tiny_name_names_the_musicnn_tagger(src, tmp_path, capsys):
    assert main(["prepare", str(src), str(tmp_path / "out"), "--tagger", "musicnn", "--tagger-model",
                 "tiny:x"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad tiny musicnn name 'tiny:x'" in err, err
