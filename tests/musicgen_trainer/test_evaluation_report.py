"""The evaluation report (musicgen_trainer/evaluation/report*.py): files written, JSON round trip,
markdown tables, notes instead of crashes for missing sections, escaping of user text, the
seeded blind A/B order, relative paths, the verdict's wording on planted reports, and the page
in headless Chromium (audio that loads, a reveal toggle that works).

(docs/images/evaluation-report.png is a screenshot of a real report, docs/evaluation.md's worked
example; this test's planted report does not replace it.)
"""
import copy
import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicgen_trainer.evaluation.report import write_report
from musicgen_trainer.evaluation.report_html import blind_order
from musicgen_trainer.evaluation.report_plots import make_plots
from musicgen_trainer.evaluation.report_schema import jsonable, tokens, validate
from musicgen_trainer.evaluation.report_verdict import verdict

GENRES = ["jazz", "rock"]
INJECTION = '<script>window.injected = 1</script><img src=x onerror="window.injected = 2">'
SAMPLE_RATE = 16000


def write_clips(folder: Path, per_genre: int = 3) -> list:
    """Short sine WAVs for both models under ``folder/clips`` and their clip rows."""
    clips = []
    for i in range(per_genre * len(GENRES)):
        genre = GENRES[i % len(GENRES)]
        files = {}
        for k, model in enumerate(("finetune", "base")):
            rel = f"clips/{model}/{genre} {i}.wav"  # a space: paths must be URL-encoded in the page
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            t = np.arange(SAMPLE_RATE // 2) / SAMPLE_RATE
            sf.write(folder / rel, 0.3 * np.sin(2 * np.pi * (220 + 40 * i + 10 * k) * t), SAMPLE_RATE)
            files[model] = rel
        clips.append({"prompt": f"{genre.title()} music, late night {INJECTION}", "genre": genre, "seed": i,
                      "files": files,
                      "predictions": {"finetune": {"label": genre, "confidence": 0.8},
                                      "base": {"label": "rock", "confidence": 0.55}},
                      "flags": {"finetune": [], "base": ["silent"] if i == 0 else []}})
    return clips


def fad(value, low, high, n_a=16, n_b=34):
    return {"fad": value, "low": low, "high": high, "n_a": n_a, "n_b": n_b}


def planted(ce=(4.12, 5.87), acc=(0.625, 0.25), fads=((1.2, 0.9, 1.6), (3.2, 2.5, 4.0)),
            ceiling=0.8, n=16, clips=None) -> dict:
    """A filled report; numbers chosen per test."""
    def confusion(accuracy):
        right = round(accuracy * n / 2)
        return [[right, n // 2 - right], [n // 2 - right, right]]
    return {
        "models": {"finetune": {"name": "my-jazz-run", "path": "checkpoints/my-jazz-run/export"},
                   "base": {"name": "facebook/musicgen-small", "path": "facebook/musicgen-small",
                            "source": "recorded in the export"}},
        "data": {"path": "datasets/example-prepared", "split": "valid",
                 "genres": {"jazz": {"tracks": 3, "clips": 20}, "rock": {"tracks": 2, "clips": 14}}},
        "settings": {"duration": 10.0, "per_genre": n // 2, "seeds": list(range(n // 2)), "blind_seed": 0},
        "held_out_ce": {m: {"per_codebook": [v - 0.2, v - 0.1, v + 0.1, v + 0.2], "mean": v,
                            "perplexity": float(np.exp(v)), "n_tokens": 4936,
                            "n_tokens_per_codebook": [1234] * 4}
                        for m, v in zip(("finetune", "base"), ce)},
        "genre_adherence": {m: {"accuracy": a, "n": n, "labels": GENRES, "confusion": confusion(a),
                                "mean_confidence": 0.7} for m, a in zip(("finetune", "base"), acc)},
        "classifier_ceiling": {"accuracy": ceiling, "n": 20},
        "fad": {"classifier": {m: fad(*f) for m, f in zip(("finetune", "base"), fads)},
                "clap-music": {"note": "CLAP weights are not available offline"}},
        "fad_per_genre": {"classifier": {g: {"finetune": fad(1.0, 0.6, 1.4, 8, 17),
                                             "base": fad(2.0, 1.5, 2.6, 8, 17)} for g in GENRES}},
        "clap": {"finetune": {"mean": 0.31, "n": n}, "base": {"mean": 0.29, "n": n}},
        "sanity": {"finetune": {"silent": 0, "clipped": 0, "repetitive": 0, "n": n},
                   "base": {"silent": 1, "clipped": 0, "repetitive": 0, "n": n},
                   "memorisation": {"finetune": {"flagged": 0, "n": n, "max_overlap": 0.12, "threshold": 0.5}}},
        "clips": clips or [],
        "notes": ["Generated on CPU."],
    }


# --- files, JSON, markdown ------------------------------------------------------------------

def test_write_report_writes_every_file_and_the_json_round_trips(tmp_path):
    report = planted(clips=write_clips(tmp_path))
    report["held_out_ce"]["finetune"]["per_codebook"] = np.array([3.9, 4.0, 4.2, 4.4], dtype=np.float32)
    report["held_out_ce"]["finetune"]["n_tokens"] = np.int64(4936)
    report["clap"]["base"]["mean"] = float("nan")  # a failed figure: JSON has no NaN
    report["genre_adherence"]["base"]["per_clip"] = [{"intended": "jazz", "predicted": None, "confidence": 0.0,
                                                      "reason": "silent"}]  # extra keys are kept
    before = copy.deepcopy(report)
    paths = write_report(report, tmp_path)
    assert report["held_out_ce"]["finetune"]["n_tokens"] == before["held_out_ce"]["finetune"]["n_tokens"]
    assert "verdict" not in report  # the caller's dict is not modified
    for key in ("json", "markdown", "html"):
        assert paths[key].is_file() and paths[key].stat().st_size > 500
    assert sorted(p.name for p in paths["plots"]) == ["ce_per_codebook.png", "confusion_base.png",
                                                      "confusion_finetune.png", "fad_per_genre_classifier.png"]
    for png in paths["plots"]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = json.loads(paths["json"].read_text(encoding="utf-8"))
    expected = jsonable(before)
    assert expected["clap"]["base"]["mean"] is None
    assert isinstance(loaded["held_out_ce"]["finetune"]["n_tokens"], int)
    assert loaded.pop("verdict") == verdict(expected)
    assert loaded == expected
    assert not list(tmp_path.rglob(".*.part"))  # atomic writes leave nothing behind


def test_markdown_has_the_tables(tmp_path):
    write_report(planted(clips=write_clips(tmp_path)), tmp_path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert ("| model | codebook 1 | codebook 2 | codebook 3 | codebook 4 | mean | perplexity "
            "| tokens |") in md
    assert ("| fine-tune (my-jazz-run) | 3.92 | 4.02 | 4.22 | 4.32 | 4.12 | 61.6 "
            "| 4,936 tokens (1,234 per codebook) |") in md
    assert "| real held-out clips (ceiling) | 80 % |  | 20 |" in md
    assert "| classifier | fine-tune (my-jazz-run) | 1.20 | 0.90 - 1.60 | 16 | 34 |" in md
    assert "*clap-music: CLAP weights are not available offline.*" in md
    assert "| jazz | 3 | 20 |" in md and "| all | 5 | 34 |" in md
    assert "| base (facebook/musicgen-small) | 1 of 16 | 0 of 16 | 0 of 16 |" in md
    assert "![Confusion matrix, fine-tune](plots/confusion_finetune.png)" in md
    assert "## Verdict" in md and "- Generated on CPU." in md


@pytest.mark.parametrize("report", [
    {},
    {"models": {"finetune": {"name": "x"}}, "held_out_ce": {"note": "no held-out clips"},
     "genre_adherence": {"note": "no classifier beside the dataset"}, "fad": {"note": "no clips"},
     "clap": {"note": "no CLAP weights"}, "sanity": {"note": "no clips"}, "fad_per_genre": {"note": "-"},
     "classifier_ceiling": {"note": "no classifier"}},
    {"held_out_ce": {"finetune": {"per_codebook": [4.0], "mean": 4.0, "perplexity": 54.6, "n_tokens": 10}},
     "fad": {"vggish": {"note": "weights not found"}}, "sanity": {"memorisation": {"note": "no codes"}}},
], ids=["empty", "all-notes", "half-filled"])
def test_missing_sections_give_notes_not_errors(tmp_path, report):
    paths = write_report(report, tmp_path)
    md = paths["markdown"].read_text(encoding="utf-8")
    page = paths["html"].read_text(encoding="utf-8")
    assert paths["plots"] == [] and not (tmp_path / "plots").exists()
    assert md.count("Not measured") >= 3 and "No cross-entropy plot" in md
    assert "No prompt has clips of both models" in page
    text = json.loads(paths["json"].read_text(encoding="utf-8"))["verdict"]
    assert "Genre adherence was not measured" in text and "nothing could be compared" in text
    if "genre_adherence" in report:
        assert "no classifier beside the dataset" in text


def test_incomplete_plot_data_gives_a_note(tmp_path):
    report = planted()
    report["held_out_ce"]["base"]["per_codebook"] = [5.0, 5.1]  # 2 codebooks against 4
    plots, notes = make_plots(report, tmp_path)
    assert "plots/ce_per_codebook.png" not in [p for _, _, p in plots]
    assert ("fad_per_genre", "FAD per genre, classifier embeddings", "plots/fad_per_genre_classifier.png") in plots
    assert any(n.startswith("No plot 'Held-out cross-entropy per codebook'") for n in notes)


def test_validate_refuses_figures_without_their_sample_size_and_paths_outside(tmp_path):
    report = planted()
    del report["genre_adherence"]["base"]["n"]
    with pytest.raises(ValueError, match=r"'genre_adherence'.*'base' lacks its sample size n"):
        validate(report)
    report = planted()
    del report["fad"]["classifier"]["finetune"]["n_b"]
    with pytest.raises(ValueError, match="n_b"):
        write_report(report, tmp_path)
    report = planted()
    report["genre_adherence"]["base"]["confusion"] = [[1, 2]]
    with pytest.raises(ValueError, match="2 x 2"):
        validate(report)
    outside = planted(clips=[{"prompt": "p", "files": {"finetune": "../elsewhere.wav"}}])
    with pytest.raises(ValueError, match="not a path inside the report folder"):
        write_report(outside, tmp_path)


def test_token_counts_are_said_per_codebook_when_known():
    assert tokens({"n_tokens": 4930}) == "4,930 tokens"
    assert tokens({"n_tokens": 4930, "n_tokens_per_codebook": [1234, 1233, 1232, 1231]}) == \
        "4,930 tokens (1,231-1,234 per codebook)"


# --- escaping, blind order, relative paths ----------------------------------------------------

def test_user_text_is_escaped_in_html_and_markdown(tmp_path):
    report = planted(clips=write_clips(tmp_path))
    report["models"]["finetune"]["name"] = 'run"><script>window.injected = 3</script>'
    report["notes"].append(INJECTION)
    paths = write_report(report, tmp_path)
    page = paths["html"].read_text(encoding="utf-8")
    assert "<script>" not in page.replace("<script>\nfunction tally()", "")  # only the page's own script
    assert page.count("<script>") == 1 and "<img src=x" not in page
    assert "&lt;script&gt;window.injected = 1&lt;/script&gt;" in page
    assert '"><script>' not in page
    md = paths["markdown"].read_text(encoding="utf-8")
    assert "<script>" not in md and "<img" not in md


def test_blind_order_is_seeded_and_covers_both_orders():
    order = blind_order(24, seed=0)
    assert order == blind_order(24, seed=0)
    assert True in order and False in order
    assert blind_order(24, seed=1) != order


def test_page_rows_follow_the_blind_order_with_relative_paths(tmp_path):
    report = planted(clips=write_clips(tmp_path, per_genre=6))
    report["settings"]["blind_seed"] = 7
    page = write_report(report, tmp_path)["html"].read_text(encoding="utf-8")
    rows = re.findall(r'<tr data-finetune="([AB])">.*?<audio[^>]*src="([^"]+)".*?<audio[^>]*src="([^"]+)"', page)
    assert len(rows) == 12
    assert [letter == "A" for letter, _, _ in rows] == blind_order(12, seed=7)
    for letter, a, b in rows:
        assert (a if letter == "A" else b).startswith("clips/finetune/")
        assert (b if letter == "A" else a).startswith("clips/base/")
        assert "%20" in a  # the space in the file name is URL-encoded
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert links and all(not re.match(r"^(/|[a-z]+:)", link) for link in links)


def test_absolute_clip_paths_inside_the_folder_become_relative_and_the_folder_moves(tmp_path):
    first = tmp_path / "report"
    clips = write_clips(first, per_genre=1)
    for clip in clips:
        clip["files"] = {m: str(first / p) for m, p in clip["files"].items()}
    write_report(planted(clips=clips), first)
    loaded = json.loads((first / "report.json").read_text(encoding="utf-8"))
    assert loaded["clips"][0]["files"]["finetune"] == "clips/finetune/jazz 0.wav"
    moved = shutil.move(str(first), str(tmp_path / "moved"))
    page = (Path(moved) / "report.html").read_text(encoding="utf-8")
    from urllib.parse import unquote
    for link in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert (Path(moved) / unquote(link)).is_file(), link


def test_clips_missing_a_file_are_left_out_of_the_blind_test_with_a_note(tmp_path):
    clips = write_clips(tmp_path, per_genre=1)
    (tmp_path / clips[1]["files"]["base"]).unlink()
    page = write_report(planted(clips=clips), tmp_path)["html"].read_text(encoding="utf-8")
    assert page.count("<tr data-finetune=") == 1
    assert "Clip 2 (" in page and "no base file in the report folder" in page


# --- the verdict on planted reports --------------------------------------------------------------

def test_verdict_clearly_better():
    text = verdict(planted())
    assert text.startswith("The fine-tune predicts your held-out music better than the base "
                           "(cross-entropy 4.12 vs 5.87 on 4,936 tokens (1,234 per codebook)).")
    assert "heard as the genre asked for 62 % of the time (base 25 %, n=16 clips each; " \
           "the classifier itself gets 80 % on real clips, n=20)" in text
    assert "the fine-tune's clips are clearly closer to your music" in text
    assert "Overall: the fine-tune is clearly better on 3 of 4 measures and clearly worse on none." in text
    assert "Warning" not in text


def test_verdict_clearly_worse():
    text = verdict(planted(ce=(6.3, 5.87), acc=(0.0625, 0.625), fads=((5.0, 4.2, 6.1), (3.2, 2.5, 4.0))))
    assert "predicts your held-out music worse than the base (cross-entropy 6.30 vs 5.87" in text
    assert "follows the genre less often than the base" in text
    assert "further from your music than the base's" in text
    assert "Overall: the fine-tune is clearly worse on 3 of 4 measures and clearly better on none." in text


def test_verdict_overlapping_intervals_and_small_differences_are_not_claimed():
    text = verdict(planted(ce=(5.85, 5.87), acc=(0.375, 0.25), fads=((2.9, 2.0, 3.9), (3.2, 2.5, 4.0))))
    assert "about as well as the base (cross-entropy 5.85 vs 5.87" in text
    assert "38 % of the time (base 25 %" in text and "not a clear difference with this many clips" in text
    assert "the intervals overlap: not a clear difference with this few clips" in text
    assert "Overall: no clear difference from the base on any of 4 measures." in text


def test_verdict_without_a_classifier_says_so():
    report = planted()
    report["genre_adherence"] = {"note": "no genre classifier found beside the dataset; pass --classifier"}
    report["classifier_ceiling"] = {"note": "no classifier"}
    text = verdict(report)
    assert ("Genre adherence was not measured (no genre classifier found beside the dataset; "
            "pass --classifier).") in text
    assert "clearly better on 2 of 3 measures" in text


def test_verdict_with_a_weak_classifier_makes_no_genre_claim():
    text = verdict(planted(ceiling=0.55))
    assert "the classifier itself gets 55 % on real clips, n=20), so the classifier is too unreliable" in text
    assert "clearly better on 2 of 3 measures" in text


def test_verdict_warns_first_about_memorisation_and_failed_clips():
    report = planted()
    report["sanity"]["memorisation"]["finetune"].update(flagged=5, max_overlap=0.97)
    report["sanity"]["finetune"]["silent"] = 4
    report["sanity"]["finetune"]["repetitive"] = 1  # 1 of 16 is below the warning share
    text = verdict(report)
    assert text.startswith("Warning: 4 of 16 fine-tune clips are mostly silence; base: 1 of 16. "
                           "Warning: 5 of 16 fine-tune clips reproduce training audio almost verbatim "
                           "(token overlap up to 97 %; threshold 50 %): the model is memorising")
    assert "repeating loop" not in text
    report["sanity"]["memorisation"]["base"] = {"flagged": 2, "n": 16, "max_overlap": 0.6, "threshold": 0.5}
    assert "threshold 50 %; base: 2 of 16, so some of this may be common patterns" in verdict(report)
    assert "Listen to the flagged clips before trusting the figures." in text


def test_verdict_without_intervals_makes_no_fad_claim():
    report = planted()
    for figure in report["fad"]["classifier"].values():
        del figure["low"], figure["high"]
    assert "(no bootstrap interval, so no claim either way)" in verdict(report)


# --- the page in a real browser ----------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="headless browser check needs Debian's chromium and chromium-driver")
def test_report_page_in_headless_chromium(tmp_path):
    pytest.importorskip("selenium", reason="the browser check needs selenium (requirements-dev.txt)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from test_app_browser import chrome

    report_dir = tmp_path / "my report"  # a space in the folder too
    write_report(planted(clips=write_clips(report_dir)), report_dir)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    driver = None
    try:
        driver = chrome(profile)
        driver.get((report_dir / "report.html").as_uri())
        audio_state = ("return Array.from(document.querySelectorAll('audio'))"
                       ".map(a => [a.readyState, a.duration, a.error && a.error.code])")
        WebDriverWait(driver, 30).until(
            lambda d: all(r >= 1 and dur > 0 for r, dur, _ in d.execute_script(audio_state)))
        states = driver.execute_script(audio_state)
        assert len(states) == 12 and all(err is None and dur == pytest.approx(0.5, abs=0.05)
                                         for _, dur, err in states)
        images = driver.execute_script("return Array.from(document.images).map(i => i.naturalWidth)")
        assert len(images) == 4 and all(w > 100 for w in images)
        assert driver.execute_script("return window.injected === undefined")
        answers = driver.find_elements(By.CSS_SELECTOR, "#blind td .answer")
        assert len(answers) == 6 and not any(a.is_displayed() for a in answers)
        tally = driver.find_element(By.ID, "tally")
        assert not tally.is_displayed()
        rows = driver.find_elements(By.CSS_SELECTOR, "tr[data-finetune]")
        for row in rows[:4]:  # pick A in four rows
            row.find_element(By.CSS_SELECTOR, "input[value=A]").click()
        driver.find_element(By.ID, "reveal").click()
        assert all(a.is_displayed() for a in answers)
        expected = sum(r.get_attribute("data-finetune") == "A" for r in rows[:4])
        assert tally.is_displayed()
        assert tally.text == f"You picked the fine-tune in {expected} of the 4 rows you scored (6 rows)."
        first = rows[0].find_element(By.CSS_SELECTOR, ".answer").text
        assert first.startswith("A = fine-tune" if rows[0].get_attribute("data-finetune") == "A" else "A = base")
        shot = tmp_path / "evaluation-report.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
