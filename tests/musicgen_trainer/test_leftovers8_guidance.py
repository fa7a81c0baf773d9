"""The Generate tab uses each model's own guidance (a transformers folder's guidance_scale, an
export's recorded inference_coef) unless the user moves the slider, as generate.py and Compare do."""
import json
import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_model):
    """checkpoints/ with a transformers folder whose guidance_scale is 5 and the audiocraft export of
    a model loaded from it (a fine-tune of that base: its config's inference_coef is 5)."""
    from musicgen_trainer.exports import export_model
    from musicgen_trainer.models import load_model
    from musicgen_trainer.sharing.transformers_format import export_transformers
    ck = tmp_path_factory.mktemp("guidance") / "checkpoints"
    hf = export_transformers(tiny_model, ck / "hf5")
    settings = json.loads((Path(hf) / "generation_config.json").read_text())
    (Path(hf) / "generation_config.json").write_text(json.dumps({**settings, "guidance_scale": 5.0}))
    export_model(load_model(str(hf), device="cpu"), ck / "run5" / "export")
    return ck


def test_listed_models_know_their_own_guidance_without_loading(checkpoints, monkeypatch):
    from musicgen_trainer import models
    from musicgen_trainer.app.backend import list_models
    from musicgen_trainer.exports import export_info

    def no_loading(*a, **k):
        raise AssertionError("listing loaded a model")
    monkeypatch.setattr(models, "load_model", no_loading)
    assert export_info(checkpoints / "run5" / "export").cfg_coef == 5.0  # recorded at export
    own = {c.key: c.guidance for c in list_models(checkpoints, ["facebook/musicgen-small"])}
    assert own == {"export:hf5": 5.0, "export:run5/export": 5.0, "tiny": 3.0, "facebook/musicgen-small": 3.0}


def test_the_guidance_slider_follows_the_model_and_generates_with_its_own(checkpoints, tmp_path):
    """Picking the guidance-5 model sets the slider to 5 (3 for tiny); generating with what the
    slider shows, or with None from an API caller, uses 5; a moved slider (2) wins."""
    from gradio_client import Client

    from musicgen_trainer.app.page import App, serve_in_background
    app = App(checkpoints=str(checkpoints), out=str(tmp_path / "out"), pretrained=[], midi_default=False,
              data_root=None)
    demo, url = serve_in_background(app)
    try:
        on_model = next(f for f in demo.fns.values() if f.name == "on_model")
        slider = {key: on_model.fn(key)[-1] for key in ("export:hf5", "export:run5/export", "tiny")}
        assert {key: s.value for key, s in slider.items()} == {"export:hf5": 5.0, "export:run5/export": 5.0,
                                                                "tiny": 3.0}
        client = Client(url, verbose=False)
        used = {}
        for name, cfg in (("shown", slider["export:hf5"].value), ("api-none", None), ("moved", 2.0)):
            client.predict("export:hf5", name, [], 0.5, None, 50, 0.0, 1.0, cfg, 1, False, api_name="/generate")
            record = next(p for p in Path(app.out).glob("*/*.json") if json.loads(p.read_text())["prompt"]
                          .endswith(name))
            used[name] = json.loads(record.read_text())["cfg_coef"]
        assert used == {"shown": 5.0, "api-none": 5.0, "moved": 2.0}
    finally:
        demo.close()
        shutil.rmtree(tmp_path / "out", ignore_errors=True)


def test_an_api_call_leaving_guidance_out_gets_the_requested_models_own(checkpoints, tmp_path):
    """The preselected model guides at 5; an API call for tiny that leaves the guidance out gets
    tiny's own 3, not the preselected model's 5. The page still starts at the preselected model's own."""
    from gradio_client import Client

    from musicgen_trainer.app.page import App, serve_in_background
    app = App(checkpoints=str(checkpoints), out=str(tmp_path / "out"), pretrained=[], midi_default=False,
              data_root=None)
    assert app.guidance(app.default_model()) == 5.0
    demo, url = serve_in_background(app)
    try:
        start = next(f for f in demo.fns.values() if f.name == "on_page_guidance")
        assert start.fn(app.key_of(app.default_model())).value == 5.0
        client = Client(url, verbose=False)
        client.predict("tiny", "tiny-omitted", [], 0.5, None, 50, 0.0, 1.0, api_name="/generate")
        record = next(p for p in Path(app.out).glob("*/*.json") if json.loads(p.read_text())["prompt"]
                      .endswith("tiny-omitted"))
        assert json.loads(record.read_text())["cfg_coef"] == 3.0
    finally:
        demo.close()
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
