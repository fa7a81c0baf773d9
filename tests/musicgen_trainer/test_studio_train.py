"""The studio's Train tab: its backend (lists, confinement, the command line, the run's view,
the memory estimate without weights) and its API through gradio_client (start, a second start
refused while one runs, status with the curve, stop, resume)."""
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicgen_trainer.app import jobs, studio_train as st
from musicgen_trainer.metrics_log import read_metrics


def _prepared(folder: Path, n: int = 4) -> Path:
    """A prepared dataset as dataset_tools writes one: clips + manifest.jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(32000) / 32000
    lines = []
    for i in range(n):
        genre = ("jazz", "rock")[i % 2]
        sf.write(folder / f"clip{i}.wav", (0.3 * np.sin(2 * np.pi * 220 * (i + 1) * t)).astype(np.float32), 32000)
        lines.append(json.dumps({"path": f"clip{i}.wav", "description": f"{genre} take {i}", "genre": genre,
                                 "split": "valid" if i == n - 1 else "train"}))
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def studio(tmp_path):
    from musicgen_trainer.app.page import App
    data = tmp_path / "datasets"
    _prepared(data / "mine-prepared")
    (data / "raw-library" / "jazz").mkdir(parents=True)  # not prepared: not listed
    (tmp_path / "outside").mkdir()
    _prepared(tmp_path / "outside" / "elsewhere")
    os.symlink(tmp_path / "outside" / "elsewhere", data / "link-out")
    (tmp_path / "checkpoints").mkdir()
    os.symlink(tmp_path / "outside", tmp_path / "checkpoints" / "run-link-out")
    return App(checkpoints=str(tmp_path / "checkpoints"), out=str(tmp_path / "out"), pretrained=["facebook/musicgen-small"],
               data_root=str(data))


def test_lists_prepared_datasets_and_base_models(studio):
    assert st.prepared_datasets(studio.data_root) == ["mine-prepared"]  # not the library, not the link out
    keys = [key for _, key in st.base_model_choices(studio)]
    assert {"tiny", "tiny-stereo", "tiny-melody", "facebook/musicgen-small"} <= set(keys)


@pytest.mark.parametrize("dataset", ["..", "../outside/elsewhere", "/etc", "link-out", "raw-library", "",
                                     "mine-prepared/../../outside/elsewhere"])
def test_datasets_outside_the_data_root_or_not_prepared_are_refused(studio, dataset, tmp_path):
    with pytest.raises(ValueError) as err:
        st.start_training(studio, "tiny", dataset, "run1", {})
    assert "\n" not in str(err.value) and str(tmp_path) not in str(err.value)
    assert not (tmp_path / "checkpoints" / "run1").exists()


@pytest.mark.parametrize("name", ["..", "../escape", "/tmp/escape", "a/b", "run-link-out", "~x", ".hidden", "x" * 65])
def test_run_names_are_one_folder_inside_checkpoints(studio, name, tmp_path):
    with pytest.raises(ValueError) as err:
        st.start_training(studio, "tiny", "mine-prepared", name, {})
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["elsewhere"]  # nothing written out there
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize("model", ["/etc/passwd", "../x", "export:../../outside", "facebook/musicgen-large"])
def test_only_listed_base_models(studio, model):
    with pytest.raises(ValueError, match="choose a base model from the list"):
        st.build_config(studio, model, "mine-prepared", "run1", {})


def test_the_command_line_is_train_py_with_the_page_options(studio, tmp_path):
    config = st.build_config(studio, "tiny", "mine-prepared", "run1",
                             {"steps": 7, "lr": 3e-4, "batch_size": 2, "segment_seconds": 1, "lora": 0, "gpu_memory": 0,
                              "sample_every": 3, "eval_every": 5})
    argv = st.train_argv(config)
    assert argv[1:3] == ["-m", "musicgen_trainer.cli_train"]
    from musicgen_trainer.cli_train import build_parser, config_from_args
    again = config_from_args(build_parser().parse_args(argv[3:]))  # the command means the same config
    assert again == config and again.lora is None and again.gpu_memory is None
    assert again.out == str((tmp_path / "checkpoints" / "run1").resolve())


def test_the_run_view_reads_curve_eta_and_samples(studio, tmp_path):
    out = tmp_path / "checkpoints" / "r"
    (out / "samples" / "step_00000010").mkdir(parents=True)
    (out / "samples" / "step_00000020").mkdir()  # being written: no clip yet
    sf.write(out / "samples" / "step_00000010" / "00_jazz.wav", np.zeros(3200, np.float32), 32000)
    (out / "config.json").write_text(json.dumps({"total_steps": 100}))
    rows = [{"step": s, "loss": 5.0 - s / 10, "lr": 1e-5, "tokens_per_s": 400.0, "elapsed": 2.0 * s} for s in range(1, 21)]
    rows[9]["valid_loss"] = 4.5
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    view = st.view_run(studio, "r")
    assert view.step == 20 and view.total == 100 and view.tokens_per_s == pytest.approx(400.0)
    assert view.eta_s == pytest.approx(80 * 2.0)
    assert view.sample_step == 10 and [p.name for p in view.samples] == ["00_jazz.wav"]
    points = st.curve(view.rows)
    assert [p["step"] for p in points if p["series"] == "validation"] == [10]
    assert len([p for p in points if p["series"] == "training"]) == 20
    assert "step 20 of 100" in view.summary() and "validation loss 4.500" in view.summary()


def test_the_memory_estimate_loads_no_released_weights(studio, monkeypatch):
    import musicgen_trainer.models as models

    def no_loading(name, *args, **kwargs):
        raise AssertionError(f"loaded {name}")
    monkeypatch.setattr(models, "load_model", no_loading)
    text = st.memory_estimate(studio, "facebook/musicgen-small", {"batch_size": 4, "segment_seconds": 10})
    assert text.startswith("Estimated peak memory:") and "GiB" in text
    planned = st.memory_estimate(studio, "facebook/musicgen-small", {"batch_size": 8, "segment_seconds": 30,
                                                                     "gpu_memory": 12})
    assert planned.startswith("Memory plan for 12 GB:") and "--batch-size 1, --grad-accum 8" in planned
    longer = st.memory_estimate(studio, "facebook/musicgen-small", {"batch_size": 4, "segment_seconds": 30})

    def gib(t):
        return float(t.split("memory: ")[1].split(" GiB")[0])
    assert gib(longer) > gib(text)  # the window counts


@pytest.fixture
def served(studio):
    from gradio_client import Client

    from musicgen_trainer.app.page import serve_in_background
    demo, url = serve_in_background(studio)
    try:
        yield studio, Client(url, verbose=False)
    finally:
        demo.close()


OPTIONS = dict(steps=2, lr=1e-3, batch_size=2, segment_seconds=1, lora=0, gpu_memory=0, sample_every=0, eval_every=2)


def test_api_start_status_busy_and_done(served, tmp_path):
    from gradio_client.exceptions import AppError
    app, client = served
    out = tmp_path / "checkpoints" / "api-run"
    options = list(OPTIONS.values())
    with pytest.raises(AppError, match="not in the local cache"):  # offline (HF_HUB_OFFLINE=1), not downloaded
        client.predict("facebook/musicgen-small", "mine-prepared", "released", *options, api_name="/train_start")
    assert not (tmp_path / "checkpoints" / "released").exists()
    client.predict("tiny", "mine-prepared", "api-run", *options, api_name="/train_start")
    try:
        assert jobs.job_status(out).running
        with pytest.raises(AppError, match="already running"):  # a second browser, a double click
            client.predict("tiny", "mine-prepared", "api-run", *options, api_name="/train_start")
        with pytest.raises(AppError, match="outside|one folder name"):
            client.predict("tiny", "mine-prepared", "../x", *options, api_name="/train_start")
        info = jobs.wait_job(out, timeout=120)
    finally:
        jobs.stop_job(out, force=True)
    assert info.state == "done", jobs.read_log(out)[-2000:]
    summary, plot, sample, sample_note, log = client.predict("api-run", api_name="/train_status")
    assert "**done**" in summary and "step 2 of 2" in summary
    assert sorted((p[0], p[2]) for p in plot["data"]) == [(1, "training"), (2, "training"), (2, "validation")]
    assert str(tmp_path) not in log and "api-run" in log
    assert (out / "export" / "state_dict.bin").is_file() and (out / jobs.LOG_FILE).is_file()
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]
    with pytest.raises(AppError, match="exists already"):
        client.predict("tiny", "mine-prepared", "api-run", *options, api_name="/train_start")
    client.predict("api-run", api_name="/train_stop")  # nothing runs: a note, no error
    with pytest.raises(AppError, match="nothing to resume"):
        client.predict("never-started", 10, api_name="/train_resume")


def test_browser_train_stop_reattach_resume_then_compare(studio, tmp_path):
    """The page in headless Chromium: Start a tiny run, see its curve and a sample, reload and find
    it reattached, Stop, Resume to a few more steps until done, then Compare base vs the export
    blind and Reveal. MUSICGEN_STUDIO_SCREENSHOTS=docs/images keeps studio-train.png and studio-compare.png."""
    from test_app_browser import CHROMEDRIVER, CHROMIUM, chrome, open_tab
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("needs Debian's chromium and chromium-driver (see test_app_browser.py)")
    pytest.importorskip("selenium", reason="the browser check needs selenium (requirements-dev.txt)")
    import re
    import shutil
    import tempfile

    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from musicgen_trainer.app.page import serve_in_background
    studio.rescan_interval = 0.0  # the export made below is listed at the next page load
    demo, url = serve_in_background(studio)
    out = tmp_path / "checkpoints" / "browser-run"
    shots = os.environ.get("MUSICGEN_STUDIO_SCREENSHOTS")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    driver = None

    def status(d):
        return d.find_element(By.CSS_SELECTOR, "#train-status").text

    def set_value(selector, value):
        box = driver.find_element(By.CSS_SELECTOR, selector)
        box.send_keys(Keys.CONTROL + "a")
        box.send_keys(str(value) + Keys.TAB)

    def pick(elem_id, label):
        def attempt(d):  # the lists are refreshed on load: an option may be redrawn under the click
            try:
                d.find_element(By.CSS_SELECTOR, f"#{elem_id} input").click()
                options = [o for o in d.find_elements(By.CSS_SELECTOR, "[role=option]")
                           if o.get_attribute("aria-label") == label]
                if options:
                    options[0].click()
                return d.find_element(By.CSS_SELECTOR, f"#{elem_id} input").get_attribute("value") == label
            except StaleElementReferenceException:
                return False
        WebDriverWait(driver, 60, poll_frequency=1).until(attempt)

    try:
        driver = chrome(profile)
        driver.set_window_size(1400, 1500)  # the whole tab in the screenshots
        driver.get(url)
        open_tab(driver, "Train")
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: "Estimated peak memory" in d.find_element(By.CSS_SELECTOR, "#train-estimate").text)
        set_value("#train-run input", "browser-run")
        for name, value in (("steps", 2000), ("batch-size", 2), ("segment-seconds", 1), ("sample-every", 3),
                            ("eval-every", 3), ("lr", 0.001)):
            set_value(f"#train-{name} input", value)
        driver.find_element(By.CSS_SELECTOR, "#train-start").click()
        wait.until(lambda d: "**running**" in status(d) or "running" in status(d))
        # the curve (a Vega plot) and a sample appear while it trains
        WebDriverWait(driver, 180).until(lambda d: re.search(r"step \d{2,} of 2000", status(d)))  # 10 points
        WebDriverWait(driver, 180).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#train-curve canvas, #train-curve svg"))
        WebDriverWait(driver, 180).until(lambda d: "Samples at step" in d.find_element(By.CSS_SELECTOR,
                                                                                     "#train-sample-note").text)
        if shots:
            driver.save_screenshot(str(Path(shots) / "studio-train.png"))
        # a reload (or a second browser) finds the running job
        driver.refresh()
        open_tab(driver, "Train")
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#train-run input").get_attribute("value") == "browser-run")
        wait.until(lambda d: "running" in status(d))
        driver.find_element(By.CSS_SELECTOR, "#train-stop").click()
        WebDriverWait(driver, 120).until(lambda d: "stopped" in status(d))
        stopped_at = int(re.search(r"step (\d+) of", status(driver)).group(1))
        assert jobs.job_status(out).returncode == 130 and 3 <= stopped_at < 2000
        set_value("#train-steps input", stopped_at + 2)
        driver.find_element(By.CSS_SELECTOR, "#train-resume").click()
        WebDriverWait(driver, 180).until(lambda d: "done" in status(d))
        assert f"step {stopped_at + 2} of {stopped_at + 2}" in status(driver)
        assert (out / "export" / "state_dict.bin").is_file()
        assert str(tmp_path) not in driver.page_source

        # Generate from the new export (it is in the page's model list after the reload)
        driver.refresh()
        open_tab(driver, "Generate")
        pick("model", "fine-tune: browser-run/export (jazz, rock)")
        set_value("#duration input[type=number]", 1)
        driver.find_element(By.CSS_SELECTOR, "#prompt textarea").send_keys("late night take")
        driver.find_element(By.CSS_SELECTOR, "#generate").click()
        WebDriverWait(driver, 180).until(lambda d: any(
            a.get_attribute("href").endswith(".wav") for a in d.find_elements(By.CSS_SELECTOR, "#output-audio a[download]")))
        assert "browser-run" in driver.find_element(By.CSS_SELECTOR, "#summary").text or \
            "late night take" in driver.find_element(By.CSS_SELECTOR, "#summary").text

        driver.refresh()
        open_tab(driver, "Compare")
        pick("cmp-model-a", "tiny (random weights, for testing)")
        pick("cmp-model-b", "fine-tune: browser-run/export (jazz, rock)")
        set_value("#cmp-duration input[type=number]", 1)
        driver.find_element(By.CSS_SELECTOR, "#cmp-prompt textarea").send_keys("jazz take 1")
        driver.find_element(By.CSS_SELECTOR, "#cmp-run").click()
        WebDriverWait(driver, 180).until(lambda d: "seed 0" in d.find_element(By.CSS_SELECTOR, "#cmp-summary").text)
        WebDriverWait(driver, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR,
                                                                       "#cmp-audio-a audio, #cmp-audio-b audio")) == 2)
        assert "browser-run" not in driver.find_element(By.CSS_SELECTOR, "#cmp-audio-a").get_attribute("innerHTML")
        driver.find_element(By.CSS_SELECTOR, "#cmp-reveal").click()
        revealed = WebDriverWait(driver, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, "#cmp-revealed").text or False)
        assert "export:browser-run/export" in revealed and "tiny" in revealed
        if shots:
            driver.save_screenshot(str(Path(shots) / "studio-compare.png"))
    finally:
        if driver is not None:
            driver.quit()
        jobs.stop_job(out, force=True)
        demo.close()
        shutil.rmtree(profile, ignore_errors=True)


def test_the_run_view_follows_no_links_out_of_the_run(studio, tmp_path):
    out = tmp_path / "checkpoints" / "linked"
    out.mkdir()
    secret = tmp_path / "outside" / "secret.jsonl"
    secret.write_text(json.dumps({"step": 1, "loss": 1.0, "note": "secret"}) + "\n")
    jobs._write(out, jobs.JobInfo(kind="train", folder=str(out), argv=["x"], started=time.time(), returncode=0))
    os.symlink(secret, out / jobs.LOG_FILE)
    os.symlink(secret, out / "metrics.jsonl")
    (out / "samples" / "step_00000001").mkdir(parents=True)
    os.symlink(secret, out / "samples" / "step_00000001" / "00_x.wav")
    view = st.view_run(studio, "linked")
    assert view.state == "done" and view.log == "" and view.rows == [] and view.samples == []


def _stopped_run(studio, tmp_path, name="run1", argv=None, **changes):
    """A run folder as a stopped page run leaves it: run.json, config.json, the job's record."""
    config = st.build_config(studio, "tiny", "mine-prepared", name,
                             {"steps": 4, "lr": 1e-4, "batch_size": 2, "segment_seconds": 1, "sample_every": 0,
                              "eval_every": 0})
    out = Path(config.out)
    out.mkdir()
    (out / "run.json").write_text("{}")
    (out / "config.json").write_text(json.dumps({**config.to_dict(), "total_steps": 4, **changes}))
    jobs._write(out, jobs.JobInfo(kind="train", folder=str(out), argv=argv or st.train_argv(config),
                                  started=time.time(), returncode=130))
    return out


def test_resume_never_runs_the_stored_command_line(studio, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    out = _stopped_run(studio, tmp_path, argv=["/bin/sh", "-c", f"echo PWNED > {marker}; true"])
    started = []
    monkeypatch.setattr(jobs, "start_job", lambda kind, argv, folder, cwd=None: started.append((argv, folder)))
    st.resume_training(studio, "run1", steps=6)
    (argv, folder), = started
    assert not marker.exists() and folder == out
    assert argv[:3] == [sys.executable, "-m", "musicgen_trainer.cli_train"] and argv[-1] == "--resume"
    from musicgen_trainer.cli_train import build_parser, config_from_args
    again = config_from_args(build_parser().parse_args(argv[3:]))
    assert again.out == str(out) and again.steps == 6 and again.batch_size == 2 and again.resume == "auto"
    assert again.data == str((tmp_path / "datasets" / "mine-prepared").resolve()) and again.model == "tiny"


@pytest.mark.parametrize("changes", [{"data": "/etc"}, {"model": "/bin/sh"}, {"model": "facebook/musicgen-large"},
                                     {"steps": "4; rm -rf /"}, {"lr": None, "batch_size": [1]}, {"data": None}])
def test_resume_refuses_recorded_values_that_do_not_validate(studio, tmp_path, monkeypatch, changes):
    _stopped_run(studio, tmp_path, **changes)
    monkeypatch.setattr(jobs, "start_job", lambda *a, **k: pytest.fail("started"))
    with pytest.raises(ValueError, match="cannot be resumed from the page") as err:
        st.resume_training(studio, "run1")
    assert "\n" not in str(err.value)


def test_resume_refuses_an_unreadable_config(studio, tmp_path, monkeypatch):
    out = _stopped_run(studio, tmp_path)
    (out / "config.json").unlink()
    os.symlink("/dev/zero", out / "config.json")
    monkeypatch.setattr(jobs, "start_job", lambda *a, **k: pytest.fail("started"))
    with pytest.raises(ValueError, match="config.json is missing or unreadable"):
        st.resume_training(studio, "run1")


def test_resume_of_a_planned_run_passes_the_plan_not_the_gpu_size(studio, tmp_path, monkeypatch):
    _stopped_run(studio, tmp_path, gpu_memory=24.0, grad_accum=2, activation_checkpointing=True, lora=8)
    started = []
    monkeypatch.setattr(jobs, "start_job", lambda kind, argv, folder, cwd=None: started.append(argv))
    st.resume_training(studio, "run1")
    from musicgen_trainer.cli_train import build_parser, config_from_args
    again = config_from_args(build_parser().parse_args(started[0][3:]))
    assert again.gpu_memory is None and again.grad_accum == 2 and again.activation_checkpointing and again.lora == 8


def test_run_names_of_the_tag_tabs_classifiers_are_refused(studio, tmp_path):
    with pytest.raises(ValueError, match="genre-") as err:
        st.start_training(studio, "tiny", "mine-prepared", "genre-x", {})
    assert "\n" not in str(err.value) and not (tmp_path / "checkpoints" / "genre-x").exists()
    (tmp_path / "checkpoints" / "genre-jazz").mkdir()
    (tmp_path / "checkpoints" / "genre-jazz" / jobs.JOB_FILE).write_text("{}")
    assert "genre-jazz" not in st.list_runs(studio)


@pytest.mark.parametrize("link", ["samples", "step"])
def test_the_run_view_serves_no_clip_through_a_linked_samples_or_step_folder(studio, tmp_path, link):
    out = tmp_path / "checkpoints" / "linked"
    out.mkdir()
    elsewhere = tmp_path / "outside" / "samples"
    (elsewhere / "step_00000001").mkdir(parents=True)
    sf.write(elsewhere / "step_00000001" / "00_x.wav", np.zeros(320, np.float32), 32000)
    if link == "samples":
        os.symlink(elsewhere, out / "samples")
    else:
        (out / "samples").mkdir()
        os.symlink(elsewhere / "step_00000001", out / "samples" / "step_00000002")
    os.mkfifo(tmp_path / "outside" / "fifo")
    (out / "samples" / "step_00000000").mkdir(exist_ok=True) if link == "step" else None
    if link == "step":  # a FIFO named like a clip is no clip either (it would block a reader)
        os.mkfifo(out / "samples" / "step_00000000" / "00_y.wav")
    view = st.view_run(studio, "linked")
    assert view.samples == [] and view.sample_step == 0


def test_the_run_view_reads_a_bounded_config(studio, tmp_path):
    out = tmp_path / "checkpoints" / "zero"
    out.mkdir()
    os.symlink("/dev/zero", out / "config.json")  # would be read forever
    assert st.view_run(studio, "zero").total == 0
    (out / "config.json").unlink()
    (out / "config.json").write_text(json.dumps({"total_steps": 9}))
    assert st.view_run(studio, "zero").total == 9


def test_a_second_stop_says_a_stop_was_asked_and_signals_nothing(studio, tmp_path, monkeypatch):
    out = tmp_path / "checkpoints" / "run1"
    out.mkdir()
    asked = jobs.JobInfo(kind="train", folder=str(out), argv=[], started=time.time(), pid=12345, running=True,
                         stop_asked=True)
    monkeypatch.setattr(jobs, "job_status", lambda folder: asked)
    monkeypatch.setattr(jobs, "stop_job", lambda *a, **k: pytest.fail("signalled again"))
    assert st.stop_training(studio, "run1") == "already"
    signalled = []
    monkeypatch.setattr(jobs, "job_status", lambda folder: dataclasses.replace(asked, stop_asked=False))
    monkeypatch.setattr(jobs, "stop_job", lambda folder, force=False: signalled.append(folder) or True)
    assert st.stop_training(studio, "run1") == "stopping" and signalled == [out.resolve()]


@pytest.mark.parametrize("plan", [{"optimizer": "sgd; rm"}, {"grad_accum": "2"}, {"activation_checkpointing": "yes"}])
def test_resume_refuses_a_plan_that_does_not_validate(studio, tmp_path, monkeypatch, plan):
    _stopped_run(studio, tmp_path, gpu_memory=24.0, **plan)
    monkeypatch.setattr(jobs, "start_job", lambda *a, **k: pytest.fail("started"))
    with pytest.raises(ValueError, match="cannot be resumed from the page"):
        st.resume_training(studio, "run1")
