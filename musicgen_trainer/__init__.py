"""MusicGen fine-tuning: load a model, train it on a prepared dataset, generate from it.

The public surface (heavy modules such as torch and audiocraft load on first use)::

    from musicgen_trainer import load_model, TrainConfig, train, GenerationConfig, generate
    model = load_model("tiny")                                   # or a hub name, or an export folder
    export = train(TrainConfig(data="datasets/mine", model="tiny", out="checkpoints/run", steps=10))
    wav = generate(load_model(export), ["Jazz music, piano trio"], GenerationConfig(duration=4))
    report = evaluate(EvaluateConfig(model="checkpoints/run", out="reports/run"))  # report.html inside

Where things are: docs/architecture.md.
"""
from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    # models
    "load_model": "musicgen_trainer.models",
    "model_summary": "musicgen_trainer.models",
    "ModelUnavailableError": "musicgen_trainer.models",
    "export_model": "musicgen_trainer.exports",
    "export_info": "musicgen_trainer.exports",
    "find_exports": "musicgen_trainer.exports",
    "build_tiny_musicgen": "musicgen_trainer.tiny",
    # training
    "TrainConfig": "musicgen_trainer.train_config",
    "train": "musicgen_trainer.finetune",
    # generation
    "GenerationConfig": "musicgen_trainer.generation",
    "generate": "musicgen_trainer.generation",
    "ClipRequest": "musicgen_trainer.outputs",
    "generate_to_files": "musicgen_trainer.outputs",
    # evaluation (a fine-tune against its base: docs/evaluation.md)
    "EvaluateConfig": "musicgen_trainer.evaluation.evaluate_config",
    "evaluate": "musicgen_trainer.evaluation.evaluate",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'musicgen_trainer' has no attribute {name!r}")


__all__ = sorted(_LAZY) + ["__version__"]
