"""MIDI export: a real piece (a Bach chorale from music21's bundled corpus) rendered with
FluidSynth, transcribed with basic-pitch, compared with the source MIDI; and generate.py --midi."""
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

FLUIDR3 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
SECONDS = 10.0


def _soundfont():
    """FluidR3 (Debian's) when present, else the General MIDI soundfont dataset_tools would use
    (another path, MUSICGEN_SOUNDFONT on macOS: what scripts/install_system_deps.sh accepts)."""
    if FLUIDR3.is_file():
        return FLUIDR3
    from dataset_tools.midi_render import find_soundfont
    return find_soundfont()


@pytest.fixture(scope="module")
def rendered_chorale(tmp_path_factory):
    """(source MIDI, rendered WAV): the first 10 s of BWV 66.6 on a General MIDI piano."""
    import pretty_midi
    from music21 import corpus
    soundfont = _soundfont()
    if shutil.which("fluidsynth") is None or soundfont is None:
        pytest.fail("fluidsynth and a General MIDI soundfont (FluidR3_GM) are needed (run `make setup`)")
    folder = tmp_path_factory.mktemp("chorale")
    full = folder / "full.mid"
    corpus.parse("bach/bwv66.6").write("midi", fp=str(full))
    midi = pretty_midi.PrettyMIDI(str(full))
    for inst in midi.instruments:
        inst.notes = [n for n in inst.notes if n.start < SECONDS]
        for n in inst.notes:
            n.end = min(n.end, SECONDS)
    source, wav = folder / "chorale.mid", folder / "chorale.wav"
    midi.write(str(source))
    subprocess.run(["fluidsynth", "-ni", "-q", "-F", str(wav), "-r", "44100", str(soundfont), str(source)],
                   check=True, capture_output=True, timeout=120,
                   stdin=subprocess.DEVNULL)  # never the terminal: a background `make test &` would stop
    return source, wav


def _notes(path):
    import pretty_midi
    return [n for inst in pretty_midi.PrettyMIDI(str(path)).instruments for n in inst.notes]


def test_transcription_of_a_rendered_chorale_matches_its_score(rendered_chorale, tmp_path):
    from musicgen_trainer.media import transcribe
    source, wav = rendered_chorale
    result = transcribe(wav, tmp_path / "out.mid")
    src, got = _notes(source), _notes(result.path)
    assert result.notes == len(got) >= 0.5 * len(src)
    lo, hi = min(n.pitch for n in src), max(n.pitch for n in src)  # 42..76 in this excerpt
    assert lo - 12 <= result.lowest_pitch <= lo + 5 and hi - 5 <= result.highest_pitch <= hi + 12
    # Almost every transcribed note is in the chorale's pitch classes (its key)...
    classes = {n.pitch % 12 for n in src}
    assert np.mean([n.pitch % 12 in classes for n in got]) >= 0.9
    # ...and most of the score's notes are found at the right pitch and time (±80 ms).
    found = [any(g.pitch == n.pitch and abs(g.start - n.start) < 0.08 for g in got) for n in src]
    assert np.mean(found) >= 0.7


def test_generate_cli_writes_midi(tiny_model, tmp_path, capsys):
    # tiny_model: audiocraft is imported before capsys swaps sys.stderr (once TensorFlow is
    # loaded, importing audiocraft under capsys leaves a closed stream behind).
    from musicgen_trainer import cli_generate
    code = cli_generate.main(["--model", "tiny", "--prompt", "organ", "--duration", "1", "--seed", "0",
                              "--midi", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 0, err
    meta = json.loads((tmp_path / "00_organ_s0.json").read_text())
    midi = tmp_path / meta["files"]["midi"]
    assert midi.read_bytes()[:4] == b"MThd"
    assert meta["midi_notes"]["count"] == len(_notes(midi))
