"""The web app with LoRA adapters: found under checkpoints/ from their musicgen_lora.json alone,
applied at load time through lora.load_with_adapter (the same model as generate.py --lora, cached
apart from the base), another base refused in one line, booby-trapped folders inert."""
import json
import pickle
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen_trainer.app.backend import AppRequest, ModelCache, run_request
from musicgen_trainer.generation import GenerationConfig

KEY = "adapter:lorarun/adapter"


class _Trap:
    """Unpickling this writes ``marker``: what a malicious pickle would do instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(root, marker): root/checkpoints holds a tiny LoRA run (its merged export and adapter), an
    adapter of a base the app does not offer, and folders that must never run anything."""
    from musicgen_trainer.finetune import train
    from musicgen_trainer.train_config import TrainConfig
    root = tmp_path_factory.mktemp("app-lora")
    data = root / "data"
    data.mkdir()
    t = np.arange(32000) / 32000
    for i, (freq, caption) in enumerate(((220.0, "jazz piano"), (330.0, "rock guitar"))):
        sf.write(data / f"clip{i}.wav", (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 32000)
        (data / f"clip{i}.txt").write_text(caption)
    ck = root / "checkpoints"
    train(TrainConfig(data=str(data), model="tiny", out=str(ck / "lorarun"), cache_dir=str(root / "cache"),
                      batch_size=2, segment_seconds=1.0, lr=5e-3, warmup_steps=1, steps=3, sample_every=0,
                      valid_every=1000, save_every=1000, progress=False, device="cpu", export_dtype="fp32",
                      valid_fraction=0.0, lora=4))
    adapter = ck / "lorarun" / "adapter"
    medium = shutil.copytree(adapter, ck / "mediumrun" / "adapter")
    record = json.loads((adapter / "musicgen_lora.json").read_text())
    (medium / "musicgen_lora.json").write_text(json.dumps({**record, "base_model": "facebook/musicgen-medium"}))
    # Adapters trained on an export: one listed here (the run's own), one kept elsewhere on the server.
    for name, export in (("onexport", ck / "lorarun" / "export"), ("elsewhere", root / "private" / "export")):
        folder = shutil.copytree(adapter, ck / name / "adapter")
        (folder / "musicgen_lora.json").write_text(json.dumps({**record, "base_model": str(export),
                                                                "base_model_path": str(export.resolve())}))
    marker = root / "code-ran"
    trap = pickle.dumps(_Trap(marker))
    # A pickled peft adapter (adapter_model.bin) and no safetensors: never an adapter here.
    pickled = shutil.copytree(adapter, ck / "trap-pickled" / "adapter")
    (pickled / "adapter_model.safetensors").unlink()
    (pickled / "adapter_model.bin").write_bytes(trap)
    # A pickle named like safetensors: listed (its JSON is fine), refused when used.
    renamed = shutil.copytree(adapter, ck / "trap-renamed" / "adapter")
    (renamed / "adapter_model.safetensors").write_bytes(trap)
    # Not our JSON.
    junk = shutil.copytree(adapter, ck / "junk" / "adapter")
    (junk / "musicgen_lora.json").write_text("{not json")
    odd = shutil.copytree(adapter, ck / "odd" / "adapter")
    (odd / "musicgen_lora.json").write_text(json.dumps(["a list"]))
    return root, marker


def _app(root, **kw):
    from musicgen_trainer.app.page import App
    return App(checkpoints=str(root / "checkpoints"), out=str(root / "out"), pretrained=["facebook/musicgen-small"],
               midi_default=False, **kw)


def test_adapters_are_listed_from_their_json_alone(checkpoints, monkeypatch):
    import safetensors
    import safetensors.torch
    root, marker = checkpoints

    def refuse(*args, **kwargs):
        raise AssertionError("a weights file was opened while listing")
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(safetensors, "safe_open", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    app = _app(root)
    assert [a.key for a in app.adapters] == ["adapter:elsewhere/adapter", KEY, "adapter:mediumrun/adapter",
                                             "adapter:onexport/adapter", "adapter:trap-renamed/adapter"]
    lora = app.adapter_of(KEY)
    assert lora.base == "tiny" and lora.base_name == "tiny" and lora.rank == 4
    assert lora.value == str(root / "checkpoints" / "lorarun" / "adapter")
    assert app.adapter_of("adapter:mediumrun/adapter").base is None  # the app offers no musicgen-medium
    on_export = app.adapter_of("adapter:onexport/adapter")
    assert on_export.base == str(root / "checkpoints" / "lorarun" / "export")
    assert on_export.base_name == "export:lorarun/export"
    elsewhere = app.adapter_of("adapter:elsewhere/adapter")
    assert elsewhere.base is None and elsewhere.base_name == ""
    assert ("elsewhere/adapter (rank 4, base not listed here)", "adapter:elsewhere/adapter") in \
        app.adapter_choices()
    assert app.adapter_of("none") is None and app.adapter_of("adapter:junk/adapter") is None
    choices = app.adapter_choices()
    assert choices[0] == ("none", "none") and choices[2] == ("lorarun/adapter (rank 4, base tiny)", KEY)
    assert str(root) not in json.dumps(choices)
    assert not marker.exists()


def test_model_cache_keeps_a_base_and_its_adapted_model_apart():
    loads = []
    cache = ModelCache(capacity=3, loader=lambda name, device=None: loads.append(name) or object(),
                       adapter_loader=lambda name, adapter, device=None: loads.append((name, adapter)) or object())
    base = cache.get("tiny")
    adapted = cache.get("tiny", "/runs/a/adapter")
    assert adapted is not base and cache.get("tiny", "/runs/a/adapter") is adapted
    other = cache.get("tiny", "/runs/b/adapter")
    assert other is not adapted and cache.get("tiny") is base
    assert loads == ["tiny", ("tiny", "/runs/a/adapter"), ("tiny", "/runs/b/adapter")]
    assert "tiny" in cache and ("tiny", "/runs/a/adapter") in cache and ("tiny", "/runs/c/adapter") not in cache


def test_generating_with_an_adapter_matches_generate_py_lora(checkpoints, tmp_path, capsys, tiny_model):
    from musicgen_trainer import cli_generate
    root, _ = checkpoints
    app = _app(root)
    adapter = app.adapter_of(KEY)
    request = AppRequest(model="tiny", allowed_models=list(app.by_value), prompt="jazz piano", midi=False,
                         generation=GenerationConfig(duration=0.4, seed=2), adapter=adapter.value,
                         allowed_adapters=app.adapters)
    result = run_request(request, app.cache, tmp_path / "app")
    assert ("tiny", adapter.value) in app.cache and "tiny" not in app.cache
    assert f"LoRA adapter {KEY}" in result.summary
    meta = json.loads(result.json.read_text())
    assert meta["model"] == "tiny" and meta["lora_adapter"] == KEY
    assert cli_generate.main(["--model", "tiny", "--lora", adapter.value, "--prompt", "jazz piano", "--duration", "0.4",
                              "--seed", "2", "--out", str(tmp_path / "cli"), "--device", "cpu"]) == 0
    capsys.readouterr()
    (cli_wav,) = (tmp_path / "cli").glob("*.wav")
    np.testing.assert_allclose(sf.read(result.wav)[0], sf.read(cli_wav)[0], atol=1e-6)
    assert json.loads(cli_wav.with_suffix(".json").read_text())["lora_adapter"] == adapter.value
    # The adapter is merged into the cached model's weights: it is not the base.
    weight = "transformer.layers.0.linear1.weight"
    adapted = app.cache.get("tiny", adapter.value).lm.state_dict()[weight]
    assert not torch.allclose(adapted, tiny_model.lm.state_dict()[weight], atol=1e-6)


def test_another_base_is_refused_in_one_line(checkpoints):
    root, _ = checkpoints
    app = _app(root)
    allowed = list(app.by_value)
    lora = app.adapter_of(KEY)

    def refused(model, adapter):
        try:
            AppRequest(model=model, allowed_models=allowed, adapter=adapter, allowed_adapters=app.adapters)
            return None
        except ValueError as err:
            shown = app.public_text(str(err))  # what the page shows
        assert "\n" not in shown and str(root) not in shown
        return shown

    assert refused("facebook/musicgen-small", lora.value) == (
        f"LoRA adapter {KEY} was trained on base model tiny, not facebook/musicgen-small: pick tiny as the model")
    # The run's own merged export already holds the adapter: another model.
    assert "not export:lorarun/export: pick tiny" in refused(app.value_of("export:lorarun/export"), lora.value)
    assert refused("tiny", app.adapter_of("adapter:mediumrun/adapter").value) == (
        "LoRA adapter adapter:mediumrun/adapter was trained on facebook/musicgen-medium, which this app does "
        "not offer")
    assert refused("tiny", app.adapter_of("adapter:elsewhere/adapter").value) == (
        "LoRA adapter adapter:elsewhere/adapter was trained on a base model, which this app does not offer")
    assert refused(app.value_of("export:lorarun/export"), app.adapter_of("adapter:onexport/adapter").value) is None
    # A folder that is not in the list, even a real adapter elsewhere, is refused as unknown.
    assert refused("tiny", str(root / "checkpoints" / "junk" / "adapter")) == "choose a LoRA adapter from the list"
    # The page's note says the same as soon as the pair is picked.
    assert app.adapter_note(KEY, "facebook/musicgen-small").startswith(f"**LoRA adapter {KEY} was trained on")
    assert app.adapter_note(KEY, "tiny") == f"LoRA adapter {KEY} (rank 4) is merged into tiny when it loads."
    assert app.adapter_note("none", "tiny") == ""


def test_booby_trapped_adapter_is_refused_without_running_anything(checkpoints):
    root, marker = checkpoints
    app = _app(root)
    trap = app.adapter_of("adapter:trap-renamed/adapter")
    request = AppRequest(model="tiny", allowed_models=list(app.by_value), adapter=trap.value,
                         allowed_adapters=app.adapters, generation=GenerationConfig(duration=0.2))
    with pytest.raises(ValueError) as err:
        run_request(request, app.cache, root / "out")
    shown = app.public_text(str(err.value))
    assert shown.startswith("cannot read LoRA adapter adapter:trap-renamed/adapter: adapter_model.safetensors is not a readable safetensors file")
    assert "\n" not in shown and str(root) not in shown
    assert not marker.exists()


def test_the_page_applies_an_adapter_and_refuses_another_base(checkpoints):
    import urllib.request

    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from musicgen_trainer.app.page import serve_in_background
    root, _ = checkpoints
    app = _app(root)
    demo, url = serve_in_background(app)
    try:
        client = Client(url, verbose=False)
        args = ("jazz piano", [], 0.5, None, 250, 0.0, 1.0, 3.0, 2, False)
        summary = client.predict("tiny", *args, KEY, api_name="/generate")[-1]
        assert f"LoRA adapter {KEY}" in summary
        assert "LoRA adapter" not in client.predict("tiny", *args, api_name="/generate")[-1]  # "none" by default
        with pytest.raises(AppError) as err:
            client.predict("facebook/musicgen-small", *args, KEY, api_name="/generate")
        assert str(err.value).strip() == (f"LoRA adapter {KEY} was trained on base model tiny, not "
                                          "facebook/musicgen-small: pick tiny as the model")
        with pytest.raises(AppError, match="not in the list of choices"):
            client.predict("tiny", *args, str(root / "checkpoints" / "lorarun" / "adapter"), api_name="/generate")
        with urllib.request.urlopen(f"{url}config", timeout=60) as r:
            config = r.read().decode()
        assert str(root) not in config
        picker = next(c for c in json.loads(config)["components"] if c.get("props", {}).get("elem_id") == "adapter")
        assert [v for _, v in picker["props"]["choices"]] == ["none"] + [a.key for a in app.adapters]
        # Picking the adapter in the page sets the model to its base.
        on_adapter = next(f for f in demo.fns.values() if f.name == "on_adapter")
        model, note = on_adapter.fn(KEY, "facebook/musicgen-small")
        assert model["value"] == "tiny" and note.startswith(f"LoRA adapter {KEY} (rank 4)")
        model, _ = on_adapter.fn("adapter:onexport/adapter", "tiny")
        assert model["value"] == "export:lorarun/export"
        model, note = on_adapter.fn("adapter:mediumrun/adapter", "tiny")
        assert model["value"] == "tiny" and "which this app does not offer" in note
    finally:
        demo.close()


def test_picking_an_adapter_in_a_browser_sets_its_base_and_generates(checkpoints, tmp_path):
    """The page itself (headless Chromium, as test_app_browser.py): choosing the adapter switches the
    model to its base and says so; Generate then uses both."""
    import os
    import tempfile

    from test_app_browser import CHROMEDRIVER, CHROMIUM, chrome, open_tab
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("needs Debian's chromium and chromium-driver (see test_app_browser.py)")
    pytest.importorskip("selenium", reason="the browser check needs selenium (requirements-dev.txt)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from musicgen_trainer.app.page import serve_in_background
    root, _ = checkpoints
    app = _app(root, max_duration=1.0)
    assert app.key_of(app.default_model()) == "export:lorarun/export"  # the newest export is preselected
    demo, url = serve_in_background(app)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    driver = None
    try:
        driver = chrome(profile)
        driver.get(url)
        open_tab(driver, "Generate")
        wait = WebDriverWait(driver, 90)
        picker = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#adapter input"))
        picker.click()
        wait.until(lambda d: [o for o in d.find_elements(By.CSS_SELECTOR, "#adapter [role=option], [role=option]")
                              if o.get_attribute("aria-label") == "lorarun/adapter (rank 4, base tiny)"]
                   )[0].click()
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#model input").get_attribute("value")
                   == "tiny (random weights, for testing)")
        note = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#adapter-note").text or False)
        assert note == f"LoRA adapter {KEY} (rank 4) is merged into tiny when it loads."
        driver.find_element(By.CSS_SELECTOR, "#generate").click()
        summary = WebDriverWait(driver, 240).until(
            lambda d: d.find_element(By.CSS_SELECTOR, "#summary").text or False)
        assert f"LoRA adapter {KEY}" in summary
        assert ("tiny", app.adapter_of(KEY).value) in app.cache
        assert str(root) not in driver.page_source
        if os.environ.get("MUSICGEN_SCREENSHOT"):
            driver.save_screenshot(os.environ["MUSICGEN_SCREENSHOT"])
    finally:
        if driver is not None:
            driver.quit()
        demo.close()
        shutil.rmtree(profile, ignore_errors=True)


def test_an_exported_adapter_whose_base_name_two_listed_exports_share_is_not_paired(tmp_path):
    """An adapter inside an export names its base by its last folder name (``export-best``): with
    two listed exports of that name the app does not guess (the first listed): base not listed."""
    from collections import namedtuple

    from musicgen_trainer.app.adapters import _base_choice
    choice = namedtuple("Choice", "key value")
    for run in ("runA", "runB"):
        (tmp_path / run / "export-best").mkdir(parents=True)
    models = [choice("tiny", "tiny"), choice("runA/export-best", str(tmp_path / "runA" / "export-best")),
              choice("runB/export-best", str(tmp_path / "runB" / "export-best"))]
    record = {"base_model": "export-best", "base_model_path": None, "base_fingerprint": "f" * 32,
              "rank": 4, "targets": []}
    assert _base_choice(record, tmp_path / "adapter", models) is None
    assert _base_choice(record, tmp_path / "adapter", models[:2]).key == "runA/export-best"
