"""Helpers for the genre_classifier tests (a unique module name: tests/ has no packages)."""
import json
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf


def write_wav(path, seconds=4.0, rate=44_100, genre="plucks", seed=0, silent=False):
    from genre_classifier.toy import toy_track
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = np.zeros(int(seconds * rate), np.float32) if silent else toy_track(genre, seconds, seed, rate)
    sf.write(path, audio, rate, subtype="PCM_16")
    return path


def make_prepared_unknown(dataset, genres=("beats", "drone"), seed=50):
    """A dataset laid out as ``dataset_tools prepare`` writes it, with only ``unknown/`` tracks:
    ``dataset/unknown/*.wav`` + ``.txt``/``.json`` sidecars, and the four manifests
    (manifest.jsonl, train.jsonl, valid.jsonl by the row's split, unlabelled.jsonl).

    Each source track is two segment files (``<name>_000.wav``, ``<name>_001.wav``)."""
    rows = []
    for i, genre in enumerate(genres):
        for seg in range(2):
            name = f"track{i}_{seg:03d}"
            wav = write_wav(dataset / "unknown" / f"{name}.wav", 4.0, genre=genre, seed=seed + 10 * i + seg)
            caption = f"Track{i}, medium tempo at {80 + i} bpm, in A minor"
            wav.with_suffix(".txt").write_text(caption)
            meta = {"title": name, "artist": "", "key": "A minor", "bpm": 80 + i, "genre": "", "moods": [],
                    "description": caption, "name": name, "instrument": "", "keywords": ["medium tempo"]}
            wav.with_suffix(".json").write_text(json.dumps(meta))
            rows.append({"path": f"unknown/{name}.wav", "duration": 4.0, "sample_rate": 44100,
                         "amplitude": None, "weight": None, "info_path": None, "genre": None,
                         "source": f"unknown/track{i}.mp3", "split": "valid" if i == 1 else "train",
                         "segment": seg})

    def write(name, subset):
        (dataset / name).write_text("".join(json.dumps(r) + "\n" for r in subset))
    write("manifest.jsonl", rows)
    write("train.jsonl", [r for r in rows if r["split"] == "train"])
    write("valid.jsonl", [r for r in rows if r["split"] == "valid"])
    write("unlabelled.jsonl", rows)
    return dataset


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def to_mp3(wav):
    mp3 = wav.with_suffix(".mp3")
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(wav), str(mp3)], check=True)
    wav.unlink()
    return mp3


needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
