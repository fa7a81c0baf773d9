"""Helpers shared by the fast decoder's equality tests: what a generation call decoded, and the
same call under ``decoder="fast"`` (audiocraft's LM loop forbidden) and ``decoder="audiocraft"``."""
import typing as tp


def decoded(model, call: tp.Callable[[], tp.Any]):
    """``(codes [B, K, F] the model decoded to audio, call()'s output)``."""
    seen = []
    original = model.generate_audio

    def record(tokens):
        seen.append(tokens.clone())
        return original(tokens)
    model.generate_audio = record
    try:
        out = call()
    finally:
        del model.generate_audio
    assert len(seen) == 1
    return seen[0], out


def fast_and_audiocraft(model, call_for: tp.Callable[[str], tp.Callable[[], tp.Any]]):
    """``(decoded(...) with decoder="fast", decoded(...) with "audiocraft")``, asserting that
    audiocraft's LM loop never runs under "fast" (the fast decoder really decoded every window)."""
    from audiocraft.models.lm import LMModel
    original = LMModel.generate

    def forbidden(*args, **kwargs):
        raise AssertionError("audiocraft's LM loop ran under decoder='fast'")
    LMModel.generate = forbidden
    try:
        fast = decoded(model, call_for("fast"))
    finally:
        LMModel.generate = original
    return fast, decoded(model, call_for("audiocraft"))
