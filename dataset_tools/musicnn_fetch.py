"""``python -m dataset_tools fetch-tagger musicnn``: musicnn's pretrained weights from PyPI.

The ``musicnn`` wheel (0.1.0, ISC licence) ships its trained models as TensorFlow checkpoints.
The package cannot be installed next to this project (it pins numpy<1.17 and runs TF1 graph
code), so its wheel is only downloaded (``pip download --no-deps``: PyPI is the one index every
user reaches), checked against a pinned sha256, and the two checkpoints' tensor files are read
(by exact member name, into a temporary folder) with ``tf.train.load_checkpoint``: a tensor
bundle reader, which executes nothing (the ``.meta`` graphs are never imported). The tensors
are mapped to ``musicnn.MusicnnNet``'s state dict, every name and shape checked, and written
as ``musicnn-mtt.safetensors``, ``musicnn-msd.safetensors`` and ``musicnn.json`` (tags,
source, licence notice), each atomically, into ``--to`` (default: ``default_dir()``).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_path, write_json_atomic
from .cli import option
from .files import file_digest
from .musicnn import INFO_FILE, MODELS, TAGS, musicnn_net, weight_paths
from .quiet import native_stderr_muted

PACKAGE = "musicnn==0.1.0"
WHEEL_NAME = "musicnn-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "f38a4890c648c1ddbb141c5d96d2b0a8cfcd36746002d896989f7b88beb65cfa"
CHECKPOINT_FILES = (".index", ".data-00000-of-00001")
LICENCE_MEMBER = "musicnn-0.1.0.dist-info/LICENSE.md"
# Optimizer state saved with the weights: known, and not part of the network.
OPTIMIZER_SUFFIXES = ("/Adam", "/Adam_1")
OPTIMIZER_NAMES = ("beta1_power", "beta2_power")
# TF layer name -> our module. TF numbered layers in creation order (musicnn's build_musicnn):
# the input batch norm, the five front-end blocks (conv + batch norm), the three mid-end ones,
# the pooled features' batch norm and the two dense layers.
_FRONT = ("timbral74", "timbral77", "temporal128", "temporal64", "temporal32")
BATCH_NORMS = {"batch_normalization": "input_bn",
               **{f"batch_normalization_{i + 1}": f"front_bn.{n}" for i, n in enumerate(_FRONT)},
               **{f"batch_normalization_{i + 6}": f"mid_bn.{i}" for i in range(3)},
               "batch_normalization_9": "pool_bn", "batch_normalization_10": "dense_bn"}
CONVS = {"conv2d": "front.timbral74", **{f"conv2d_{i}": f"front.{n}" for i, n in enumerate(_FRONT) if i},
         **{f"conv2d_{i + 5}": f"mid.{i}" for i in range(3)}}
DENSES = {"dense": "dense", "dense_1": "out"}
BN_PARTS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


class MusicnnUnavailableError(ValueError):
    """The musicnn weights cannot be fetched or converted (one line, says why)."""


@dataclass
class FetchTaggerOptions:
    """Settings for ``fetch-tagger``."""
    name: str = option("musicnn", "the tagger whose weights to fetch", choices=("musicnn",), positional=True,
                       metavar="NAME")
    to: str | None = option(None, "folder to write the converted weights to (default: "
                            "$XDG_CACHE_HOME or ~/.cache, then musicgen-finetune/musicnn)", metavar="DIR")
    wheel: str | None = option(None, f"convert this already downloaded {WHEEL_NAME} instead of "
                               "downloading it from PyPI", metavar="FILE")


def default_dir() -> Path:
    """``$XDG_CACHE_HOME`` (or ``~/.cache``)``/musicgen-finetune/musicnn``: where ``fetch-tagger``
    writes and ``--tagger musicnn`` looks by default (the project's other caches are beside it)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "musicgen-finetune" / "musicnn"


def sha256_file(path: Path) -> str:
    return file_digest(path, "sha256")


def download_wheel(folder: Path) -> Path:
    """The musicnn wheel, downloaded from PyPI into ``folder`` with pip (no dependencies, no build)."""
    command = [sys.executable, "-m", "pip", "download", PACKAGE, "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", str(folder)]
    done = subprocess.run(command, capture_output=True, text=True)
    wheel = folder / WHEEL_NAME
    if done.returncode != 0 or not wheel.is_file():
        lines = [line.strip() for line in (done.stderr or done.stdout or "").splitlines() if line.strip()]
        raise MusicnnUnavailableError(f"`pip download {PACKAGE}` failed ({lines[-1] if lines else 'no output'}); "
                                      f"download {WHEEL_NAME} from pypi.org/project/musicnn elsewhere and "
                                      f"pass --wheel FILE")
    return wheel


def tf_to_state_dict(tensors: dict) -> dict:
    """``MusicnnNet`` state dict (torch tensors) of a musicnn checkpoint's ``{name: array}``.
    Optimizer slots are skipped; any other unknown name, a missing tensor or a wrong shape is a
    one-line ``MusicnnUnavailableError``."""
    import torch
    state = {}
    for name, value in tensors.items():
        if name in OPTIMIZER_NAMES or name.endswith(OPTIMIZER_SUFFIXES):
            continue
        layer, _, part = name.rpartition("/")
        value = np.asarray(value, dtype=np.float32)
        if layer in BATCH_NORMS and part in BN_PARTS:
            state[f"{BATCH_NORMS[layer]}.{BN_PARTS[part]}"] = value
        elif layer in CONVS and part in ("kernel", "bias"):
            key = CONVS[layer]
            if part == "bias":
                state[f"{key}.bias"] = value
            elif key.startswith("front."):   # [frames, bands, 1, out] -> [out, 1, frames, bands]
                state[f"{key}.weight"] = value.transpose(3, 2, 0, 1)
            elif value.ndim == 4:            # [7, in, 1, out] -> Conv1d's [out, in, 7]
                state[f"{key}.weight"] = value[:, :, 0, :].transpose(2, 1, 0)
            else:
                raise MusicnnUnavailableError(f"checkpoint tensor {name} has shape {list(value.shape)}, "
                                              f"expected a 4-D kernel")
        elif layer in DENSES and part in ("kernel", "bias"):
            state[f"{DENSES[layer]}.{'weight' if part == 'kernel' else 'bias'}"] = \
                value.T if part == "kernel" else value
        else:
            raise MusicnnUnavailableError(f"unexpected tensor {name!r} in the musicnn checkpoint "
                                          f"(not a layer of musicnn's network)")
    expected = {k: v for k, v in musicnn_net().state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state))
    if missing:
        raise MusicnnUnavailableError(f"the musicnn checkpoint lacks {len(missing)} tensor(s), e.g. {missing[0]}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise MusicnnUnavailableError(f"checkpoint tensor for {key} has shape {list(value.shape)}, "
                                          f"expected {list(expected[key].shape)}")
    result = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    for key in musicnn_net().state_dict():
        if key.endswith("num_batches_tracked"):
            result[key] = torch.zeros((), dtype=torch.long)
    return result


def import_tensorflow():
    """Import TensorFlow quietly (``quiet.native_stderr_muted``), or a one-line
    ``MusicnnUnavailableError``."""
    if "tensorflow" in sys.modules and sys.modules["tensorflow"] is not None:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        with native_stderr_muted():
            import tensorflow as tf
    except ImportError:
        raise MusicnnUnavailableError("converting musicnn's checkpoints needs tensorflow (it is in "
                                      "requirements.txt: pip install tensorflow-cpu)") from None
    return tf


def check_destination(folder: Path) -> None:
    """One-line ``MusicnnUnavailableError`` unless ``folder`` is a writable folder or can be
    created (its nearest existing parent is a writable folder); nothing is created here, so a
    failed download leaves nothing behind."""
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise MusicnnUnavailableError(f"--to {folder}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise MusicnnUnavailableError(f"--to {folder}: {probe} is not writable")


def read_checkpoint(prefix: Path) -> dict:
    """``{name: array}`` of the TF checkpoint ``prefix`` (``.index`` + ``.data-*``), read with
    TensorFlow's tensor bundle reader (no graph is imported, nothing is executed)."""
    tf = import_tensorflow()
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    except Exception as exc:  # tf raises DataLossError, NotFoundError... for a broken bundle
        raise MusicnnUnavailableError(f"cannot read the musicnn checkpoint {prefix.name} "
                                      f"({type(exc).__name__})") from None


def convert_wheel(wheel: Path, folder: Path) -> Path:
    """Check ``wheel``'s sha256, convert its MTT and MSD checkpoints and write the weight files
    and ``musicnn.json`` into ``folder``; returns ``folder``."""
    wheel = Path(wheel)
    if not wheel.is_file():
        raise MusicnnUnavailableError(f"no such wheel: {wheel}")
    digest = sha256_file(wheel)
    if digest != WHEEL_SHA256:
        raise MusicnnUnavailableError(f"{wheel.name} has sha256 {digest[:16]}..., not that of PyPI's "
                                      f"{WHEEL_NAME} ({WHEEL_SHA256[:16]}...): refusing to convert it")
    from safetensors.torch import save_file
    states = {}
    with tempfile.TemporaryDirectory(prefix="musicnn-") as tmp, zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for model in MODELS:
            for suffix in CHECKPOINT_FILES:   # fixed member names, written under names of our own
                member = f"musicnn/{model.upper()}_musicnn/{suffix}"
                if member not in names:
                    raise MusicnnUnavailableError(f"{wheel.name} lacks {member}")
                Path(tmp, f"{model}{suffix}").write_bytes(archive.read(member))
            states[model] = tf_to_state_dict(read_checkpoint(Path(tmp, model)))
        licence = archive.read(LICENCE_MEMBER).decode("utf-8", "replace") if LICENCE_MEMBER in names else ""
    paths = weight_paths(folder)
    for model in MODELS:
        with atomic_path(paths[model]) as part:
            save_file(states[model], str(part))
    write_json_atomic(paths["info"], {
        "tags": {m: list(TAGS[m]) for m in MODELS},
        "source": f"PyPI {WHEEL_NAME} (musicnn by Jordi Pons, Music Technology Group, UPF): "
                  f"MTT_musicnn and MSD_musicnn checkpoints converted to safetensors",
        "wheel_sha256": digest,
        "licence": "ISC", "licence_text": licence.strip()})
    return Path(folder)


def fetch_tagger(options: FetchTaggerOptions) -> Path:
    """Download (unless ``options.wheel``) and convert musicnn's weights; returns the folder.
    The destination and TensorFlow are checked first: no download that could not be used."""
    folder = Path(options.to).expanduser() if options.to else default_dir()
    check_destination(folder)
    import_tensorflow()
    if options.wheel:
        return convert_wheel(Path(options.wheel).expanduser(), folder)
    with tempfile.TemporaryDirectory(prefix="musicnn-wheel-") as tmp:
        return convert_wheel(download_wheel(Path(tmp)), folder)


__all__ = ["FetchTaggerOptions", "MusicnnUnavailableError", "fetch_tagger", "convert_wheel", "default_dir",
           "tf_to_state_dict", "INFO_FILE"]
