"""``dataset_tools captions OUT`` on .json files edited by hand, and its template checks."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from test_tagging import TAGGED, _infos, _library, _prepare

from dataset_tools.__main__ import main
from dataset_tools.cli import EXIT_BAD_INPUT
from dataset_tools.state import PrepareState

BAD = "jazz/Blue Tone__000"
TEMPLATE = "{genre} music, {style}, {mood} mood, {bpm} bpm"


@pytest.fixture(scope="module")
def tagged(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("captions_cmd")
    out = root / "out"
    _prepare(_library(root), out, **TAGGED)
    return out


def _edit(out: Path, change) -> None:
    path = out / f"{BAD}.json"
    info = json.loads(path.read_text())
    change(info)
    path.write_text(json.dumps(info))


@pytest.mark.parametrize("change, reason", [
    (lambda i: i.update(bpm="fast"), '"bpm" is not a positive number'),
    (lambda i: i.update(bpm=float("nan")), '"bpm" is not a positive number'),
    (lambda i: i.update(tags=["a"]), '"tags" is not an object'),
    (lambda i: i["tags"].update(style=["x", "y"]), '"tags"."style" is not an object of tag scores'),
    (lambda i: i.update(moods="relaxed"), '"moods" is not a list of words'),
    (lambda i: i.update(genre=["jazz"]), '"genre" is not text'),
])
def test_malformed_json_fields_are_reported_by_path_and_the_rest_is_rerendered(tagged, tmp_path, capsys,
                                                                              change, reason):
    out = Path(shutil.copytree(tagged, tmp_path / "out"))
    _edit(out, change)
    bad_txt = (out / f"{BAD}.txt").read_text()
    assert main(["captions", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"1 segment(s) without a readable .json, e.g. {BAD}.wav ({reason})" in text
    assert main(["captions", str(out), "--template", TEMPLATE]) == 0
    text = capsys.readouterr().out
    assert "re-rendered 5 caption(s)" in text and f"{BAD}.wav ({reason})" in text
    assert (out / f"{BAD}.txt").read_text() == bad_txt
    for rel, info in _infos(out).items():
        if rel != f"{BAD}.json":
            assert info["description"].startswith(info["genre"].capitalize() + " music, ")
            assert " mood" in info["description"]


def test_a_failed_write_leaves_the_state_in_line_with_the_files(tagged, tmp_path, monkeypatch):
    import dataset_tools.caption_report as caption_report
    out = Path(shutil.copytree(tagged, tmp_path / "out"))
    real, calls = caption_report.write_text_atomic, []

    def failing(path, text):
        calls.append(path)
        if len(calls) > 4:   # two segments (.txt and .json) written, then the disk fails
            raise OSError(28, "No space left on device")
        return real(path, text)
    monkeypatch.setattr(caption_report, "write_text_atomic", failing)
    with pytest.raises(OSError):
        caption_report.rerender(out, "{genre} music")
    segments = [seg for rec in PrepareState(out).records.values() for seg in rec["segments"]]
    rewritten = [seg for seg in segments if seg["caption"] in ("Jazz music", "Rock music")]
    assert len(rewritten) == 2
    for seg in segments:
        assert seg["caption"] == (out / seg["path"]).with_suffix(".txt").read_text()


def test_the_advice_for_an_unreadable_json_works(tagged, tmp_path, capsys):
    src = next(p for p in tagged.parent.glob("src"))
    out = Path(shutil.copytree(tagged, tmp_path / "out"))
    (out / f"{BAD}.json").write_bytes(b"\xff\xfe not JSON")
    _prepare(src, out, **TAGGED)   # prepare alone does not notice (it checks that its files exist)
    assert main(["captions", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"{BAD}.wav (not valid JSON): delete those .json files and run prepare again" in text
    (out / f"{BAD}.json").unlink()
    _prepare(src, out, **TAGGED)
    assert main(["captions", str(out)]) == 0
    assert "without a readable .json" not in capsys.readouterr().out
    assert json.loads((out / f"{BAD}.json").read_text())["tags"]


@pytest.mark.parametrize("template", ["{genre:>12} music", "{genre:{bpm}} music", "{genre!r} music",
                                      "{genre:{genre.__class__.__name__}}"])
def test_templates_with_format_specs_or_conversions_are_refused(tagged, tmp_path, capsys, template):
    out = Path(shutil.copytree(tagged, tmp_path / "out"))
    before = (out / f"{BAD}.txt").read_text()
    assert main(["captions", str(out), "--template", template]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "format spec or conversion" in err
    assert (out / f"{BAD}.txt").read_text() == before
