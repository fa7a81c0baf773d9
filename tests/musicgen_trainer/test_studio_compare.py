"""The studio's Compare tab: two models on one prompt and seed, blind A/B with Reveal, and the
fine-tune's evaluation report; through the backend and through gradio_client."""
import hashlib
import json
from pathlib import Path

import pytest

from musicgen_trainer.app import studio_compare as sc


@pytest.fixture(scope="module")
def studio(tmp_path_factory, tiny_model):
    from musicgen_trainer.app.page import App
    from musicgen_trainer.exports import export_model
    root = tmp_path_factory.mktemp("compare")
    export_model(tiny_model, root / "checkpoints" / "jazzrun" / "export", extra={"genres": ["jazz"]})
    report = root / "checkpoints" / "jazzrun" / "eval-report"
    report.mkdir()
    (report / "report.json").write_text(json.dumps({"verdict": "The fine-tune sounds more like jazz."}))
    (report / "report.html").write_text("<html>report</html>")
    return App(checkpoints=str(root / "checkpoints"), out=str(root / "out"), pretrained=[], midi_default=False,
               data_root=str(root / "datasets"))


def _digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("draw", [0, 1])
def test_blind_order_is_drawn_hidden_in_names_and_revealed(studio, monkeypatch, draw):
    monkeypatch.setattr(sc.secrets, "randbelow", lambda n: draw if n == 2 else 12345)
    tiny, fine = sc.Side("tiny"), sc.Side("export:jazzrun/export")
    result = sc.compare(studio, tiny, fine, "piano", seed=7, duration=0.5, blind=True)
    assert result.labels == ("A", "B") and result.seed == 7
    assert [p.name for p in result.wavs] == ["A.wav", "B.wav"]  # nothing in the names says which
    assert sorted(p.name for p in result.wavs[0].parent.iterdir()) == ["A.wav", "B.wav", "compare.json"]
    expected = "A = tiny · B = export:jazzrun/export" if draw == 0 else "A = export:jazzrun/export · B = tiny"
    assert sc.reveal(studio, result.token) == expected
    # the same seed for both: each clip is what that model alone makes with seed 7
    alone = sc.compare(studio, tiny, tiny, "piano", seed=7, duration=0.5, blind=False)
    assert _digest(alone.wavs[0]) == _digest(alone.wavs[1])
    tiny_clip = result.wavs[0] if draw == 0 else result.wavs[1]
    assert _digest(tiny_clip) == _digest(alone.wavs[0])
    assert alone.labels == ("tiny", "tiny")


@pytest.mark.parametrize("token", ["", "../../etc", "0123456789abcdef", "/tmp/x", "a" * 16])
def test_reveal_reads_only_its_own_records(studio, token):
    with pytest.raises(ValueError, match="nothing to reveal"):
        sc.reveal(studio, token)


@pytest.mark.parametrize("model", ["/etc/passwd", "export:../../x", "checkpoints/jazzrun/export", "facebook/musicgen-large"])
def test_only_listed_models(studio, model):
    with pytest.raises(ValueError, match="from the list"):
        sc.compare(studio, sc.Side("tiny"), sc.Side(model), "", seed=1, duration=0.5, blind=True)
    with pytest.raises(ValueError, match="from the list"):
        sc.compare(studio, sc.Side("tiny"), sc.Side("tiny", adapter="adapter:../../x"), "", 1, 0.5, True)


def test_the_fine_tunes_evaluation_report(studio):
    text, html = sc.evaluation_report(studio, "export:jazzrun/export")
    assert "jazzrun/eval-report" in text and "more like jazz" in text and html.name == "report.html"
    assert str(Path(studio.checkpoints).resolve()) not in text
    assert sc.evaluation_report(studio, "tiny") == ("", None)
    assert sc.evaluation_report(studio, "export:../../x") == ("", None)


def test_api_compare_blind_then_reveal(studio):
    from gradio_client import Client

    from musicgen_trainer.app.page import serve_in_background
    demo, url = serve_in_background(studio)
    try:
        client = Client(url, verbose=False)
        a, b, summary, token, revealed = client.predict("tiny", "none", "export:jazzrun/export", "none", "rock", 3, 0.5,
                                                        True, api_name="/compare")
        a, b = (x["value"] if isinstance(x, dict) else x for x in (a, b))  # players relabelled: updates
        assert Path(a).suffix == Path(b).suffix == ".wav" and "seed 3" in summary and revealed == ""
        assert "tiny" not in Path(a).name + Path(b).name and "jazzrun" not in Path(a).name + Path(b).name
        assert sorted(client.predict(token, api_name="/compare_reveal").replace("A = ", "").replace("B = ", "")
                      .split(" · ")) == ["export:jazzrun/export", "tiny"]
        text, html = client.predict("export:jazzrun/export", api_name="/compare_report")
        html = html["value"] if isinstance(html, dict) else html
        assert "more like jazz" in text and Path(html).read_text() == "<html>report</html>"
    finally:
        demo.close()


@pytest.mark.parametrize("linked", ["report.html", "report.json", "folder"])
def test_a_report_linked_from_elsewhere_is_not_shown(tmp_path, tiny_model, linked):
    import os

    from musicgen_trainer.app.page import App
    from musicgen_trainer.exports import export_model
    export_model(tiny_model, tmp_path / "checkpoints" / "run" / "export")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "report.json").write_text(json.dumps({"verdict": "secret verdict"}))
    (outside / "report.html").write_text("<html>secret</html>")
    if linked == "folder":
        os.symlink(outside, tmp_path / "checkpoints" / "run" / "eval")
    else:
        report = tmp_path / "checkpoints" / "run" / "eval"
        report.mkdir()
        other = "report.json" if linked == "report.html" else "report.html"
        (report / other).write_text((outside / other).read_text())
        os.symlink(outside / linked, report / linked)
    app = App(checkpoints=str(tmp_path / "checkpoints"), out=str(tmp_path / "out"), pretrained=[], midi_default=False,
              data_root=str(tmp_path / "datasets"))
    assert sc.evaluation_report(app, "export:run/export") == ("", None)


def test_a_report_json_is_read_bounded(studio, monkeypatch):
    monkeypatch.setattr(sc, "MAX_REPORT_BYTES", 16)  # the real report is larger: not read at all
    text, html = sc.evaluation_report(studio, "export:jazzrun/export")
    assert "no verdict recorded" in text and "more like jazz" not in text and html.name == "report.html"
