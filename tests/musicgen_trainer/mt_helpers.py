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


def greedy_reproduction(export, data, cache):
    """(generated, reference, share): each clip of ``data`` regenerated greedily from its caption by
    the export (cfg_coef 1: the purely conditional distribution; with the default 3 the guidance
    extrapolates away from a null-caption model that memorised a mixture of the clips and can flip
    near-tied early tokens), its codes, and the share of tokens reproduced where the objective trains
    (the delay pattern leaves the last k frames of codebook k without a target)."""
    import numpy as np

    from musicgen_trainer.code_cache import CodeCache
    from musicgen_trainer.data import find_clips
    from musicgen_trainer.models import load_model
    from musicgen_trainer.objective import valid_positions
    model = load_model(export, device="cpu")
    clips = find_clips(data, valid_fraction=0.0)
    codes, kept, _ = CodeCache(model.compression_model, cache).codes_for(clips, progress=False)
    model.set_generation_params(use_sampling=True, top_k=1, duration=1.0, cfg_coef=1.0)
    with torch.no_grad():
        _, tokens = model.generate([c.caption for c in kept], progress=False, return_tokens=True)
    reference = torch.from_numpy(np.stack([np.asarray(c, dtype=np.int64) for c in codes]))
    mask = valid_positions(model.lm, torch.ones(tokens.shape[0], tokens.shape[-1], dtype=torch.bool))
    return tokens, reference, (tokens == reference)[mask].float().mean().item()
