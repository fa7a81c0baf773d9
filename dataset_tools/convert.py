"""Convert one source file into captioned training segments (runs in a worker process).

``convert_source(task)`` decodes (or renders, for MIDI) one file, converts it to the
output rate and channel count, trims leading/trailing silence, optionally normalises
loudness, estimates tempo and key, cuts it into segments and writes, for each segment,
``<stem>.wav`` + ``<stem>.txt`` (caption) + ``<stem>.json`` (audiocraft MusicInfo), each
atomically. It never raises: every problem becomes a ``skipped`` result with a one-line
reason (``failed`` for our own bugs, which are retried on the next run; a full or read-only
disk is ``failed`` and ``fatal``: ``prepare`` stops there).

It is two stages, which ``prepare`` runs in separate worker pools: ``decode_stage``
(everything up to the WAVs, no librosa) and ``caption_stage`` (tempo/key with librosa,
then captions and JSON); see ``parallel.py`` for why.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from .analysis import analysis_excerpt
from .audio_io import DISK_ERRNOS, AudioDecodeError, load_audio, to_channels, write_wav_atomic
from .captions import caption_values, genre_words, music_info, parse_filename, render_caption
from .files import segment_stem, write_text_atomic
from .midi_render import MidiError, render_midi
from .options import PrepareOptions
from .parallel import Handoff
from .segments import normalize_loudness, segment_bounds, trim_silence

MIN_TRACK_SECONDS = 0.1  # a whole track with less sound than this is skipped as empty


@dataclass(frozen=True)
class ConvertTask:
    """One source file to convert; picklable, sent to a worker."""
    path: str                 # absolute source path
    rel: str                  # path relative to SRC (POSIX)
    kind: str                 # "audio" or "midi"
    genre_dir: str | None     # top-level folder in SRC, None for files directly in SRC
    unlabelled: bool          # unknown/ (or unknow/) or directly in SRC
    stem: str                 # output stem relative to OUT, e.g. "rock/Song"
    out: str                  # OUT folder
    options: PrepareOptions
    soundfont: str | None     # resolved soundfont for MIDI files


@dataclass
class ConvertResult:
    """What happened to one source. ``segments``: one dict per written segment."""
    rel: str
    status: str               # "converted", "skipped" (bad input) or "failed" (unexpected)
    reason: str = ""
    track: dict = field(default_factory=dict)
    segments: list = field(default_factory=list)
    seconds: float = 0.0      # wall-clock time spent on this file
    fatal: bool = False       # failed for the machine (disk full, read-only): every next file would too


@dataclass
class DecodedTrack(Handoff):
    """A track after the first stage: its WAV segments written, captions still to do.
    ``excerpt``: the analysis excerpt (mono float32 ``[n]`` at ``ANALYSIS_SAMPLE_RATE``,
    at most ``ANALYSIS_MAX_SECONDS``), None when analysis is off."""
    task: ConvertTask
    segments: list            # one dict per written segment, captions not filled in yet
    track: dict               # facts of the track (kind, title, artist, durations, instrument...)
    excerpt: np.ndarray | None
    seconds: float = 0.0      # wall-clock time spent so far


def convert_source(task: ConvertTask) -> ConvertResult:
    """Convert ``task`` (see module doc) in one go: ``caption_stage(decode_stage(task))``.
    Never raises."""
    first = decode_stage(task)
    return caption_stage(first) if isinstance(first, DecodedTrack) else first


def decode_stage(task: ConvertTask) -> ConvertResult | DecodedTrack:
    """Decode, clean and cut ``task``'s source and write its WAV segments (no librosa).
    Returns a final ``ConvertResult`` when the file is skipped. Never raises."""
    return _guarded(task.rel, _decode_and_write, task)


def caption_stage(decoded: DecodedTrack) -> ConvertResult:
    """Estimate tempo and key (librosa), then write each segment's caption and JSON.
    Never raises."""
    result = _guarded(decoded.task.rel, _caption, decoded)
    result.seconds += decoded.seconds
    return result


def _guarded(rel: str, func, arg):
    """``func(arg)``, with every error turned into a skipped/failed result on one line."""
    start = time.perf_counter()
    try:
        result = func(arg)
    except (AudioDecodeError, MidiError) as exc:
        result = ConvertResult(rel, "skipped", str(exc).splitlines()[0] if str(exc) else "cannot decode")
    except MemoryError:
        result = ConvertResult(rel, "skipped", "not enough memory to decode this file")
    except OSError as exc:  # e.g. OUT's disk is full or not writable
        result = ConvertResult(rel, "failed", f"cannot write outputs ({exc.strerror or exc})",
                               fatal=exc.errno in DISK_ERRNOS)
    except Exception as exc:  # a bug of ours: report it on one line, keep the run going
        text = str(exc).splitlines()[0] if str(exc) else ""
        result = ConvertResult(rel, "failed", f"unexpected error: {type(exc).__name__}: {text}")
    result.seconds = time.perf_counter() - start
    return result


def _decode(task: ConvertTask) -> tuple[np.ndarray, int, dict]:
    """Audio as float32 ``[n]`` (mono) or ``[channels, n]`` at the output rate, plus facts."""
    opts = task.options
    facts: dict = {"instrument": ""}
    if task.kind == "midi":
        audio, rate, summary = render_midi(task.path, opts.sample_rate, task.soundfont,
                                           release_seconds=opts.midi_release_seconds)
        facts["instrument"] = ", ".join(summary.instruments[:3])
        facts["midi_notes"] = summary.notes
        if summary.repaired:
            facts["midi_repairs"] = summary.repaired
    elif opts.remove_vocals:
        from .separation import instrumental, load_separator
        # Separate the stereo mix (better than its mono downmix), then mix down as asked.
        audio, rate = load_audio(task.path, sample_rate=opts.sample_rate, mono=False)
        facts.update(_mono_copied(audio, opts.channels))
        separator = load_separator(opts.separation_model, opts.separation_device)
        audio = instrumental(to_channels(audio, 2) if audio.shape[0] > 2 else audio, rate, separator)
        facts["vocals_removed"] = True
    else:
        audio, rate = load_audio(task.path, sample_rate=opts.sample_rate, mono=opts.channels == 1)
        facts.update(_mono_copied(audio, opts.channels))
    return to_channels(audio, opts.channels), rate, facts


def _mono_copied(audio: np.ndarray, channels: int) -> dict:
    """``{"mono_copied": True}`` when a mono source (``[n]`` or ``[1, n]``) becomes a stereo
    output: both sides are the same, which the report says (a stereo model learns nothing
    about left and right from such a track)."""
    return {"mono_copied": True} if channels > 1 and (audio.ndim == 1 or audio.shape[0] == 1) else {}


def _decode_and_write(task: ConvertTask) -> ConvertResult | DecodedTrack:
    opts = task.options
    audio, rate, facts = _decode(task)
    decoded_seconds = audio.shape[-1] / rate
    peak = float(np.abs(audio).max(initial=0.0))
    if peak > 1.0:  # float sources can exceed full scale: scale down rather than clip
        audio = audio / np.float32(peak)
        facts["scaled_from_peak"] = round(peak, 3)
    start, end = (0, audio.shape[-1]) if opts.trim_db is None else trim_silence(audio, opts.trim_db)
    if end <= start:
        return ConvertResult(task.rel, "skipped", f"silent (no sound above {opts.trim_db:g} dBFS)")
    audio = audio[..., start:end]
    if audio.shape[-1] < MIN_TRACK_SECONDS * rate:
        return ConvertResult(task.rel, "skipped", f"too short ({audio.shape[-1] / rate:.3f} s of sound, "
                                                   f"minimum {MIN_TRACK_SECONDS:g} s)")
    if opts.loudness_lufs is not None:
        audio = normalize_loudness(audio, rate, opts.loudness_lufs)
    # What the analysis needs (<= 60 s at 22.05 kHz), so the audio itself never travels.
    excerpt = analysis_excerpt(audio, rate) if opts.analyze else None

    title, artist = parse_filename(os.path.splitext(PurePosixPath(task.rel).name)[0])
    bounds = segment_bounds(audio.shape[-1], rate, opts.segment_seconds, opts.overlap_seconds,
                            opts.min_seconds)
    out = Path(task.out)
    segments = []
    for index, (a, b) in enumerate(bounds):
        seg_stem = segment_stem(task.stem, index, len(bounds))
        # WAV first, caption and JSON later: a kill between them leaves a WAV without its
        # JSON, which the state check sees as incomplete and redoes.
        write_wav_atomic(out / f"{seg_stem}.wav", audio[..., a:b], rate, subtype=opts.subtype)
        segments.append({"path": f"{seg_stem}.wav", "duration": round((b - a) / rate, 6),
                         "sample_rate": rate, "segment": index,
                         "start": round((start + a) / rate, 6), "caption": ""})
    track = {"kind": task.kind, "genre_dir": task.genre_dir,
             "genre": None if task.unlabelled else task.genre_dir,
             "title": title, "artist": artist, "bpm": None, "key": None,
             "decoded_seconds": round(decoded_seconds, 6),
             "seconds": round(audio.shape[-1] / rate, 6), **facts}
    return DecodedTrack(task, segments, track, excerpt)


def _caption(decoded: DecodedTrack) -> ConvertResult:
    task, opts = decoded.task, decoded.task.options
    bpm = key = None
    if decoded.excerpt is not None:
        from .analysis import analyse_excerpt  # librosa: imported only by processes that analyse
        bpm, key = analyse_excerpt(decoded.excerpt)
    out, facts = Path(task.out), decoded.track
    genre = genre_words(task.genre_dir, task.unlabelled)
    for seg in decoded.segments:
        values = caption_values(genre=genre, title=facts["title"], artist=facts["artist"],
                                bpm=bpm, key=key, instrument=facts["instrument"],
                                name=PurePosixPath(seg["path"]).name[:-len(".wav")])
        seg["caption"] = render_caption(opts.caption_template, values)
        wav = out / seg["path"]
        write_text_atomic(wav.with_suffix(".txt"), seg["caption"])
        write_text_atomic(wav.with_suffix(".json"),
                          json.dumps(music_info(values, seg["caption"], bpm), ensure_ascii=False,
                                     indent=2) + "\n")
    track = dict(facts, bpm=bpm, key=key)
    return ConvertResult(task.rel, "converted", track=track, segments=decoded.segments)
