"""A run's own LoRA adapter (matched to its base by the recorded base folder) still fits its base
after that folder moves: recognised by its version-2 weights fingerprint, never by a weaker match."""
import json
import shutil
from pathlib import Path

import pytest
import torch


@pytest.fixture()
def moved(tmp_path, tiny_model):
    """checkpoints/lorarun/adapter trained on bases/mybase/export (recorded by path), then that base
    folder moved to checkpoints/mybase/export; checkpoints/other/export: another model of that name."""
    from musicgen_trainer.exports import export_model
    from musicgen_trainer.lora import apply_lora, save_adapter
    from musicgen_trainer.models import load_model
    from musicgen_trainer.train_config import TrainConfig
    base = export_model(tiny_model, tmp_path / "bases" / "mybase" / "export", dtype="fp32")
    lm = load_model(str(base), device="cpu").lm
    apply_lora(lm, 4)
    with torch.no_grad():  # a trained adapter: lora_B away from zero
        for name, param in lm.named_parameters():
            if ".lora_B." in name:
                param.normal_(0, 0.05)
    ck = tmp_path / "checkpoints"
    adapter = save_adapter(lm, lm.state_dict(), ck / "lorarun" / "adapter",
                           TrainConfig(data="x", model=str(base), lora=4))
    record = json.loads((adapter / "musicgen_lora.json").read_text())
    assert record["base_model_path"] == str(base.resolve()) and record["base_fingerprint_version"] == 2
    before = _merged_codes(str(base), adapter)
    (ck / "mybase").mkdir(parents=True)
    shutil.move(str(base), str(ck / "mybase" / "export"))
    export_model(load_model("tiny:1", device="cpu"), ck / "other" / "export", dtype="fp32")
    return {"adapter": adapter, "base": ck / "mybase" / "export", "other": ck / "other" / "export",
            "checkpoints": ck, "before": before, "record": record}


def _merged_codes(base, adapter):
    from musicgen_trainer.generation import GenerationConfig, generate
    from musicgen_trainer.lora import load_with_adapter
    model = load_with_adapter(base, adapter, device="cpu")
    return generate(model, ["rock"], GenerationConfig(duration=0.2, seed=1, top_k=20), return_tokens=True)[1]


def test_the_moved_base_is_recognised_by_its_weights(moved):
    """generate.py --model NEW_FOLDER --lora OUT/adapter: the same merged model as before the move."""
    assert torch.equal(_merged_codes(str(moved["base"]), moved["adapter"]), moved["before"])


def test_the_fingerprint_check_is_not_loosened(moved, tmp_path):
    """Another model's folder is still refused (its weights differ), and so is any other folder when
    the adapter records only a version-1 fingerprint (code embeddings alone) or none, or when the
    recorded folder still exists (that folder it is)."""
    from musicgen_trainer.lora import load_with_adapter
    with pytest.raises(ValueError, match="with other weights than") as err:
        load_with_adapter(str(moved["other"]), moved["adapter"], device="cpu")
    assert "\n" not in str(err.value) and "is gone; pass --model the folder it moved to" in str(err.value)
    adapter = moved["adapter"]
    for weak in ({"base_fingerprint_version": 1}, {"base_fingerprint": None}):
        (adapter / "musicgen_lora.json").write_text(json.dumps({**moved["record"], **weak}))
        with pytest.raises(ValueError, match="is gone and the adapter records no weights fingerprint") as err:
            load_with_adapter(str(moved["base"]), adapter, device="cpu")
        assert "\n" not in str(err.value)
    (adapter / "musicgen_lora.json").write_text(json.dumps(moved["record"]))
    Path(moved["record"]["base_model_path"]).mkdir(parents=True)  # the recorded folder is back (empty)
    with pytest.raises(ValueError, match=r"trained on base model .*, not .*: pass --model"):
        load_with_adapter(str(moved["base"]), adapter, device="cpu")


def test_the_app_pairs_the_adapter_with_the_moved_base_and_applies_it(moved):
    """The app's list pairs it with the listed folder whose path ends like the recorded one (not
    checkpoints/other/export, also an "export"); generating with it loads and checks the weights."""
    from musicgen_trainer.app.backend import AppRequest, ModelCache, list_adapters, list_models
    from musicgen_trainer.generation import GenerationConfig, generate
    models = list_models(moved["checkpoints"], [])
    (adapter,) = list_adapters(moved["checkpoints"], models)
    assert adapter.base == str(moved["base"]) and adapter.base_name == "export:mybase/export"
    AppRequest(model=str(moved["base"]), allowed_models=[m.value for m in models], adapter=adapter.value,
               allowed_adapters=[adapter])
    with pytest.raises(ValueError, match="trained on base model export:mybase/export"):
        AppRequest(model=str(moved["other"]), allowed_models=[m.value for m in models], adapter=adapter.value,
                   allowed_adapters=[adapter])
    model = ModelCache(device="cpu").get(adapter.base, adapter.value)
    codes = generate(model, ["rock"], GenerationConfig(duration=0.2, seed=1, top_k=20), return_tokens=True)[1]
    assert torch.equal(codes, moved["before"])
