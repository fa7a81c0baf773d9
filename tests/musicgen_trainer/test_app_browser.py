"""The web page in a real headless browser (Debian's chromium + chromedriver via selenium):
the page loads, a prompt is submitted, and generated audio and its spectrogram appear.

Set MUSICGEN_SCREENSHOT=path.png to keep the screenshot (docs/images/app.png is made so).
"""
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="headless browser check needs Debian's chromium and chromium-driver "
           "(apt-get install --no-install-recommends chromium chromium-driver)")


def chrome(user_data_dir: str):
    """A headless Chromium that never calls home (no sync, updates or background traffic)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-extensions", "--window-size=1400,1150",
                f"--user-data-dir={user_data_dir}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def open_tab(driver, name: str, timeout: float = 90):
    """Click the page's tab ``name`` (the page opens on its first tab)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(driver, timeout).until(lambda d: next(
        (b for b in d.find_elements(By.CSS_SELECTOR, "[role=tab]") if b.text.strip() == name), False)).click()


def test_page_loads_prompt_submits_and_audio_appears(tiny_model, tmp_path):
    pytest.importorskip("selenium", reason="the browser check needs selenium (requirements-dev.txt)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from musicgen_trainer.app.page import App, serve_in_background
    from musicgen_trainer.exports import export_model

    export_model(tiny_model, tmp_path / "checkpoints" / "my-jazz-run" / "export",
                 extra={"genres": ["jazz", "hip_hop", "soul"], "caption_examples": ["Jazz music, Blue in Green"]})
    app = App(checkpoints=str(tmp_path / "checkpoints"), out=str(tmp_path / "out"), pretrained=[],
              max_duration=2.0, midi_default=True)
    demo, url = serve_in_background(app)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    driver = None
    try:
        driver = chrome(profile)  # inside the try: a browser that fails to start still stops the server
        driver.get(url)
        open_tab(driver, "Generate")
        wait = WebDriverWait(driver, 90)
        prompt = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#prompt textarea"))
        assert "MusicGen" in driver.title
        prompt.send_keys("late night piano trio, brushed drums")
        # The fine-tune's genres are offered as chips; tick one.
        jazz = wait.until(lambda d: d.find_element(By.XPATH, "//*[@id='genres']//label[contains(., 'jazz')]"))
        jazz.click()
        # The guidance slider (built without a value: the API's "the model's own") shows the
        # preselected model's own guidance once the page has loaded: 3 for this tiny fine-tune.
        next(e for e in driver.find_elements(By.XPATH, "//*[contains(text(), 'Advanced sampling')]")
             if e.is_displayed()).click()
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#cfg-coef input[type=number]")
                   .get_attribute("value") == "3")
        driver.find_element(By.CSS_SELECTOR, "#generate").click()

        def wav_link(d):
            links = d.find_elements(By.CSS_SELECTOR, "#output-audio a[download]")
            return links[0] if links and links[0].get_attribute("href").endswith(".wav") else False
        link = WebDriverWait(driver, 240).until(wav_link)
        WebDriverWait(driver, 60).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#spectrogram img")
            and d.find_elements(By.CSS_SELECTOR, "#download-midi"))
        summary = WebDriverWait(driver, 30).until(
            lambda d: d.find_element(By.CSS_SELECTOR, "#summary").text or False)
        assert "prompt: Jazz music, late night piano trio, brushed drums" in summary
        # The audio the page links to is the generated clip (2 s, the slider's default here).
        data = urllib.request.urlopen(link.get_attribute("href"), timeout=30).read()
        assert data[:4] == b"RIFF" and len(data) == 44 + 2 * 2 * 32000
        shot = tmp_path / "app.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("MUSICGEN_SCREENSHOT"):
            Path(os.environ["MUSICGEN_SCREENSHOT"]).write_bytes(shot.read_bytes())
    finally:
        if driver is not None:
            driver.quit()
        demo.close()
        shutil.rmtree(profile, ignore_errors=True)  # not left behind in /tmp run after run
