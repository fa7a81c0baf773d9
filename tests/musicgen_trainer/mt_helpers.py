"""Helpers the trainer's tests share: a run stopped mid-way, and audiocraft's own loader
pointed at a tiny export's frozen modules instead of downloads."""
import pytest
import torch


def train_stopped_after(step: int, config) -> None:
    """``train(config)`` "killed" once ``step`` steps are done (Ctrl-C: the states saved so far
    stay on disk, nothing is exported)."""
    import musicgen_trainer.finetune as finetune
    real_step = finetune.train_step

    def stop(state, micro):
        if state.step == step:
            raise KeyboardInterrupt
        return real_step(state, micro)

    finetune.train_step = stop
    try:
        with pytest.raises(KeyboardInterrupt):
            finetune.train(config)
    finally:
        finetune.train_step = real_step


def supply_tiny_modules(monkeypatch, export) -> dict:
    """Make ``MusicGen.get_pretrained(export)`` build a tiny export's frozen T5 (and, for
    tiny-melody, its stem separator) from the export, where audiocraft would download the
    released ones (they are not part of the LM state dict, by audiocraft's design).
    Returns the export's LM package."""
    import demucs.pretrained
    from audiocraft.modules import conditioners
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    from musicgen_trainer.exports import LM_FILE, package_config
    from musicgen_trainer.tiny import tiny_demucs
    pkg = torch.load(export / LM_FILE, weights_only=True)
    ours = package_config(pkg)["musicgen_trainer"]

    def tiny_t5(name, *args, **kwargs):
        model = T5EncoderModel(T5Config(**ours["t5_config"]))
        model.load_state_dict(pkg["text_encoder_state"])
        return model

    def tiny_htdemucs(name, *args, **kwargs):
        assert name == "htdemucs"
        return tiny_demucs(ours["demucs_config"], 0, pkg["demucs_state"])

    monkeypatch.setattr(conditioners.T5Tokenizer, "from_pretrained", lambda *a, **k: ByT5Tokenizer())
    monkeypatch.setattr(conditioners.T5EncoderModel, "from_pretrained", tiny_t5)
    if "demucs_state" in pkg:
        monkeypatch.setattr(demucs.pretrained, "get_model", tiny_htdemucs)
    return pkg
