"""``fetch-tagger musicnn``'s converter (musicnn_fetch.py) and the torch port (musicnn.py).

The real weights come from PyPI, which tests cannot reach, so a checkpoint with musicnn's real
variable names and shapes (as listed by the released MTT_musicnn checkpoint) and random values
is written with TensorFlow here, packed into a fake wheel, converted, and the torch network's
output is compared with a reference computed by TensorFlow ops transcribed from musicnn's
models.py on the checkpoint's own (TF-layout) tensors: transposes, "same" padding and the
order of the pooled features are checked independently of the converter's mapping. (Against
the released graph itself, imported from its .meta, the port differs by 2e-6 in probability:
docs/dataset_tools.md.)"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dataset_tools.__main__ import main
from dataset_tools.cli import EXIT_BAD_INPUT
from dataset_tools.musicnn_fetch import MusicnnUnavailableError, tf_to_state_dict

# The network's tensors in the released checkpoints (MTT_musicnn and MSD_musicnn alike).
CONV_SHAPES = {"conv2d": [7, 38, 1, 204], "conv2d_1": [7, 67, 1, 204], "conv2d_2": [128, 1, 1, 51],
               "conv2d_3": [64, 1, 1, 51], "conv2d_4": [32, 1, 1, 51], "conv2d_5": [7, 561, 1, 64],
               "conv2d_6": [7, 64, 1, 64], "conv2d_7": [7, 64, 1, 64], "dense": [1506, 200], "dense_1": [200, 50]}
BN_SIZES = [1, 204, 204, 51, 51, 51, 64, 64, 64, 1506, 200]


def _bn(i: int) -> str:
    return "batch_normalization" + (f"_{i}" if i else "")


def fake_checkpoint(seed: int = 0) -> dict:
    """``{name: float32 array}``: musicnn's variable names and shapes, random values, plus the
    Adam slots and beta powers the released checkpoints also hold."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in CONV_SHAPES.items():
        fan_in = int(np.prod(shape[:-1]))
        tensors[f"{name}/kernel"] = rng.normal(0, 1.5 / np.sqrt(fan_in), shape).astype(np.float32)
        tensors[f"{name}/bias"] = rng.normal(0, 0.1, shape[-1:]).astype(np.float32)
    for i, size in enumerate(BN_SIZES):
        tensors[f"{_bn(i)}/gamma"] = rng.uniform(0.5, 1.5, size).astype(np.float32)
        tensors[f"{_bn(i)}/beta"] = rng.normal(0, 0.2, size).astype(np.float32)
        tensors[f"{_bn(i)}/moving_mean"] = rng.normal(0, 0.3, size).astype(np.float32)
        tensors[f"{_bn(i)}/moving_variance"] = rng.uniform(0.5, 2.0, size).astype(np.float32)
    tensors.update({f"{k}/Adam": np.zeros_like(v) for k, v in list(tensors.items())[:3]})
    tensors["beta1_power"] = np.float32(0.9)
    return tensors


def tf_reference(w: dict, x: np.ndarray) -> np.ndarray:
    """``[B, 50]`` logits of ``x`` ``[B, T, 96]``: musicnn's graph (models.py, inference mode) in
    TensorFlow ops, NHWC, on the checkpoint's tensors as they are."""
    import tensorflow as tf

    def bn(t, i):
        n = _bn(i)
        return tf.nn.batch_normalization(t, w[f"{n}/moving_mean"], w[f"{n}/moving_variance"], w[f"{n}/beta"],
                                         w[f"{n}/gamma"], 1e-3)

    def conv(t, name, padding):
        return tf.nn.relu(tf.nn.conv2d(t, w[f"{name}/kernel"], 1, padding) + w[f"{name}/bias"])

    def pad3(t):
        return tf.pad(t, [[0, 0], [3, 3], [0, 0], [0, 0]])

    inp = bn(tf.constant(x)[..., None], 0)                                  # [B, T, 96, 1]
    blocks = [("conv2d", pad3(inp), "VALID"), ("conv2d_1", pad3(inp), "VALID"), ("conv2d_2", inp, "SAME"),
              ("conv2d_3", inp, "SAME"), ("conv2d_4", inp, "SAME")]
    front = tf.concat([tf.reduce_max(bn(conv(t, name, pad), i + 1), axis=2)
                       for i, (name, t, pad) in enumerate(blocks)], 2)[..., None]   # [B, T, 561, 1]
    m1 = tf.transpose(bn(conv(pad3(front), "conv2d_5", "VALID"), 6), [0, 1, 3, 2])   # [B, T, 64, 1]
    m2 = tf.transpose(bn(conv(pad3(m1), "conv2d_6", "VALID"), 7), [0, 1, 3, 2]) + m1
    m3 = tf.transpose(bn(conv(pad3(m2), "conv2d_7", "VALID"), 8), [0, 1, 3, 2]) + m2
    feats = tf.concat([front, m1, m2, m3], 2)                                # [B, T, 753, 1]
    pooled = tf.concat([tf.reduce_max(feats, 1), tf.reduce_mean(feats, 1)], 2)   # [B, 753, 2]
    flat = bn(tf.reshape(pooled, [x.shape[0], -1]), 9)
    hidden = bn(tf.nn.relu(flat @ w["dense/kernel"] + w["dense/bias"]), 10)
    return (hidden @ w["dense_1/kernel"] + w["dense_1/bias"]).numpy()


def write_bundle(tensors: dict, prefix: Path) -> None:
    import tensorflow as tf
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[n]) for n in names])


def fake_wheel(tmp_path: Path, checkpoints: dict) -> Path:
    """A zip laid out as PyPI's musicnn wheel, holding ``checkpoints[model]`` bundles."""
    wheel = tmp_path / "musicnn-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for model, tensors in checkpoints.items():
            write_bundle(tensors, tmp_path / model)
            for suffix in (".index", ".data-00000-of-00001"):
                archive.write(tmp_path / f"{model}{suffix}", f"musicnn/{model.upper()}_musicnn/{suffix}")
        archive.writestr("musicnn-0.1.0.dist-info/LICENSE.md", "ISC licence text")
        archive.writestr("../evil.txt", "never extracted")
    return wheel


def test_a_converted_checkpoint_reproduces_musicnns_graph(tmp_path, monkeypatch):
    import torch
    import dataset_tools.musicnn_fetch as fetch
    from dataset_tools.musicnn import load_musicnn
    tensors = {"mtt": fake_checkpoint(0), "msd": fake_checkpoint(1)}
    (tmp_path / "w").mkdir()
    wheel = fake_wheel(tmp_path / "w", tensors)
    monkeypatch.setattr(fetch, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    out = tmp_path / "weights"
    assert main(["fetch-tagger", "musicnn", "--wheel", str(wheel), "--to", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["musicnn-msd.safetensors", "musicnn-mtt.safetensors",
                                                     "musicnn.json"]
    musicnn = load_musicnn(out)
    x = np.random.default_rng(2).normal(2.0, 1.0, (2, 40, 96)).astype(np.float32)
    for model in ("mtt", "msd"):
        expected = tf_reference(tensors[model], x)
        with torch.no_grad():
            got = musicnn.nets[model](torch.from_numpy(x)).numpy()
        assert expected.std() > 0.1   # not a degenerate comparison
        assert np.abs(got - expected).max() < 1e-3 * max(1.0, np.abs(expected).max()), model
    assert not (tmp_path / "evil.txt").exists() and not (out.parent / "evil.txt").exists()


def test_the_converter_refuses_a_missing_unexpected_or_misshapen_tensor():
    good = fake_checkpoint(0)
    state = tf_to_state_dict(good)
    assert state["front.timbral77.weight"].shape == (204, 1, 7, 67) and state["mid.0.weight"].shape == (64, 561, 7)
    cases = [({k: v for k, v in good.items() if k != "conv2d_6/bias"}, "lacks 1 tensor(s), e.g. mid.1.bias"),
             (dict(good, **{"conv2d_8/kernel": good["conv2d_7/kernel"]}), "unexpected tensor 'conv2d_8/kernel'"),
             (dict(good, **{"dense/kernel": np.zeros((1506, 201), np.float32)}), "dense.weight has shape [201, 1506]")]
    for tensors, message in cases:
        with pytest.raises(MusicnnUnavailableError) as err:
            tf_to_state_dict(tensors)
        assert message in str(err.value) and "\n" not in str(err.value)


def test_a_wheel_with_another_sha256_is_refused_in_one_line(tmp_path, capsys):
    wheel = tmp_path / "musicnn-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("musicnn/MTT_musicnn/.index", b"not a checkpoint")
    out = tmp_path / "weights"
    assert main(["fetch-tagger", "musicnn", "--wheel", str(wheel), "--to", str(out)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "refusing to convert" in err
    assert not out.exists()


def test_a_failed_pip_download_is_one_line_saying_how_else(tmp_path, capsys, monkeypatch):
    import subprocess
    import dataset_tools.musicnn_fetch as fetch
    seen = []

    def failing_pip(command, **kwargs):
        seen.append(command)
        return subprocess.CompletedProcess(command, 1, "", "Looking in indexes...\nERROR: No matching "
                                           "distribution found for musicnn==0.1.0\n")
    monkeypatch.setattr(fetch.subprocess, "run", failing_pip)
    assert main(["fetch-tagger", "musicnn", "--to", str(tmp_path / "weights")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No matching distribution" in err and "--wheel FILE" in err
    assert seen[0][1:4] == ["-m", "pip", "download"] and "--no-deps" in seen[0] and "--only-binary=:all:" in seen[0]
    assert not (tmp_path / "weights").exists()


def test_a_file_as_the_destination_is_one_line_before_any_download(tmp_path, capsys, monkeypatch):
    import dataset_tools.musicnn_fetch as fetch
    calls = []
    monkeypatch.setattr(fetch.subprocess, "run", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(fetch, "import_tensorflow", lambda: calls.append("tf"))
    afile = tmp_path / "afile"
    afile.write_text("x")
    for to in (afile, afile / "below"):
        assert main(["fetch-tagger", "musicnn", "--to", str(to)]) == EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "is a file, not a folder" in err, err
    assert calls == [] and afile.read_text() == "x"


def test_tensorflow_is_imported_quietly_before_the_download(tmp_path):
    """Fresh interpreter: TensorFlow is loaded (its start-up notices muted) before pip runs, so
    a machine without it learns so before the download; stderr is the one error line."""
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[2]
    code = ("import sys; import dataset_tools.musicnn_fetch as f; from dataset_tools.__main__ import main\n"
            "def download(folder):\n"
            "    print('tensorflow' in sys.modules); raise f.MusicnnUnavailableError('pip download failed')\n"
            "f.download_wheel = download\n"
            "sys.exit(main(sys.argv[1:]))")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code, "fetch-tagger", "musicnn", "--to", str(tmp_path / "w")],
                          capture_output=True, text=True, cwd=root, env=env)
    assert done.returncode == EXIT_BAD_INPUT and done.stdout.strip() == "True", (done.stdout, done.stderr)
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    code = "import sys; sys.modules['tensorflow'] = None; " + code   # no tensorflow: one line, pip never runs
    done = subprocess.run([sys.executable, "-c", code, "fetch-tagger", "musicnn", "--to", str(tmp_path / "w")],
                          capture_output=True, text=True, cwd=root, env=env)
    assert done.returncode == EXIT_BAD_INPUT and done.stdout == "", (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and "needs tensorflow" in done.stderr, done.stderr
