"""``prepare --tagger clap`` (tagging.py) and ``dataset_tools captions`` (caption_report.py),
on a tiny random CLAP built offline: its tags mean nothing, but they are deterministic for a
seed and exercise every path (scores, caching, re-scoring, re-rendering)."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dt_helpers import MIN_SECONDS, SEGMENT_SECONDS, tone, write_audio

from dataset_tools.__main__ import main
from dataset_tools.cli import EXIT_BAD_INPUT
from dataset_tools.options import PrepareOptions
from dataset_tools.prepare import prepare
from dataset_tools.tagging import CACHE_DIR, window_spans

TAGGED = dict(tagger="clap", tagger_model="tiny", tag_threshold=0.0, max_tags_per_field=2)


def _library(root: Path) -> Path:
    """Three 3.5 s tracks (2 segments each): two jazz, one rock."""
    src = root / "src"
    rng = np.random.default_rng(0)
    for rel, freq in (("jazz/Blue Tone.wav", 220.5), ("jazz/Night Walk.wav", 441.0), ("rock/Riff.wav", 882.0)):
        audio = tone(3.5, freq=freq) + 0.05 * rng.standard_normal(int(3.5 * 44100)).astype(np.float32)
        write_audio(src / rel, audio)
    return src


def _prepare(src: Path, out: Path, **options):
    return prepare(src, out, PrepareOptions(segment_seconds=SEGMENT_SECONDS, min_seconds=MIN_SECONDS, workers=1,
                                            progress=False, analyze=False, **options))


def _infos(out: Path) -> dict[str, dict]:
    return {p.relative_to(out).as_posix(): json.loads(p.read_text()) for p in sorted(out.glob("*/*.json"))
            if p.with_suffix(".wav").exists()}


def _digest(paths) -> dict:
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return _library(tmp_path_factory.mktemp("tag_lib"))


def test_tags_land_in_the_json_and_the_caption_and_are_deterministic_for_a_seed(src, tmp_path):
    report = _prepare(src, tmp_path / "a", **TAGGED)
    infos = _infos(tmp_path / "a")
    assert len(infos) == 6
    for rel, info in infos.items():
        tags = info["tags"]
        assert set(tags) == {"instrument", "mood", "style"} and all(len(t) == 2 for t in tags.values())
        assert all(0.0 <= s <= 1.0 for t in tags.values() for s in t.values())
        moods, styles, instruments = list(tags["mood"]), list(tags["style"]), list(tags["instrument"])
        assert info["moods"] == moods and info["instrument"] == " and ".join(instruments)
        assert info["keywords"][-2:] == styles
        caption = info["description"]
        assert f"{moods[0]} and {moods[1]} mood" in caption and " and ".join(styles) in caption
        assert f"played on {instruments[0]} and {instruments[1]}" in caption
        assert (tmp_path / "a" / rel).with_suffix(".txt").read_text() == caption
    assert report.tagging["tracks_tagged_this_run"] == 3 and report.tagging["embeddings_computed"] == 3
    assert report.longest_caption["words"] == max(len(i["description"].split()) for i in infos.values())
    assert "longest caption" in report.summary()

    _prepare(src, tmp_path / "b", **TAGGED)
    again = _infos(tmp_path / "b")
    assert {r: list(i["tags"]["mood"]) + list(i["tags"]["instrument"]) for r, i in again.items()} == \
        {r: list(i["tags"]["mood"]) + list(i["tags"]["instrument"]) for r, i in infos.items()}
    for rel in infos:
        for field, scores in infos[rel]["tags"].items():
            assert np.allclose(list(again[rel]["tags"][field].values()), list(scores.values()), atol=2e-4)
    _prepare(src, tmp_path / "c", **dict(TAGGED, tagger_model="tiny:1"))
    other = _infos(tmp_path / "c")
    assert [i["tags"] for i in other.values()] != [i["tags"] for i in infos.values()]


def test_reruns_reuse_the_cached_embeddings_and_a_new_vocabulary_rescores_without_reading_audio(
        src, tmp_path, monkeypatch):
    import dataset_tools.convert as convert
    import dataset_tools.tagging as tagging
    out = tmp_path / "out"
    _prepare(src, out, **TAGGED)
    wavs = _digest(sorted(out.glob("*/*.wav")))
    old_styles = {t for info in _infos(out).values() for t in info["tags"]["style"]}
    calls = {"read_window": 0, "load_audio": 0}

    def counting(name, func):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return func(*args, **kwargs)
        return wrapper
    monkeypatch.setattr(tagging, "read_window", counting("read_window", tagging.read_window))
    monkeypatch.setattr(convert, "load_audio", counting("load_audio", convert.load_audio))

    report = _prepare(src, out, **TAGGED)   # nothing changed: nothing decoded, nothing re-scored
    assert calls == {"read_window": 0, "load_audio": 0} and report.tagging["tracks_tagged_this_run"] == 0

    vocabulary = tmp_path / "mine.yaml"
    vocabulary.write_text("instrument: [kazoo, theremin, glass harp]\n"
                          "mood:\n  prompt: 'a {} song'\n  tags: [sleepy, furious]\n")
    report = _prepare(src, out, **dict(TAGGED, tag_vocabulary=str(vocabulary)))
    assert calls == {"read_window": 0, "load_audio": 0}
    assert report.tagging["embeddings_from_cache"] == 3 and report.tagging["embeddings_computed"] == 0
    for info in _infos(out).values():
        assert set(info["tags"]["instrument"]) <= {"kazoo", "theremin", "glass harp"}
        assert set(info["moods"]) == {"sleepy", "furious"} and info["tags"]["style"] == {}
        assert "mood" in info["description"] and not any(t in info["description"] for t in old_styles)
    assert _digest(sorted(out.glob("*/*.wav"))) == wavs

    # The counter does count: without the cache, the audio is read again (windows per track).
    for cached in (out / CACHE_DIR).iterdir():
        cached.unlink()
    report = _prepare(src, out, **dict(TAGGED, tag_threshold=0.01))
    assert calls["read_window"] == 3 and calls["load_audio"] == 0 and report.tagging["embeddings_computed"] == 3

    # Tagger off again: the captions lose their tags (no conversion either).
    _prepare(src, out)
    assert calls["load_audio"] == 0
    for rel, info in _infos(out).items():
        assert "tags" not in info and info["moods"] == [] and "mood" not in info["description"]
        assert (out / rel).with_suffix(".txt").read_text() == info["description"]


def test_missing_clap_weights_are_one_line_before_any_work(src, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    for model in ("laion/larger_clap_music", str(tmp_path / "no_such_folder"), str(tmp_path)):
        out = tmp_path / "out"
        code = main(["prepare", str(src), str(out), "--tagger", "clap", "--tagger-model", model])
        err = capsys.readouterr().err
        assert code == EXIT_BAD_INPUT and err.startswith("error: ") and err.count("\n") == 1, err
        assert not out.exists()   # nothing converted, nothing written
    assert "--tagger-model DIR" in err or "config.json" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("colour: [red]\n")
    code = main(["prepare", str(src), str(tmp_path / "out"), "--tagger", "clap", "--tagger-model", "tiny",
                 "--tag-vocabulary", str(bad)])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and "unknown field 'colour'" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_captions_command_counts_tags_and_duplicates_and_rerenders_only_prepares_files(src, tmp_path, capsys):
    out = tmp_path / "out"
    _prepare(src, out, **TAGGED)
    foreign = [out / "jazz" / "my notes.txt", out / "jazz" / "mine.json"]
    for path in foreign:
        path.write_text("not prepare's")
    keep = _digest(sorted(out.glob("*/*.wav")) + foreign)
    infos = _infos(out)

    assert main(["captions", str(out)]) == 0
    text = capsys.readouterr().out
    jazz = Counter(t for i in infos.values() if i["genre"] == "jazz" for f in i["tags"] for t in i["tags"][f])
    line = next(x for x in text.splitlines() if x.strip().startswith("jazz: "))
    first_tag = line.split(": ", 1)[1].split(", ")[0]
    assert first_tag == f"{first_tag.rsplit(' ', 1)[0]} {max(jazz.values())}"
    assert "untagged segments: 0" in text and "longest caption" in text

    assert main(["captions", str(out), "--template", "{genre} music, {mood} mood"]) == 0
    text = capsys.readouterr().out
    assert "re-rendered 6 caption(s)" in text
    for rel, info in _infos(out).items():
        expected = f"{info['genre'].capitalize()} music, {' and '.join(infos[rel]['moods'])} mood"
        assert info["description"] == expected == (out / rel).with_suffix(".txt").read_text()
        assert info["tags"] == infos[rel]["tags"]
    assert _digest(sorted(out.glob("*/*.wav")) + foreign) == keep

    assert main(["captions", str(out), "--template", "{genre} music"]) == 0
    text = capsys.readouterr().out
    assert "1 caption(s) shared by segments of 2 different tracks" in text and "2 tracks: Jazz music" in text

    assert main(["captions", str(out), "--template", "{colour} music"]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["captions", str(src)]) == EXIT_BAD_INPUT   # not a prepared folder
    assert "no prepare state" in capsys.readouterr().err

    plain = tmp_path / "plain"
    _prepare(src, plain)
    assert main(["captions", str(plain)]) == 0
    assert "untagged segments: 6 (jazz 4, rock 2)" in capsys.readouterr().out


def test_the_new_default_template_keeps_untagged_datasets_up_to_date():
    """{style} and {mood} are empty without tags: the captions are the former default's, so a
    dataset prepared before is not reconverted (same options hash)."""
    from dataset_tools.captions import DEFAULT_TEMPLATE, caption_values, render_caption
    from dataset_tools.options import FORMER_DEFAULT_TEMPLATE
    values = caption_values(genre="jazz", title="Blue", artist="Me", bpm=92.0, key="F major", instrument="piano",
                            name="Blue")
    assert render_caption(DEFAULT_TEMPLATE, values) == render_caption(FORMER_DEFAULT_TEMPLATE, values)
    assert PrepareOptions().output_fields()["caption_template"] == FORMER_DEFAULT_TEMPLATE
    assert PrepareOptions(caption_template="{genre}").output_fields()["caption_template"] == "{genre}"


def test_windows_spread_over_the_track_and_stay_inside_segments():
    one = [{"path": "a.wav", "start": 1.0, "duration": 30.0}]
    assert window_spans(one, 10.0) == [("a.wav", 0.0, 10.0), ("a.wav", 10.0, 10.0), ("a.wav", 20.0, 10.0)]
    short = [{"path": "s.wav", "start": 0.0, "duration": 4.0}]
    assert window_spans(short, 10.0) == [("s.wav", 0.0, 4.0)]
    segs = [{"path": f"t__{i:03d}.wav", "start": 4.0 * i, "duration": 4.0} for i in range(15)]   # 60 s
    assert window_spans(segs, 10.0) == [("t__002.wav", 0.0, 4.0), ("t__007.wav", 0.0, 4.0), ("t__012.wav", 0.0, 4.0)]


# --- review fixes ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tagged(src, tmp_path_factory) -> Path:
    """A dataset of ``src`` prepared with TAGGED (copy it before changing it)."""
    out = tmp_path_factory.mktemp("tagged") / "out"
    _prepare(src, out, **TAGGED)
    return out


def _copy(tagged: Path, tmp_path: Path) -> Path:
    import shutil
    return Path(shutil.copytree(tagged, tmp_path / "out"))


def _counting(monkeypatch):
    import dataset_tools.convert as convert
    import dataset_tools.tagging as tagging
    calls = {"read_window": 0, "load_audio": 0}

    def counting(name, module):
        func = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return func(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapper)
    counting("read_window", tagging)
    counting("load_audio", convert)
    return calls


def test_a_template_change_on_a_tagged_dataset_recaptions_from_the_cached_embeddings(src, tagged, tmp_path,
                                                                                    monkeypatch):
    """The template is part of a track's tag key; the embeddings' key ignores caption options."""
    from dataset_tools.options import FORMER_DEFAULT_TEMPLATE
    out = _copy(tagged, tmp_path)
    calls = _counting(monkeypatch)
    before = _infos(out)
    assert all(" mood" in i["description"] for i in before.values())
    # Hashes as the default template (no reconversion), but it has no {mood}: the captions change.
    report = _prepare(src, out, **dict(TAGGED, caption_template=FORMER_DEFAULT_TEMPLATE))
    assert report.converted_this_run == 0 and report.tagging["tracks_tagged_this_run"] == 3
    for rel, info in _infos(out).items():
        assert " mood" not in info["description"] and info["tags"] == before[rel]["tags"]
        assert (out / rel).with_suffix(".txt").read_text() == info["description"]
    assert calls == {"read_window": 0, "load_audio": 0}
    # Another template reconverts (the audio is decoded again: the counter counts) but the
    # embeddings come from the cache: the template does not change the audio.
    report = _prepare(src, out, **dict(TAGGED, caption_template="{genre} music, {mood} mood"))
    assert report.converted_this_run == 3 and calls["load_audio"] == 3 and calls["read_window"] == 0
    assert report.tagging["embeddings_from_cache"] == 3 and report.tagging["embeddings_computed"] == 0
    for rel, info in _infos(out).items():
        assert info["description"] == f"{info['genre'].capitalize()} music, {' and '.join(info['moods'])} mood"


def test_a_captions_template_survives_retagging_and_untagging_until_reconverted(src, tagged, tmp_path, capsys):
    out = _copy(tagged, tmp_path)
    assert main(["captions", str(out), "--template", "{genre} music, {mood} mood"]) == 0
    capsys.readouterr()
    report = _prepare(src, out, **dict(TAGGED, tag_threshold=0.01))
    assert report.converted_this_run == 0
    for rel, info in _infos(out).items():
        assert info["description"] == f"{info['genre'].capitalize()} music, {' and '.join(info['moods'])} mood"
        assert (out / rel).with_suffix(".txt").read_text() == info["description"]
    report = _prepare(src, out)   # tagger off: tags removed, the captions template kept
    assert report.converted_this_run == 0 and report.tagging["untagged_this_run"] == 3
    assert "tags removed from 3 track(s) (run with --tagger clap to keep them)" in report.summary()
    for rel, info in _infos(out).items():
        assert info["description"] == info["genre"].capitalize() + " music" == \
            (out / rel).with_suffix(".txt").read_text()
    report = _prepare(src, out, caption_template="{genre} music, {title}")   # reconverted: prepare's template
    assert report.converted_this_run == 3
    assert _infos(out)["jazz/Blue Tone__000.json"]["description"] == "Jazz music, Blue Tone"


def test_a_partial_model_is_a_one_line_error_before_any_work(src, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants
    from dataset_tools.clap import tiny_clap
    cache = tmp_path / "hub"
    snapshot = cache / "models--laion--larger_clap_music" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "models--laion--larger_clap_music" / "refs").mkdir()
    (cache / "models--laion--larger_clap_music" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    weights_only = tmp_path / "weights_only"   # config.json and model.safetensors, no processor files
    tiny_clap(0).model.save_pretrained(weights_only)
    capsys.readouterr()
    for model in ("laion/larger_clap_music", str(weights_only)):
        out = tmp_path / "out"
        code = main(["prepare", str(src), str(out), "--tagger", "clap", "--tagger-model", model])
        err = capsys.readouterr().err
        assert code == EXIT_BAD_INPUT and err.startswith("error: ") and err.count("\n") == 1, err
        assert "cannot be loaded" in err and "to get CLAP figures" not in err
        assert not out.exists()


def test_a_failing_tag_pass_still_writes_the_manifests_and_the_report(src, tmp_path, monkeypatch):
    import dataset_tools.tagging as tagging
    from dataset_tools.files import RunFailedError

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")
    monkeypatch.setattr(tagging, "score_tags", out_of_memory)
    out = tmp_path / "out"
    with pytest.raises(RunFailedError, match="tag pass failed .*CUDA out of memory"):
        _prepare(src, out, **TAGGED)
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["tracks"] == 3 and "CUDA out of memory" in report["tagging"]["error"]
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 6


def test_prompts_replace_the_braces_as_plain_text(tmp_path):
    from dataset_tools.tagging import load_vocabulary
    path = tmp_path / "v.yaml"
    for prompt, expected in (("{} {x}", "happy {x}"), ("the {} of {0}", "the happy of {0}"),
                             ("{{}}", "{happy}"), ("{} {.__class__}", "happy {.__class__}")):
        path.write_text(f'mood:\n  prompt: "{prompt}"\n  tags: [happy, sad]\n')
        prompts = load_vocabulary(path).prompts("mood")
        assert prompts[0] == expected and prompts[1] == expected.replace("happy", "sad")
        assert prompts[2] == "music"   # the background prompt
    path.write_text('mood:\n  prompt: "{} music"\n  tags: [happy]\n  colour: red\n')
    with pytest.raises(ValueError, match="unknown key 'colour'"):
        load_vocabulary(path)


def test_a_tag_must_beat_the_background_prompt():
    """A softmax share alone keeps a one-tag field's tag always (share 1.0) and the best of
    every field: the background prompt ("none of these") lets a field stay empty."""
    from dataset_tools.tagging import score_tags
    background = np.array([1.0, 0.0, 0.0])
    rows = {"instrument": (["piano"], np.array([[0.0, 1.0, 0.0], background])),
            "mood": (["calm", "sad"], np.array([[0.0, 0.0, 1.0], [0.0, 0.6, 0.8], background]))}
    near_background = np.array([0.9, 0.3, 0.3]) / np.linalg.norm([0.9, 0.3, 0.3])
    assert score_tags(near_background, rows, 10.0, 0.0, 2) == {"instrument": {}, "mood": {}}
    near_calm = np.array([0.3, 0.0, 0.95]) / np.linalg.norm([0.3, 0.0, 0.95])
    tags = score_tags(near_calm, rows, 10.0, 0.0, 2)
    assert tags["instrument"] == {} and list(tags["mood"]) == ["calm", "sad"]


def test_prepare_without_a_tagger_does_not_import_torch(src, tmp_path):
    import subprocess
    import sys
    code = ("import sys; from dataset_tools.options import PrepareOptions; from dataset_tools.prepare import prepare; "
            f"prepare({str(src)!r}, {str(tmp_path / 'out')!r}, PrepareOptions(segment_seconds=2.0, "
            "min_seconds=0.5, workers=1, progress=False, analyze=False)); "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_cached_embeddings_of_the_wrong_shape_are_ignored(tmp_path):
    from dataset_tools.tagging import EmbeddingCache
    cache = EmbeddingCache(tmp_path)
    cache.put("k", np.ones(3))
    assert cache.get("k", 8) is None and cache.get("k", 3).shape == (3,)
    cache.put("nan", np.full(3, np.nan))
    assert cache.get("nan", 3) is None


def test_the_default_options_hash_is_pinned():
    """Datasets prepared before the tagger existed must stay up to date: the default options
    (the new default template included) hash as they did."""
    from dataset_tools.state import options_hash
    assert options_hash(PrepareOptions().output_fields()) == "0d24df55838aac49"
    assert options_hash(PrepareOptions(tagger="clap", tag_threshold=0.5).output_fields()) == "0d24df55838aac49"


def test_evaluation_takes_every_tiny_clap_name_with_its_note():
    from types import SimpleNamespace

    from musicgen_trainer.evaluation.evaluate import _load_clap
    notes = []
    clap = _load_clap(SimpleNamespace(clap="tiny:1"), "cpu", notes)
    assert clap.name == "tiny-clap:1" and "tiny random model (--clap tiny:1)" in notes[-1]
    assert _load_clap(SimpleNamespace(clap="tiny:x"), "cpu", notes) is None
    assert notes[-1].startswith("CLAP not measured: bad tiny CLAP name 'tiny:x'")
