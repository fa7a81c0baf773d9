"""Helpers for the dataset_tools tests: generated music libraries (see conftest.py).

Everything is generated in code (numpy tones, ffmpeg for MP3/M4A/Opus, mido for MIDI):
clips of 0.5-5 s so the whole suite stays fast. ``build_library`` makes one SRC with
every supported format and every kind of bad input, with the expected outcome of each.
(A uniquely named module, not conftest.py: other test folders have conftests too.)
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 44100
# Test runs cut segments at 2 s (instead of 30) so short fixtures exercise segmenting.
SEGMENT_SECONDS = 2.0
MIN_SECONDS = 0.5


def tone(seconds: float, rate: int = RATE, freq: float = 441.0, channels: int = 1,
         amp: float = 0.5) -> np.ndarray:
    """A cosine (full amplitude at both ends when freq divides the rate: nothing to trim).
    Returns ``[n]`` or ``[n, channels]`` float32, channel k a little quieter than k-1."""
    t = np.arange(int(round(seconds * rate))) / rate
    y = (amp * np.cos(2 * np.pi * freq * t)).astype(np.float32)
    if channels == 1:
        return y
    return np.stack([y * (1.0 - 0.1 * k) for k in range(channels)], axis=1)


def write_audio(path: Path, audio: np.ndarray, rate: int = RATE, subtype: str | None = None) -> Path:
    """Write with libsndfile (wav, flac, ogg, aiff) or ffmpeg (mp3, m4a, opus, aac)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix.lower()
    if ext in (".wav", ".flac", ".ogg", ".aiff", ".aif"):
        fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".aiff": "AIFF", ".aif": "AIFF"}[ext]
        sf.write(str(path), audio, rate, format=fmt, subtype=subtype)
        return path
    tmp = path.with_name(path.name + ".src.wav")
    sf.write(str(tmp), audio, rate, subtype="FLOAT")
    codec = {".mp3": ["-c:a", "libmp3lame", "-b:a", "128k"], ".m4a": ["-c:a", "aac", "-b:a", "128k"],
             ".opus": ["-c:a", "libopus", "-b:a", "64k"], ".aac": ["-c:a", "aac"]}[ext]
    fmt = ["-f", "mp4"] if ext == ".m4a" else ["-f", "mp3"] if ext == ".mp3" else \
        ["-f", "opus"] if ext == ".opus" else ["-f", "adts"]
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(tmp), *codec, *fmt, str(path)],
                   check=True)
    tmp.unlink()
    return path


def write_midi(path: Path, notes=((60, 0.0, 0.5), (64, 0.5, 1.0), (67, 1.0, 1.5)), extra=(),
               program: int = 0) -> Path:
    """A type-1 MIDI file at 120 bpm: ``notes`` as (pitch, start s, end s); ``extra`` raw
    (seconds, mido.Message) events, for broken files."""
    import mido
    mid = mido.MidiFile(type=1, ticks_per_beat=480)
    meta, track = mido.MidiTrack(), mido.MidiTrack()
    mid.tracks += [meta, track]
    meta.append(mido.MetaMessage("set_tempo", tempo=500_000))
    events = [(0.0, mido.Message("program_change", program=program))]
    for pitch, start, end in notes:
        events.append((start, mido.Message("note_on", note=pitch, velocity=90)))
        events.append((end, mido.Message("note_off", note=pitch, velocity=0)))
    events += list(extra)
    events.sort(key=lambda e: (e[0], e[1].type == "note_on"))  # offs before ons at a tie
    now = 0
    for seconds, msg in events:
        tick = int(round(seconds * 960))  # 480 ticks per beat at 120 bpm = 960 per second
        track.append(msg.copy(time=tick - now))
        now = tick
    path.parent.mkdir(parents=True, exist_ok=True)
    mid.save(str(path))
    return path


@dataclass
class Library:
    src: Path
    # rel path -> ("converted", expected seconds of output or None) | ("skipped", reason words)
    expect: dict = field(default_factory=dict)
    ignored: tuple = ()
    folder_named_like_file: str = ""

    def converted(self) -> list[str]:
        return [rel for rel, (status, _) in self.expect.items() if status == "converted"]


def build_library(root: Path) -> Library:
    """The everything-library: every format, every bad input (see module doc)."""
    src = root / "src"
    lib = Library(src)

    def good(rel: str, audio: np.ndarray, rate: int = RATE, seconds: float | None = None, **kw):
        write_audio(src / rel, audio, rate, **kw)
        lib.expect[rel] = ("converted", seconds if seconds is not None else len(audio) / rate)

    # --- every format, odd rates and channel counts ----------------------------------
    good("rock/01 - Highway_Song.wav", tone(3.0), subtype="PCM_16")
    good("rock/Stereo Song.flac", tone(2.5, 48000, freq=480.0, channels=2), 48000)
    good("rock/LOUD.MP3", tone(3.0, channels=2))
    good("rock/Song.wav", tone(1.5, freq=882.0))
    good("rock/Song.flac", tone(2.5, freq=630.0))             # same name, other extension
    good("rock/What?.wav", tone(1.0, freq=441.0))
    good("rock/What_.wav", tone(1.2, freq=441.0))             # same name once made file-safe
    good("jazz/Blue in Green.m4a", tone(2.0, channels=2))
    good("jazz/Voice.opus", tone(2.0, 48000, freq=480.0), 48000)
    good("jazz/Vinyl.ogg", tone(2.0))
    good("jazz/Old.aiff", tone(2.0, 22050, freq=441.0), 22050)
    good("jazz/Surround 5.1.wav", tone(1.5, 96000, freq=480.0, channels=6), 96000)
    good("jazz/Three.wav", tone(1.5, 8000, freq=400.0, channels=3), 8000)
    good("jazz/Long Take.flac", tone(5.0))                    # 2 + 2 + 1 s segments
    good("jazz/Almost.flac", tone(4.3), seconds=4.0)          # 2 + 2 s, the 0.3 s remainder dropped
    good("unknown/Mystery Track.wav", tone(2.0, freq=735.0))
    good("unknow/Another One.flac", tone(2.0, freq=525.0))
    good("Loose Track.wav", tone(1.5, freq=630.0))
    good("misc/short clip.wav", tone(0.5))                    # kept whole: shorter than a segment
    quiet = np.zeros(int(RATE * 1.0), np.float32)
    good("misc/leading silence.wav", np.concatenate([quiet, tone(2.0), quiet[: RATE // 2]]), seconds=2.0)
    good("misc/folder.mp3/inside.wav", tone(1.0))             # inside a folder named like a file
    lib.folder_named_like_file = "misc/folder.mp3/"
    write_midi(src / "classical/Symphony No.3.mid")
    lib.expect["classical/Symphony No.3.mid"] = ("converted", None)
    write_midi(src / "classical/Repeated Notes.mid", notes=[(60, 0.0, 1.0)],
               extra=[(0.5, _msg("note_on", note=60, velocity=80)), (1.2, _msg("note_off", note=60))])
    lib.expect["classical/Repeated Notes.mid"] = ("converted", None)
    write_midi(src / "classical/Orphans.MIDI", extra=[(0.0, _msg("note_off", note=50)),
                                                      (0.7, _msg("note_off", note=51))])
    lib.expect["classical/Orphans.MIDI"] = ("converted", None)

    # --- bad input: each converted or skipped with a reason ---------------------------
    bad = src / "bad"
    bad.mkdir(parents=True)
    (bad / "zero.mp3").write_bytes(b"")
    lib.expect["bad/zero.mp3"] = ("skipped", "empty")
    (bad / "text.wav").write_text("this is not audio\n" * 50)
    lib.expect["bad/text.wav"] = ("skipped", "not an audio file")
    (bad / "random.flac").write_bytes(np.random.default_rng(1).bytes(30000))
    lib.expect["bad/random.flac"] = ("skipped", "damaged")
    full = write_audio(bad / "full.m4a", tone(3.0))
    data = full.read_bytes()
    full.unlink()
    (bad / "truncated.m4a").write_bytes(data[: len(data) // 2])
    lib.expect["bad/truncated.m4a"] = ("skipped", "truncated")
    full = write_audio(bad / "full.mp3", tone(4.0))
    data = full.read_bytes()
    full.unlink()
    (bad / "truncated.mp3").write_bytes(data[: len(data) // 2])
    lib.expect["bad/truncated.mp3"] = ("converted", None)     # what is there is decoded
    full = write_audio(bad / "full.wav", tone(3.0))
    data = full.read_bytes()
    full.unlink()
    (bad / "truncated.wav").write_bytes(data[: 44 + (len(data) - 44) // 2])
    lib.expect["bad/truncated.wav"] = ("converted", 1.5)
    write_audio(bad / "silent.wav", np.zeros(RATE * 2, np.float32))
    lib.expect["bad/silent.wav"] = ("skipped", "silent")
    write_audio(bad / "tiny.wav", tone(0.02))
    lib.expect["bad/tiny.wav"] = ("skipped", "too short")
    os.mkfifo(bad / "pipe.wav")
    lib.expect["bad/pipe.wav"] = ("skipped", "not a regular file")
    os.symlink("loop.mp3", bad / "loop.mp3")
    lib.expect["bad/loop.mp3"] = ("skipped", "symbolic link loop")
    os.symlink("missing-target.ogg", bad / "broken.ogg")
    lib.expect["bad/broken.ogg"] = ("skipped", "broken symbolic link")
    os.symlink("..", bad / "again")                           # a folder loop back to SRC
    lib.expect["bad/again/"] = ("skipped", "symbolic link loop")
    write_midi(bad / "no notes.mid", notes=[])
    lib.expect["bad/no notes.mid"] = ("skipped", "MIDI has no notes")
    good_midi = write_midi(bad / "tmp.mid").read_bytes()
    (bad / "tmp.mid").unlink()
    (bad / "garbage after header.mid").write_bytes(good_midi[:14] + np.random.default_rng(2).bytes(300))
    lib.expect["bad/garbage after header.mid"] = ("skipped", "not a valid MIDI file")
    (bad / "truncated.mid").write_bytes(good_midi[: len(good_midi) - 10])
    lib.expect["bad/truncated.mid"] = ("skipped", "truncated")
    (bad / "words.midi").write_text("not a midi file at all")
    lib.expect["bad/words.midi"] = ("skipped", "not a valid MIDI file")
    unreadable = write_audio(bad / "unreadable.wav", tone(1.0))
    unreadable.chmod(0)
    # Root (or CAP_DAC_OVERRIDE, or a file system that ignores modes) reads it anyway: then the
    # file is simply converted. Asking the file itself, not the user id, covers every case.
    if _readable(unreadable):
        lib.expect["bad/unreadable.wav"] = ("converted", 1.0)
    else:
        lib.expect["bad/unreadable.wav"] = ("skipped", "not readable")
    (src / "rock" / "cover.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (src / "notes.txt").write_text("my library\n")
    (src / "rock" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    lib.ignored = ("rock/cover.jpg", "notes.txt")
    return lib


def _readable(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.read(1)
        return True
    except PermissionError:
        return False


def _msg(kind, **kw):
    import mido
    return mido.Message(kind, **kw)


def snapshot(root: Path) -> dict:
    """rel path -> (kind, size, mtime_ns, sha1) of everything under ``root`` (links not followed)."""
    snap = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                snap[rel] = ("link", os.readlink(path))
            elif path.is_file() and os.access(path, os.R_OK) and not path.is_fifo():
                snap[rel] = ("file", st.st_size, st.st_mtime_ns, hashlib.sha1(path.read_bytes()).hexdigest())
            else:
                snap[rel] = ("other", st.st_mode, st.st_mtime_ns)
    return snap
