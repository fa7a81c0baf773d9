"""The Keras MFCC CNN: the traditional baseline, the "gap" head and the "stats" head (the default).

Input ``[batch, frames, n_mfcc, 1]`` (130 x 13 x 1 with the defaults); output
``[batch, n_labels]`` softmax probabilities.

Baseline (the architecture this kind of tool traditionally uses; `train`'s default until
``head="stats"`` with augmentation measured at least as accurate, docs/genre_classifier.md):
    Conv2D 64 3x3 ReLU -> MaxPool 3x3 stride 2 -> BatchNorm
    Conv2D 32 3x3 ReLU -> MaxPool 3x3 stride 2 -> BatchNorm
    Conv2D 32 2x2 ReLU -> MaxPool 2x2 stride 2 -> BatchNorm
    Conv2D 16 1x1 ReLU -> MaxPool 2x2 stride 2 -> BatchNorm
    Flatten -> Dense 64 ReLU -> Dropout 0.3 -> Dense softmax
Pooling uses "same" padding: the 13-MFCC axis is too narrow for four "valid" pools
(130 x 13 -> 64 x 6 -> 31 x 2 -> 15 x 1 -> 8 x 1).

Option ``head="gap"`` replaces Flatten with global average + max pooling over time and
frequency: fewer weights in the head (16 x 2 inputs instead of 8 x 16), less prone to
memorising where in the window a sound falls.

Option ``head="stats"`` is "gap" plus statistics pooling of the input itself: the mean and
standard deviation over the window's time axis of each MFCC coefficient (26 numbers with the
defaults), batch-normalised, joined to the pooled convolution features before the Dense layer.
Why: on real recordings a logistic regression on exactly such window statistics was more
accurate than the CNN (docs/genre_classifier.md, "Real music"); this head gives the CNN the
same summary to build on instead of having to learn it from 2-3 thousand windows. It is
``TrainConfig``'s default (with ``augment``); ``build_model``'s own default stays "baseline".
"""
from __future__ import annotations

import os
import sys
from importlib import import_module

HEADS = ("baseline", "gap", "stats")
# Keras' default (0.99) leaves the moving statistics that predictions use at about half their
# initial values (mean 0, variance 1) after 60 steps, and a small dataset has only 2-3 steps per
# epoch: the model then scores near chance on validation while training accuracy is 100 %
# (measured on the demo's library: 20 recordings). 0.9 forgets the start within ~30 steps.
BN_MOMENTUM = 0.9


def import_keras():
    """Import Keras 3 on TensorFlow quietly (only the main process ever calls this).

    TensorFlow's C++ start-up notices (absl, oneDNN) ignore TF_CPP_MIN_LOG_LEVEL and would
    clutter every command's output, so file descriptor 2 is muted while it loads, unless the
    user asked for TensorFlow's logs with TF_CPP_MIN_LOG_LEVEL=0 or 1. Python errors still
    propagate normally.
    """
    if "keras" in sys.modules:
        return sys.modules["keras"]
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from dataset_tools.quiet import native_stderr_muted
    with native_stderr_muted():
        import keras
        import_module("tensorflow")  # its C++ runtime prints on first load: still muted here
    return keras


_TIME_STATS = None


def time_stats_layer():
    """The ``TimeStats`` layer class: ``[batch, frames, n_mfcc, 1]`` -> ``[batch, 2 n_mfcc]``,
    the mean and standard deviation over frames of each coefficient. A registered Keras layer,
    not a Lambda, so that ``model.keras`` loads in Keras' safe mode (no pickled Python code)."""
    global _TIME_STATS
    if _TIME_STATS is None:
        keras = import_keras()

        @keras.saving.register_keras_serializable(package="genre_classifier")
        class TimeStats(keras.layers.Layer):
            def call(self, x):
                x = keras.ops.squeeze(x, axis=-1)                     # [batch, frames, n_mfcc]
                mean = keras.ops.mean(x, axis=1)
                std = keras.ops.sqrt(keras.ops.var(x, axis=1) + 1e-6)  # epsilon: finite gradient at 0
                return keras.ops.concatenate([mean, std], axis=-1)  # [batch, 2 n_mfcc]

            def compute_output_shape(self, input_shape):
                return (input_shape[0], 2 * input_shape[2])

        _TIME_STATS = TimeStats
    return _TIME_STATS


def build_model(frames: int, n_mfcc: int, n_labels: int, head: str = "baseline"):
    """Uncompiled ``keras.Model``: ``[batch, frames, n_mfcc, 1]`` -> ``[batch, n_labels]``."""
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    keras = import_keras()
    layers = keras.layers
    inputs = keras.Input(shape=(frames, n_mfcc, 1), name="mfcc")
    x = inputs
    blocks = ((64, 3, 3, 2), (32, 3, 3, 2), (32, 2, 2, 2), (16, 1, 2, 2))  # filters, kernel, pool, stride
    for i, (filters, kernel, pool, stride) in enumerate(blocks, start=1):
        x = layers.Conv2D(filters, kernel, activation="relu", name=f"conv{i}")(x)
        x = layers.MaxPooling2D(pool, strides=stride, padding="same", name=f"pool{i}")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"bn{i}")(x)
    if head in ("gap", "stats"):
        pooled = [layers.GlobalAveragePooling2D()(x), layers.GlobalMaxPooling2D()(x)]
        if head == "stats":
            stats = time_stats_layer()(name="time_stats")(inputs)
            pooled.append(layers.BatchNormalization(momentum=BN_MOMENTUM, name="bn_stats")(stats))
        x = layers.Concatenate(name="pool_global")(pooled)
    else:
        x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(64, activation="relu", name="dense")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    outputs = layers.Dense(n_labels, activation="softmax", name="genre")(x)
    return keras.Model(inputs, outputs, name=f"mfcc_cnn_{head}")


def compile_model(model, learning_rate: float = 1e-4, weight_decay: float = 0.004):
    """AdamW + sparse categorical cross-entropy on integer labels; returns ``model``."""
    keras = import_keras()
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model
