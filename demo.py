#!/usr/bin/env python
"""The offline demo behind `make demo`: the whole pipeline on bundled example data, tiny model.

It drives all three packages, so it lives beside train.py and generate.py rather than inside
one of them. Run ``python demo.py --help``.

1. build a small real music library from music21's corpus (dataset_tools example);
2. prepare it: WAV segments, captions, manifest (dataset_tools prepare);
3. train the genre classifier on the labelled folders and sort ``unknown/`` (genre_classifier);
4. fine-tune the tiny MusicGen on the result (train.py's library function);
5. generate from the export: WAV + spectrogram + parameters (generate.py's library function);
6. evaluate the fine-tune against its base (``python -m musicgen_trainer evaluate``'s library
   function, small settings): report.html / report.md / report.json in ``OUT/evaluation``.

Every step is the same library call the command-line tools make. A re-run starts again from
the library (kept, as is the code cache), because step 3 moves files inside the dataset.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class DemoConfig:
    out: Path = Path("demo_output")
    model: str = "tiny"
    duration: float = 4.0
    train_steps: int = 30
    # 4: the fewest the classifier's split accepts (2 test, 1 validation, 1 training recording per genre)
    pieces_per_genre: int = 4
    unknown_pieces: int = 4   # one of each genre (example.py plays the i-th as genre i): each can be placed
    classifier: bool = True

    def __post_init__(self):
        self.out = Path(self.out)
        if not 0 < self.duration <= 30:
            raise ValueError(f"demo duration must be between 0 and 30 s, got {self.duration}")
        if self.train_steps < 1:
            raise ValueError("train_steps must be >= 1")


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.time()


def _test_summary(model_folder: Path) -> str:
    """The classifier's held-out figures in one line (from its classifier.json)."""
    import json
    test = json.loads((model_folder / "classifier.json").read_text(encoding="utf-8"))["metrics"]["test"]
    return (f"classifier test split: {100 * test['track_accuracy']:.0f} % of {test['tracks']} held-out recordings, "
            f"{100 * test['segment_accuracy']:.0f} % of their 3 s segments")


def _print_proposals(result, library: Path | None) -> None:
    """One line per unknown/ track: the classifier's proposals with their confidences, what was
    done with it, and the genre the example builder played it as (its record), whether or not the
    confidence reached the threshold, so the step shows what the classifier thinks either way."""
    import json
    try:
        played = {Path(f["file"]).stem: f.get("played_as") for f in
                  json.loads((library / "example_sources.json").read_text(encoding="utf-8"))["files"]}
    except (OSError, ValueError, KeyError, TypeError):  # no library record (or none given)
        played = {}
    for row in result.rows:
        if row.status == "skipped":
            print(f"   {row.file}: skipped ({row.note})")
            continue
        done = f"filed under {row.genre}/" if row.status == "tagged" else f"stays in unknown/ ({row.note})"
        truth = played.get(Path(row.file).stem.split("__")[0])
        print(f"   {row.file}: {row.top3} -> {done}" + (f"  [played as {truth}]" if truth else ""))


def classify_unknown(dataset: Path, model_out: Path, library: Path | None = None):
    """Step 3: train the genre classifier on ``dataset``'s genre folders, print its test figures,
    then tag ``dataset/unknown/`` (moving what it is sure of) and print every track's proposals
    with their confidences, placed or not. Returns the tag result (None without unknown/)."""
    from genre_classifier import TagConfig, TrainConfig as ClassifierConfig, tag
    from genre_classifier import train as train_classifier
    # learning rate 1e-3: at the default 1e-4, 30 epochs on 4-8 training recordings leave the
    # model undertrained and unknown/ tracks below the 0.6 threshold (measured)
    classifier = train_classifier(ClassifierConfig(data=dataset, out=model_out, epochs=30, learning_rate=1e-3,
                                                   overwrite=True, progress=False))
    print(f"   {_test_summary(classifier)}")
    if not (dataset / "unknown").is_dir():
        return None
    result = tag(TagConfig(directory=dataset / "unknown", model=classifier, apply="move", into=dataset,
                           progress=False))
    _print_proposals(result, library)
    return result


def run_demo(config: DemoConfig) -> list:
    """Run the pipeline into ``config.out``; returns the generated WAV paths (the evaluation
    report is in ``config.out / "evaluation"``)."""
    from dataset_tools.example import ExampleOptions, build_example
    from dataset_tools.options import PrepareOptions
    from dataset_tools.prepare import prepare

    from musicgen_trainer.cli_generate import GenerateOptions, run
    from musicgen_trainer.finetune import train
    from musicgen_trainer.generation import GenerationConfig
    from musicgen_trainer.train_config import TrainConfig

    out = config.out
    library, dataset = out / "library", out / "dataset"

    t = _step("1/6 example library from music21's corpus (dataset_tools example)")
    build_example(library, ExampleOptions(pieces_per_genre=config.pieces_per_genre,
                                          unknown_pieces=config.unknown_pieces, max_seconds=20.0, progress=False))
    print(f"   {library} ({time.time() - t:.0f} s)")

    t = _step("2/6 prepare: segments, captions, manifest (dataset_tools prepare)")
    if dataset.exists():
        # Only a folder prepare made (it keeps its state file there) is removed: never a user's.
        if not (dataset / ".prepare_state.json").is_file():
            raise ValueError(f"{dataset} exists and was not written by the demo: move it away or choose another --out")
        shutil.rmtree(dataset)
    report = prepare(library, dataset, PrepareOptions(progress=False))
    print(report.summary())

    if config.classifier:
        t = _step("3/6 genre classifier: train on the labelled folders, sort unknown/ (genre_classifier)")
        result = classify_unknown(dataset, out / "genre-classifier", library)
        if result is not None:
            print(f"   tagged unknown/: {result.counts()} ({time.time() - t:.0f} s)")

    t = _step(f"4/6 fine-tune {config.model} (train.py)")
    run_dir = out / "run"
    if run_dir.is_dir() and not (run_dir / "run.json").exists() and (run_dir / "config.json").is_file() and \
            {p.name for p in run_dir.iterdir()} <= {"config.json", "checkpoints", "tensorboard", "samples", "export"}:
        shutil.rmtree(run_dir)  # the run of a demo from before run folders had a record: the demo's own
    # The demo trains from scratch each time (--overwrite deletes only the last run's files);
    # the code cache is kept.
    export = train(TrainConfig(data=str(dataset), model=config.model, out=str(run_dir), steps=config.train_steps,
                               overwrite=True,
                               batch_size=4, segment_seconds=10.0, lr=1e-3, warmup_steps=5, sample_every=0,
                               valid_every=10, save_every=config.train_steps, cache_dir=str(out / "code-cache"),
                               progress=False))

    _step("5/6 generate from the export (generate.py)")
    files = run(GenerateOptions(model=str(export), prompts=["slow and calm"], genres=["chorale"],
                                generation=GenerationConfig(duration=config.duration, seed=0),
                                out=out / "generated"))
    wavs = [f.wav for f in files]

    t = _step("6/6 evaluate the fine-tune against its base (python -m musicgen_trainer evaluate)")
    from musicgen_trainer.evaluation.evaluate import evaluate
    from musicgen_trainer.evaluation.evaluate_config import EvaluateConfig
    # Small settings (one clip per genre, the demo's duration): the report's figures rest on few
    # clips and say so; --overwrite replaces only the previous demo's report files. The classifier
    # is the one step 3 trained on this dataset, named outright (auto would find it too: it records
    # the dataset, but a checkpoints/genre-dataset of the current folder would come first).
    report = evaluate(EvaluateConfig(model=str(run_dir), out=str(out / "evaluation"), clips_per_genre=1,
                                     generic_clips=1, duration=config.duration, overwrite=True, progress=False,
                                     classifier=str(out / "genre-classifier") if config.classifier else "none"),
                      log=lambda line: print(f"   {line}"))
    print(f"   ({time.time() - t:.0f} s)")
    print(f"\ndemo done: {', '.join(str(w) for w in wavs)}")
    print(f"evaluation report: {report / 'report.html'} (open it in a browser; report.md is the same in text)")
    return wavs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="demo.py", description="Example library -> prepare -> genre classifier -> "
                                "fine-tune the tiny model -> generate, all offline, into --out.")
    p.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    p.add_argument("--model", default="tiny", help="model to fine-tune (default: tiny)")
    p.add_argument("--duration", type=float, default=4.0, help="seconds of audio to generate (default: 4)")
    p.add_argument("--steps", type=int, default=30, help="training steps (default: 30)")
    p.add_argument("--no-classifier", action="store_true", help="skip the genre-classifier step")
    from dataset_tools.cli import add_debug_flag, run_command
    add_debug_flag(p)
    args = p.parse_args(argv)
    from musicgen_trainer.models import ModelUnavailableError

    def command() -> int:
        run_demo(DemoConfig(out=Path(args.out), model=args.model, duration=args.duration, train_steps=args.steps,
                            classifier=not args.no_classifier))
        return 0
    return run_command(command, input_errors=(ModelUnavailableError,), debug=args.debug)

if __name__ == "__main__":
    sys.exit(main())
