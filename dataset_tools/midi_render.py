"""Render MIDI files to audio with FluidSynth and a General MIDI soundfont.

Real-world MIDI files are often broken in small ways that make synthesizers hang, play
stuck notes or nothing at all. So each file is first read with mido (``clip=True``: data
bytes over 127 are clipped, not fatal), then *sanitised* on one merged timeline:

- a note-on for a key that is already sounding first releases it (a clean re-strike);
- a note-off for a key that is not sounding is dropped;
- notes still sounding at the end are released;
- only channel messages and tempo changes are kept (no sysex, lyrics, text...).

The clean copy is rendered by the ``fluidsynth`` program (float WAV, so loud passages do
not clip inside the synth) with a timeout, and the long release/reverb tail FluidSynth
leaves after the last note is cut to ``release_seconds``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Where Debian/Ubuntu/Fedora/Arch/Homebrew put General MIDI soundfonts, best first.
SOUNDFONT_CANDIDATES = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/share/soundfonts/TimGM6mb.sf2",
    "/usr/local/share/soundfonts/default.sf2",
    "/opt/homebrew/share/soundfonts/default.sf2",
)
SOUNDFONT_ENVS = ("DATASET_TOOLS_SOUNDFONT", "MUSICGEN_SOUNDFONT")  # the latter: scripts/install_system_deps.sh
MIDI_RELEASE_SECONDS = 1.0  # default audio kept after a rendered file's last note-off (release tail)
MAX_MIDI_SECONDS = 3600.0   # longer than this is almost surely a broken tempo map
RENDER_GAIN = 0.5           # fluidsynth -g: its default (0.2) is quiet; 0.5 rarely clips
FADE_SECONDS = 0.01         # fade applied where the release tail is cut, to avoid a click
DRUM_CHANNEL = 9


class MidiError(RuntimeError):
    """A MIDI file cannot be rendered; ``str(err)`` is a one-line reason."""


@dataclass
class MidiSummary:
    """What sanitising found: note count, timing (seconds) and the instruments that play."""
    notes: int = 0
    last_note_end: float = 0.0
    length: float = 0.0
    instruments: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)  # human-readable notes on fixes made


def find_soundfont(explicit=None) -> Path | None:
    """The soundfont to use: ``explicit`` (must exist), ``$DATASET_TOOLS_SOUNDFONT`` or
    ``$MUSICGEN_SOUNDFONT``, or the first General MIDI soundfont found in the usual system
    places; None if there is none."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ValueError(f"soundfont not found: {path}")
        return path.resolve()
    for var in SOUNDFONT_ENVS:
        env = os.environ.get(var)
        if env and Path(env).is_file():
            return Path(env).resolve()
    for candidate in SOUNDFONT_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate).resolve()
    return None


def read_midi(path):
    """Parse a MIDI file with mido, turning parse failures into one-line ``MidiError``s."""
    import mido
    try:
        return mido.MidiFile(str(path), clip=True)
    except EOFError:
        raise MidiError("MIDI file is truncated (ends in the middle of a track)") from None
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        text = str(exc).strip() or exc.__class__.__name__
        raise MidiError(f"not a valid MIDI file ({text})") from None


def _instrument_name(channel: int, program: int) -> str:
    if channel == DRUM_CHANNEL:
        return "drums"
    import pretty_midi  # only for its General MIDI program-name table
    return pretty_midi.program_to_instrument_name(program).lower()


def sanitize_midi(mid, force_program: int | None = None, max_seconds: float | None = None):
    """Return ``(clean type-0 MidiFile, MidiSummary)`` (see module doc for the rules).

    Args:
        force_program: if given, every melodic channel plays this General MIDI program
            (used by the example builder to give each genre its own instrument).
        max_seconds: cut the piece here, releasing the notes that still sound.
    """
    import mido
    summary = MidiSummary()
    merged = mido.merge_tracks(mid.tracks)
    tempo = 500_000  # microseconds per beat, MIDI's default (120 bpm)
    tpb = mid.ticks_per_beat or 480
    now = 0.0        # seconds
    abs_tick = 0
    held: set[tuple[int, int]] = set()
    programs = {ch: 0 for ch in range(16)}
    used_channels: set[int] = set()
    instruments: dict[str, None] = {}
    events: list[tuple[int, object]] = []  # (absolute tick, message)
    restrikes = orphans = 0
    for msg in merged:
        step = mido.tick2second(msg.time, tpb, tempo)
        if max_seconds is not None and now + step > max_seconds:
            break  # cut: what still sounds is released at the last event before the cut
        abs_tick += msg.time
        now += step
        if msg.is_meta:
            if msg.type == "set_tempo":
                tempo = msg.tempo if msg.tempo > 0 else tempo
                events.append((abs_tick, msg.copy(time=0)))
            continue
        if msg.type == "sysex":
            continue
        if msg.type == "program_change":
            if force_program is None:
                programs[msg.channel] = msg.program
                events.append((abs_tick, msg.copy(time=0)))
            continue
        if msg.type in ("note_on", "note_off"):
            key = (msg.channel, msg.note)
            if msg.type == "note_on" and msg.velocity > 0:
                if key in held:
                    restrikes += 1
                    events.append((abs_tick, mido.Message("note_off", channel=msg.channel, note=msg.note)))
                held.add(key)
                summary.notes += 1
                used_channels.add(msg.channel)
                program = force_program if force_program is not None else programs[msg.channel]
                instruments[_instrument_name(msg.channel, program)] = None
            elif key in held:
                held.discard(key)
                summary.last_note_end = max(summary.last_note_end, now)
            else:
                orphans += 1
                continue
        events.append((abs_tick, msg.copy(time=0)))
    for channel, note in sorted(held):  # release what still sounds, at the end / cut point
        events.append((abs_tick, mido.Message("note_off", channel=channel, note=note)))
    if held:
        summary.last_note_end = max(summary.last_note_end, now)
    summary.length = now
    if force_program is not None:
        setup = [(0, mido.Message("program_change", channel=ch, program=force_program))
                 for ch in sorted(used_channels) if ch != DRUM_CHANNEL]
        events = setup + events
    if restrikes:
        summary.repaired.append(f"{restrikes} repeated note-on(s) for held keys re-struck")
    if orphans:
        summary.repaired.append(f"{orphans} note-off(s) without a note-on dropped")
    summary.instruments = list(instruments)

    track = mido.MidiTrack()
    last = 0
    for tick, msg in events:
        track.append(msg.copy(time=tick - last))
        last = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    clean = mido.MidiFile(type=0, ticks_per_beat=tpb)
    clean.tracks.append(track)
    return clean, summary


def _fluidsynth() -> str:
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise MidiError("fluidsynth is not installed (run `make setup` or install fluidsynth)")
    return exe


def render_midi(path, sample_rate: int, soundfont, release_seconds: float = MIDI_RELEASE_SECONDS,
                force_program: int | None = None, max_seconds: float | None = None):
    """Sanitise and render one MIDI file.

    Returns:
        (audio, sample_rate, summary): float32 ``[2, n]`` stereo at ``sample_rate``,
        cut ``release_seconds`` after the last note-off (with a short fade).
    Raises:
        MidiError: unreadable MIDI, no notes, no soundfont, FluidSynth failure or timeout.
    """
    import soundfile as sf
    from .audio_io import resample

    if soundfont is None:
        raise MidiError("no General MIDI soundfont found (install fluid-soundfont-gm "
                        "or pass --soundfont FILE.sf2)")
    mid = read_midi(path)
    clean, summary = sanitize_midi(mid, force_program=force_program, max_seconds=max_seconds)
    if summary.notes == 0:
        raise MidiError("MIDI has no notes")
    if summary.length > MAX_MIDI_SECONDS:
        raise MidiError(f"MIDI lasts {summary.length / 60:.0f} min, over the "
                        f"{MAX_MIDI_SECONDS / 60:.0f} min limit (broken tempo map?)")
    # FluidSynth renders 8-96 kHz; outside that, render at 44.1 kHz and resample.
    render_rate = sample_rate if 8000 <= sample_rate <= 96000 else 44100
    timeout = 60 + summary.length  # rendering runs at ~3-10 % of real time
    with tempfile.TemporaryDirectory(prefix="dataset_tools_midi_") as tmp:
        clean_path, wav_path = Path(tmp) / "clean.mid", Path(tmp) / "render.wav"
        clean.save(str(clean_path))
        cmd = [_fluidsynth(), "-ni", "-q", "-g", str(RENDER_GAIN), "-r", str(render_rate),
               "-T", "wav", "-O", "float", "-F", str(wav_path), str(soundfont), str(clean_path)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise MidiError(f"FluidSynth took longer than {timeout:.0f} s") from None
        if proc.returncode != 0 or not wav_path.exists() or wav_path.stat().st_size <= 44:
            lines = (proc.stderr or proc.stdout or "").strip().splitlines()
            raise MidiError(f"FluidSynth rendered nothing ({lines[-1] if lines else f'exit {proc.returncode}'})")
        data, rate = sf.read(str(wav_path), dtype="float32", always_2d=True)
    audio = np.ascontiguousarray(data.T)  # [2, n]
    end = min(audio.shape[1], int(round((summary.last_note_end + release_seconds) * rate)))
    if end < audio.shape[1]:
        audio = audio[:, :end]
        fade = min(end, int(FADE_SECONDS * rate))
        if fade > 0:
            audio[:, end - fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    peak = float(np.abs(audio).max(initial=0.0))
    if peak > 1.0:  # the float render can exceed full scale on dense passages
        audio /= peak
    if rate != sample_rate:
        audio = resample(audio, rate, sample_rate)
    return audio.astype(np.float32, copy=False), sample_rate, summary
