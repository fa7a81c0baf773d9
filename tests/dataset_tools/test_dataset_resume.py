"""Re-runs do only what changed; interrupted or killed runs leave no half-written outputs
and the next run finishes the job."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

from dt_helpers import MIN_SECONDS, SEGMENT_SECONDS, tone, write_audio

from dataset_tools import prepare as prepare_module
from dataset_tools.options import PrepareOptions
from dataset_tools.prepare import OutputLockedError, prepare

ROOT = Path(__file__).resolve().parents[2]


def options(**kw) -> PrepareOptions:
    base = dict(segment_seconds=SEGMENT_SECONDS, min_seconds=MIN_SECONDS, workers=1, progress=False)
    return PrepareOptions(**{**base, **kw})


def outputs(out: Path) -> dict[str, int]:
    """Every output file (WAV/caption/JSON) -> mtime_ns."""
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns
            for p in out.rglob("*") if p.suffix in (".wav", ".txt", ".json")
            and not p.name.startswith(".") and p.name != "prepare_report.json"}


def assert_complete_and_clean(out: Path) -> None:
    """No temporary files; every WAV is whole and has its caption and JSON."""
    assert not [p for p in out.rglob("*.part")]
    for row in (json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()):
        wav = out / row["path"]
        assert sf.info(str(wav)).frames == round(row["duration"] * row["sample_rate"])
        assert wav.with_suffix(".txt").read_text() == json.loads(wav.with_suffix(".json").read_text())["description"]


def test_second_run_over_unchanged_source_does_no_work(prepared, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(prepared.out, out)
    before = outputs(out)
    report = prepare(prepared.lib.src, out, PrepareOptions(
        segment_seconds=SEGMENT_SECONDS, min_seconds=MIN_SECONDS, workers=2, progress=False,
        valid_fraction=0.3))
    assert report.converted_this_run == 0
    assert report.up_to_date == report.files_found == prepared.report.files_found
    assert outputs(out) == before  # not one output rewritten
    assert report.segments == prepared.report.segments
    assert (out / "manifest.jsonl").read_text() == (prepared.out / "manifest.jsonl").read_text()
    assert [s["source"] for s in report.skipped] == [s["source"] for s in prepared.report.skipped]


def test_changes_in_source_and_options_redo_only_what_changed(small_library, tmp_path):
    out = tmp_path / "out"
    first = prepare(small_library, out, options(analyze=False))
    assert first.converted_this_run == 9
    before = outputs(out)

    # one file changed (longer now: 3 segments instead of 2), one removed, one added
    write_audio(small_library / "rock" / "Rock 1.wav", tone(5.0, freq=700.0))
    (small_library / "jazz" / "Jazz 3.flac").unlink()
    write_audio(small_library / "jazz" / "New.flac", tone(1.0))
    second = prepare(small_library, out, options(analyze=False))
    assert second.converted_this_run == 2 and second.up_to_date == 7
    after = outputs(out)
    assert "rock/Rock 1__002.wav" in after and "jazz/New.wav" in after
    assert not [p for p in after if p.startswith("jazz/Jazz 3")]           # removed with its source
    assert all(after[p] == before[p] for p in before if p.startswith("rock/Rock 0"))
    assert second.removed_outputs == 6                                     # 2 segments x 3 files
    assert_complete_and_clean(out)

    # a shorter segment length changes every output: all redone, stale segments removed
    third = prepare(small_library, out, options(analyze=False, segment_seconds=1.0, min_seconds=0.2))
    assert third.converted_this_run == 9
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert all(r["duration"] <= 1.0 + 1e-6 for r in rows)
    on_disk = {p for p in outputs(out) if p.endswith(".wav")}
    assert on_disk == {r["path"] for r in rows}

    # options that do not change outputs (split, workers) reconvert nothing
    fourth = prepare(small_library, out, options(analyze=False, segment_seconds=1.0, min_seconds=0.2,
                                                 valid_fraction=0.5, seed=3, workers=2))
    assert fourth.converted_this_run == 0


def test_interrupted_run_keeps_its_progress_and_resumes(small_library, tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = []
    real = prepare_module.convert_source

    def convert_then_interrupt(task):
        if len(calls) == 4:
            raise KeyboardInterrupt  # as if Ctrl-C arrived during the fifth file
        calls.append(task.rel)
        return real(task)

    monkeypatch.setattr(prepare_module, "convert_source", convert_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare(small_library, out, options(analyze=False))
    monkeypatch.undo()
    state = json.loads((out / ".prepare_state.json").read_text())
    assert sorted(state["sources"]) == sorted(calls)
    assert not (out / ".prepare.lock").exists()

    resumed = prepare(small_library, out, options(analyze=False))
    assert resumed.converted_this_run == 9 - 4 and resumed.up_to_date == 4
    assert resumed.tracks == 9
    assert_complete_and_clean(out)


def prepare_command(tmp_path: Path, tracks: int, seconds: float, *options: str):
    """A library of ``tracks`` FLAC tones in rock/ and jazz/, and the ``python -m
    dataset_tools prepare`` command (with its environment) that converts it into tmp/out."""
    src, out = tmp_path / "src", tmp_path / "out"
    for i in range(tracks):
        write_audio(src / ("rock" if i % 2 else "jazz") / f"Track {i}.flac", tone(seconds, freq=441.0 + 21 * i))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "dataset_tools", "prepare", str(src), str(out), "--no-progress", *options]
    return out, env, cmd


def test_killed_run_leaves_no_partial_outputs_and_a_rerun_finishes(tmp_path):
    out, env, cmd = prepare_command(tmp_path, 14, 4.0, "--workers", "1", "--segment-seconds", "1",
                                    "--min-seconds", "0.2")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    def saved_records() -> int:
        try:
            return len(json.loads((out / ".prepare_state.json").read_text())["sources"])
        except (OSError, ValueError, KeyError):
            return 0
    # The first state save comes after the first analysed track; with librosa's numba cache cold
    # (fresh venv, read-only site-packages) that alone is ~16 s on 2 idle cores, so allow plenty.
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and \
            (len(list(out.rglob("*.wav"))) < 10 or saved_records() == 0):
        time.sleep(0.01)
    running = proc.poll() is None
    if running:
        os.killpg(proc.pid, signal.SIGKILL)  # mid-run, without any chance to clean up
    proc.wait()
    assert running, "prepare finished before the test could kill it"
    saved = saved_records()
    assert saved >= 1
    killed_with = len(list(out.rglob("*.wav")))
    assert killed_with >= 10
    for wav in out.rglob("*.wav"):  # whatever exists under a final name is complete
        assert sf.info(str(wav)).frames > 0
        sf.read(str(wav))

    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)  # was 120: a cold numba cache and a loaded 2-core machine
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["tracks"] == 14 and report["segments"] == 14 * 4
    assert report["converted_this_run"] <= 14 - saved             # the killed run's work was kept
    assert not (out / ".prepare.lock").exists()
    assert_complete_and_clean(out)


def default_sigint() -> None:
    """Run in the child before exec: the default SIGINT action, whatever the parent ignores."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_on_a_parallel_run_exits_cleanly_and_a_rerun_finishes(tmp_path):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) while both worker
    stages run: exit status 130, no stray processes or temporary files; the re-run
    converts every track with no failures."""
    out, env, cmd = prepare_command(tmp_path, 12, 8.0, "--workers", "2", "--segment-seconds", "2")
    # SIGINT at its default disposition in the child: under nohup, a non-interactive shell's
    # background job or some CI runners the test itself runs with SIGINT ignored, and the
    # child would inherit that and never see the Ctrl-C (issue 11).
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and not list(out.rglob("*.wav")):
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    time.sleep(1.0)  # a fork server still importing stops once that is over
    group = subprocess.run(["ps", "-o", "stat=,args=", "-g", str(proc.pid)], capture_output=True,
                           text=True).stdout.splitlines()
    assert [line for line in group if not line.startswith("Z")] == []  # nothing left running

    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["failed"] == [] and report["tracks"] == 12
    assert_complete_and_clean(out)


def test_a_second_concurrent_run_is_refused(small_library, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".prepare.lock").write_text(str(os.getpid()))  # a live process holds the lock
    with pytest.raises(OutputLockedError, match="another prepare"):
        prepare(small_library, out, options(analyze=False))
    (out / ".prepare.lock").write_text("999999999")        # a dead one: the lock is stale
    report = prepare(small_library, out, options(analyze=False))
    assert report.tracks == 9 and not (out / ".prepare.lock").exists()
