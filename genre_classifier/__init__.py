"""Keras MFCC CNN genre classifier: train on genre folders, evaluate, tag unlabelled tracks.

Library entry points (each also a command of ``python -m genre_classifier``)::

    from genre_classifier import TrainConfig, train, EvaluateConfig, evaluate, predict, TagConfig, tag
    folder = train(TrainConfig(data="datasets/mine", out="checkpoints/genre-mine"))
    report = evaluate(EvaluateConfig(data="datasets/other", model=folder))
    predict(["song.mp3"], folder)            # -> [Prediction(path, top=[("rock", 0.81), ...])]
    tag(TagConfig(directory="datasets/mine/unknown", model=folder, apply="move"))

Importing the package is cheap: TensorFlow loads only when a model is built or loaded, and
the feature-extraction workers never load it.
"""
from importlib import import_module

_LAZY = {
    "TrainConfig": "training", "train": "training",
    "EvaluateConfig": "evaluation", "evaluate": "evaluation",
    "predict": "tagging", "Prediction": "tagging", "TagConfig": "tagging", "tag": "tagging",
    "Classifier": "model_folder", "load_classifier": "model_folder", "ModelFolderError": "model_folder",
    "DatasetError": "data", "FeatureSettings": "features",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
