"""The studio's Data tab: prepare a library under the data root as a background job, its report and
statistics; the same through the page's API (gradio_client); no path outside the data root.
Also the one browser test of the Data, Captions and Tag tabs (prepare -> edit a caption -> tag)."""
import os
import sys
from pathlib import Path

import pytest
from studio_helpers import make_library, wait_for

from musicgen_trainer.app import jobs
from musicgen_trainer.app import studio_data as sd
from musicgen_trainer.app.paths import OutsideRootError


@pytest.fixture
def root(tmp_path):
    make_library(tmp_path / "data" / "lib")
    (tmp_path / "outside").mkdir()
    make_library(tmp_path / "outside" / "theirs", tracks_per_genre=1, unknown=0)
    return tmp_path / "data"


def test_libraries_are_the_folders_that_are_not_prepared_datasets(root):
    (root / "old-prepared").mkdir()
    (root / "old-prepared" / "manifest.jsonl").write_text("")
    (root / "empty").mkdir()
    assert sd.library_choices(root) == ["empty", "lib"]
    assert sd.dataset_choices(root) == ["old-prepared"]
    assert sd.default_output("lib") == "lib-prepared"
    with pytest.raises(ValueError, match="no data root"):
        sd.library_choices(None)


def test_the_command_line_gives_prepare_exactly_the_pages_options(root):
    """The flags built from the page's values parse back (with prepare's own parser) to the same options."""
    from dataset_tools.__main__ import _parser
    from dataset_tools.cli import dataclass_from_args
    from dataset_tools.options import PrepareOptions
    values = {"segment_seconds": 10.0, "overlap_seconds": 2.5, "channels": 2, "trim_db": None, "loudness_lufs": -14.0,
              "analyze": False, "caption_template": "{genre} music, {title}", "valid_fraction": 0.2, "seed": 3,
              "remove_vocals": False, "tagger": "musicnn"}
    command = sd.prepare_command(root, "lib", "lib-prepared", values)
    assert command.argv[:4] == [sys.executable, "-m", "dataset_tools", "prepare"]
    parsed = dataclass_from_args(PrepareOptions, _parser().parse_args(command.argv[3:]))
    assert parsed == PrepareOptions(**values, progress=True)
    assert command.src == (root / "lib").resolve() and command.out == (root / "lib-prepared").resolve()


@pytest.mark.parametrize("library, output, message", [
    ("lib", "lib/inside", "cannot go inside the library"),
    ("lib", "lib", "cannot go inside the library"),
    ("missing", "x", "does not exist"),
    ("", "x", "choose a library"),
    ("lib", "", "give the dataset a folder name"),
])
def test_bad_library_or_dataset_folders_are_refused_with_one_line(root, library, output, message):
    with pytest.raises(ValueError, match=message) as err:
        sd.prepare_command(root, library, output, {})
    assert "\n" not in str(err.value)


def test_bad_option_values_are_refused_by_the_dataclass_before_anything_starts(root):
    with pytest.raises(ValueError, match="segment length must be at least 1 second"):
        sd.start_prepare(root, "lib", "lib-prepared", {"segment_seconds": 0.5})
    with pytest.raises(ValueError, match="not an option of the page: soundfont"):
        sd.start_prepare(root, "lib", "lib-prepared", {"soundfont": "/etc/passwd"})
    with pytest.raises(ValueError, match="one line"):
        sd.start_prepare(root, "lib", "lib-prepared", {"caption_template": "{genre}\nrm -rf"})
    assert not (root / "lib-prepared").exists()


def test_an_optional_number_left_empty_on_the_page_is_off_and_text_is_checked(root):
    """The page sends optional numbers as text (a number box cannot be empty: it sent 0, which
    prepare refused as a loudness target)."""
    options = sd.prepare_options({"loudness_lufs": "", "trim_db": " ", "segment_seconds": "12"})
    assert options.loudness_lufs is None and options.trim_db is None and options.segment_seconds == 12.0
    assert "--no-trim" in sd.prepare_command(root, "lib", "x", {"trim_db": ""}).argv
    assert sd.prepare_options({"loudness_lufs": "-14"}).loudness_lufs == -14.0
    with pytest.raises(ValueError, match="Loudness lufs must be a number"):
        sd.prepare_options({"loudness_lufs": "loud"})
    with pytest.raises(ValueError, match="Channels must be a whole number"):
        sd.prepare_options({"channels": 1.5})
    with pytest.raises(ValueError, match="Segment seconds needs a value"):
        sd.prepare_options({"segment_seconds": ""})


@pytest.mark.parametrize("library, output", [
    ("../outside/theirs", "x"), ("/etc", "x"), (str(Path("/tmp")), "x"), ("lib", "../outside/mine"),
    ("lib", "/tmp/mine"), ("link-out", "x"), ("lib", "link-out/mine"), ("lib", "~/mine"),
])
def test_paths_outside_the_data_root_are_refused_and_nothing_is_written(root, library, output):
    os.symlink(root.parent / "outside", root / "link-out")
    before = sorted(p.name for p in (root.parent / "outside").iterdir())
    with pytest.raises(OutsideRootError):
        sd.start_prepare(root, library, output, {})
    assert sorted(p.name for p in (root.parent / "outside").iterdir()) == before
    assert sd.library_choices(root) == ["lib"]  # the link out is never listed


def test_prepare_runs_as_a_job_with_progress_and_its_report_and_chart_are_read_back(root):
    info = sd.start_prepare(root, "lib", "lib-prepared", {"analyze": False})
    assert info.kind == "prepare" and info.folder == str((root / "lib-prepared").resolve())
    done = jobs.wait_job(root / "lib-prepared", timeout=120)
    view = sd.prepare_view(root, "lib-prepared")
    assert done.state == "done" and view.state == "done", view.log
    assert (view.done, view.total, view.what) == (9, 9, "prepare")  # from prepare's own progress bar
    assert str(root) not in view.log and str(root.resolve()) not in view.log  # the page never sees server paths
    results = sd.prepare_results(root, "lib-prepared")
    assert "**8 tracks -> 8 segments" in results.summary and "9 converted" not in results.summary
    assert "**Skipped: 1**" in results.summary and "`beats/broken.wav`" in results.summary  # with its reason
    assert results.genres == [["beats", 3, 3, 2, 1, 0.2], ["drone", 3, 3, 2, 1, 0.2], ["(unlabelled)", 2, 2, 1, 1, 0.1]]
    assert results.chart.read_bytes()[:4] == b"\x89PNG"
    assert sd.dataset_choices(root) == ["lib-prepared"] and sd.library_choices(root) == ["lib"]
    assert sys.executable not in view.log and "$ python -m dataset_tools prepare" in view.log  # one public log


def test_the_page_can_ask_for_tags_and_a_tagger_without_weights_fails_the_job_in_one_line(root, tmp_path, monkeypatch):
    """The tab offers prepare's --tagger (its weights are the tagger's defaults, never a server path
    from the page): without musicnn's converted weights the job stops before converting anything,
    its log says how to fetch them, and no dataset is left half made."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(ValueError, match="tagger"):
        sd.start_prepare(root, "lib", "lib-prepared", {"tagger": "bogus"})
    sd.start_prepare(root, "lib", "lib-prepared", {"tagger": "musicnn", "analyze": False})
    done = jobs.wait_job(root / "lib-prepared", timeout=120)
    view = sd.prepare_view(root, "lib-prepared")
    assert done.state == "failed" and "fetch-tagger musicnn" in view.log, view.log
    assert not (root / "lib-prepared" / "manifest.jsonl").exists() and sd.dataset_choices(root) == []


def test_the_chart_is_drawn_once_per_prepare_and_never_through_a_link(root, monkeypatch, tmp_path):
    """/prepare_status polls prepare_results: it draws the chart once per finished prepare (pyplot is
    not thread-safe), and a chart file that is a link out is replaced, never written through."""
    import dataset_tools.stats as stats
    sd.start_prepare(root, "lib", "lib-prepared", {"analyze": False})
    assert jobs.wait_job(root / "lib-prepared", timeout=120).state == "done"
    chart = sd.prepare_results(root, "lib-prepared").chart
    drawn = []
    real_draw = stats.draw_chart
    monkeypatch.setattr(stats, "draw_chart", lambda *a: drawn.append(1) or real_draw(*a))
    assert sd.prepare_results(root, "lib-prepared").chart == chart and drawn == []  # the next poll: cached
    victim = tmp_path / "outside" / "victim.txt"
    victim.write_text("keep me")
    chart.unlink()
    os.symlink(victim, chart)
    sd._CHARTS.clear()  # a new prepare
    again = sd.prepare_results(root, "lib-prepared").chart
    assert drawn == [1] and victim.read_text() == "keep me"
    assert not again.is_symlink() and again.read_bytes()[:4] == b"\x89PNG"


def test_a_prepare_report_that_is_a_device_or_fifo_is_no_report(root):
    out = root / "x-prepared"
    out.mkdir()
    os.mkfifo(out / "prepare_report.json")
    with pytest.raises(ValueError, match="no prepare report"):  # at once: the FIFO is not opened for reading
        sd.prepare_results(root, "x-prepared")
    (out / "prepare_report.json").unlink()
    os.symlink("/dev/zero", out / "prepare_report.json")
    with pytest.raises(ValueError, match="no prepare report"):
        sd.prepare_results(root, "x-prepared")


def test_an_option_value_starting_with_a_dash_stays_the_options_value(root):
    from dataset_tools.__main__ import _parser
    argv = sd.prepare_command(root, "lib", "lib-prepared", {"caption_template": "-{genre}"}).argv
    assert _parser().parse_args(argv[3:]).caption_template == "-{genre}"


def test_a_reloaded_page_finds_the_running_prepare_and_a_second_start_is_refused(root):
    out = root / "lib-prepared"
    jobs.start_job("prepare", [sys.executable, "-c", "import time; print('sta' + 'rted', flush=True); time.sleep(60)"],
                   out)
    try:
        assert sd.running_prepare(root) == "lib-prepared"
        assert sd.prepare_view(root, "lib-prepared").running
        with pytest.raises(jobs.JobBusyError, match="already running"):
            sd.start_prepare(root, "lib", "lib-prepared", {})
        assert wait_for(lambda: "\nstarted" in jobs.read_log(out), timeout=30)  # the command runs: Stop reaches it
        assert sd.stop_prepare(root, "lib-prepared")
        assert jobs.wait_job(out, timeout=30).state == "stopped"
        assert sd.running_prepare(root) is None
    finally:
        jobs.stop_job(out, force=True)


@pytest.fixture
def served(root, tmp_path):
    from gradio_client import Client

    from musicgen_trainer.app.page import App, serve_in_background
    app = App(checkpoints=str(tmp_path / "checkpoints"), out=str(tmp_path / "out"), pretrained=[],
              midi_default=False, data_root=str(root))
    demo, url = serve_in_background(app)
    try:
        yield app, Client(url, verbose=False)
    finally:
        demo.close()


def _options(**changes):
    """The Prepare options as the page sends them (an optional number is text: empty = off)."""
    from dataset_tools.options import PrepareOptions
    defaults = PrepareOptions()
    values = [changes.get(name, getattr(defaults, name)) for name in sd.MAIN_PREPARE_OPTIONS]
    return ["" if v is None else f"{v:g}" if name in ("trim_db", "loudness_lufs") else v
            for name, v in zip(sd.MAIN_PREPARE_OPTIONS, values)]


def test_the_data_tabs_api_lists_prepares_and_reports(served, root):
    _, client = served
    assert client.predict(api_name="/data_folders")["choices"] == [["lib", "lib"]]
    progress, *_ = client.predict("lib", "lib-prepared", *_options(analyze=False), api_name="/prepare_start")
    assert "prepare: running" in progress
    status = wait_for(lambda: (lambda s: s if "prepare: done" in s[0] else None)(
        client.predict("lib-prepared", api_name="/prepare_status")), timeout=120, poll=0.5)
    assert status, client.predict("lib-prepared", api_name="/prepare_status")
    progress, log, report, genres, chart, timer = status
    assert 'max="9"' in progress and "Skipped: 1" in report and timer["active"] is False
    assert [row[0] for row in genres["data"]] == ["beats", "drone", "(unlabelled)"]
    assert chart is not None and str(root) not in log + report


@pytest.mark.parametrize("library, output", [("../outside/theirs", "x"), ("lib", "../outside/mine"),
                                             ("lib", "/tmp/studio-escape"), ("link-out", "x")])
def test_the_data_tabs_api_refuses_paths_outside_the_root_with_one_line(served, root, library, output):
    from gradio_client.exceptions import AppError
    _, client = served
    os.symlink(root.parent / "outside", root / "link-out")
    with pytest.raises(AppError) as err:
        client.predict(library, output, *_options(), api_name="/prepare_start")
    assert "\n" not in str(err.value) and str(root.parent) not in str(err.value)
    assert not (root.parent / "outside" / "mine").exists() and not Path("/tmp/studio-escape").exists()
    with pytest.raises(AppError):
        client.predict("../outside/theirs", api_name="/prepare_status")


# --- the browser test of the Data, Captions and Tag tabs -------------------------------------------

def _shot(driver, tmp_path, name):
    shot = tmp_path / name
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    folder = os.environ.get("MUSICGEN_STUDIO_SCREENSHOTS")
    if folder:
        Path(folder, name).write_bytes(shot.read_bytes())


def _pick(driver, elem_id, value):
    """Choose ``value`` in the Gradio dropdown ``#elem_id``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from selenium.common.exceptions import ElementClickInterceptedException
    box = WebDriverWait(driver, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, f"#{elem_id} input"))
    # A pending event's spinner may cover the box for a moment: click once it is gone.
    WebDriverWait(driver, 60, ignored_exceptions=(ElementClickInterceptedException,)).until(
        lambda d: box.click() or True)
    option = WebDriverWait(driver, 30).until(
        lambda d: [o for o in d.find_elements(By.CSS_SELECTOR, "[role=option]") if o.text.strip() == value])
    option[0].click()


def test_browser_prepare_then_edit_a_caption_then_tag(root, tmp_path):
    """In headless Chromium: prepare the library, edit one caption, train the classifier, accept one
    proposal for unknown/ and apply it. MUSICGEN_STUDIO_SCREENSHOTS=docs/images keeps the screenshots."""
    from test_app_browser import CHROMEDRIVER, CHROMIUM, chrome
    from test_app_browser import open_tab as _open_tab
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("needs Debian's chromium and chromium-driver (see test_app_browser.py)")
    pytest.importorskip("selenium", reason="the browser check needs selenium (requirements-dev.txt)")
    import shutil
    import tempfile

    from selenium.webdriver.common.by import By
    make_library(root / "lib", tracks_per_genre=4)  # the classifier's test split needs 2 recordings of each genre
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from musicgen_trainer.app.page import App, serve_in_background
    from musicgen_trainer.data import find_clips
    checkpoints = tmp_path / "checkpoints"
    app = App(checkpoints=str(checkpoints), out=str(tmp_path / "out"), pretrained=[], midi_default=False,
              data_root=str(root))
    demo, url = serve_in_background(app)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    driver = None
    try:
        driver = chrome(profile)
        driver.get(url)
        wait = WebDriverWait(driver, 60)
        # Data: the library, its default dataset name, analysis off (faster), Prepare; the report appears.
        _pick(driver, "data-library", "lib")
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#data-output textarea, #data-output input")
                   .get_attribute("value") == "lib-prepared")
        driver.find_element(By.XPATH, "//button[contains(., 'Prepare options')]").click()
        analyze = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#opt-analyze input"))
        if analyze.is_selected():
            analyze.click()
        driver.find_element(By.CSS_SELECTOR, "#data-start").click()
        WebDriverWait(driver, 180).until(lambda d: "10 tracks -> 10 segments" in d.find_element(
            By.CSS_SELECTOR, "#data-report").text)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#data-chart img"))
        assert "Skipped: 1" in driver.find_element(By.CSS_SELECTOR, "#data-report").text
        assert "done" in driver.find_element(By.CSS_SELECTOR, "#data-progress").text
        driver.find_element(By.XPATH, "//button[contains(., 'Prepare options')]").click()  # closed again
        driver.execute_script("window.scrollTo(0, 0)")
        _shot(driver, tmp_path, "studio-data.png")

        # Captions: pick the dataset, click the first row, edit its caption, save.
        _open_tab(driver, "Captions")
        driver.find_element(By.CSS_SELECTOR, "#captions-refresh").click()
        _pick(driver, "captions-dataset", "lib-prepared")
        cell = wait.until(lambda d: d.find_elements(
            By.XPATH, "//*[@id='captions-table']//*[normalize-space(text())='beats/beats 0.wav']"))
        cell[0].click()
        text = wait.until(lambda d: (lambda t: t if t.get_attribute("value") else None)(
            d.find_element(By.CSS_SELECTOR, "#captions-text textarea")))
        assert text.get_attribute("value") == "Beats music, beats 0"
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#captions-audio audio, #captions-audio .waveform-container, #captions-audio button"))
        text.send_keys(Keys.CONTROL, "a")
        text.send_keys("Beats music, beats 0, crisp hand claps")
        driver.find_element(By.CSS_SELECTOR, "#captions-save").click()
        wait.until(lambda d: "Saved the caption" in d.find_element(By.CSS_SELECTOR, "#captions-note").text)
        clip = next(c for c in find_clips(root / "lib-prepared") if c.path.name == "beats 0.wav")
        assert clip.caption == "Beats music, beats 0, crisp hand claps"  # what the trainer reads now
        _shot(driver, tmp_path, "studio-captions.png")

        # Tag: train the classifier (few epochs), propose genres for unknown/, accept one, apply.
        _open_tab(driver, "Tag")
        driver.find_element(By.CSS_SELECTOR, "#tag-refresh").click()
        _pick(driver, "tag-dataset", "lib-prepared")
        driver.find_element(By.XPATH, "//button[contains(., 'Classifier options')]").click()
        for name, value in (("epochs", "3"), ("val-fraction", "0.34"), ("test-fraction", "0.34")):
            box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f"#opt-{name} input"))
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(value, Keys.TAB)
        driver.find_element(By.CSS_SELECTOR, "#tag-train").click()
        WebDriverWait(driver, 300).until(lambda d: "track accuracy" in d.find_element(
            By.CSS_SELECTOR, "#tag-report").text)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#tag-matrix img"))
        slider = driver.find_element(By.CSS_SELECTOR, "#tag-min-confidence input[type=number]")
        slider.send_keys(Keys.CONTROL, "a")
        slider.send_keys("0", Keys.TAB)
        driver.find_element(By.CSS_SELECTOR, "#tag-propose").click()
        boxes = WebDriverWait(driver, 300).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "#tag-accept input[type=checkbox]")) == 2
            and d.find_elements(By.CSS_SELECTOR, "#tag-accept input[type=checkbox]"))
        labels = [b.find_element(By.XPATH, "./ancestor::label").text for b in boxes]
        assert all(b.is_selected() for b in boxes), labels  # minimum confidence 0: every proposal ticked
        boxes[1].find_element(By.XPATH, "./ancestor::label").click()  # reject the second
        WebDriverWait(driver, 30).until(lambda d: not d.find_elements(
            By.CSS_SELECTOR, "#tag-accept input[type=checkbox]")[1].is_selected())
        _shot(driver, tmp_path, "studio-tag.png")
        driver.find_element(By.CSS_SELECTOR, "#tag-apply").click()
        wait.until(lambda d: "1 track(s) accepted: 1 file(s) moved" in d.find_element(By.CSS_SELECTOR, "#tag-note").text)
        accepted, rejected = (label.split(" -> ")[0].split("/")[-1] for label in labels)
        assert not (root / "lib-prepared" / "unknown" / accepted).exists()
        assert (root / "lib-prepared" / "unknown" / rejected).exists()
        assert len(driver.find_elements(By.CSS_SELECTOR, "#tag-accept input[type=checkbox]")) == 1
        assert str(root) not in driver.page_source and str(checkpoints) not in driver.page_source
    except Exception:
        if driver is not None:  # what the page showed, for the failure's report
            failure = Path(os.environ.get("MUSICGEN_STUDIO_SCREENSHOTS") or tmp_path, "studio-failure.png")
            driver.save_screenshot(str(failure))
            print(f"screenshot of the failure: {failure}")
        raise
    finally:
        if driver is not None:
            driver.quit()
        demo.close()
        shutil.rmtree(profile, ignore_errors=True)
        for folder in (root / "lib-prepared", checkpoints / "genre-lib-prepared"):
            jobs.stop_job(folder, force=True)
