"""``evaluate(config) -> report folder``: a fine-tune against its base on held-out music.

Top to bottom (options and input checks: ``evaluate_config.py``; metrics: the sibling modules;
the report's files: ``report.py``):

1. resolve the fine-tune, its base, the held-out split and the report folder (before any work);
2. load the real held-out clips (the dataset's validation split as the run made it, so never
   a clip it trained on), cut to ``--duration``;
3. for each model in turn (the base first; one in memory at a time): held-out cross-entropy, then
   the same prompts with the same seeds in the same batches: ``--clips-per-genre`` per genre
   (captions in the training captions' words) and ``--generic-clips`` from ``--generic-prompt``;
   clips written as WAV under ``clips/`` (names that do not say which model: report.json maps them);
4. measures (``evaluate_measures.py``): genre adherence (+ the classifier's ceiling on the real clips), FAD on each
   embedding (classifier, EnCodec, CLAP) overall and per genre, CLAP scores, sanity flags,
   memorisation overlap against the training codes (the base's as a control);
5. ``write_report``: report.json/md/html and plots, with the verdict.

Generation seeds: planned clip i is seeded ``seed + i`` (``generation.clip_seeds``), for both models,
and generated in batches of ``--batch-size`` with one seed per row (``generate(..., seeds=)``): each
clip is what its prompt gives alone with its seed, whatever shares its batch and whatever the batch
size, so the two models get identical requests. Each clip row records its own seed.
"""
from __future__ import annotations

import gc
import logging
import os
import time
import typing as tp
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .evaluate_config import (NONE, EvaluateConfig, Inputs, claim_report_folder, classifier_overlap_note,
                              find_classifier, resolve_inputs, write_record)
from .evaluate_measures import measure
from .report_schema import BASE, FINETUNE, MODEL_LABELS, MODELS

CLIPS_DIR = "clips"


@dataclass
class Planned:
    """One generated clip, the same for both models."""
    index: int
    prompt: str
    genre: tp.Optional[str]   # None: the generic prompt
    seed: int                 # its own seed (config.seed + index): the clip its prompt gives alone with it
    batch: int                # which generation batch holds it (changes nothing in the clip)


@dataclass
class ModelRun:
    """What one model produced: held-out CE, its clips (``[C, T]`` at ``rate``) and codes ``[K, F]``."""
    ce: dict
    waves: tp.List[np.ndarray] = field(default_factory=list)
    codes: tp.List[np.ndarray] = field(default_factory=list)
    files: tp.List[str] = field(default_factory=list)


def _slug(text: str) -> str:
    from ..outputs import slug
    return slug(text, limit=32)


def _prompt_words(clip) -> dict:
    """bpm and key of a held-out clip from its metadata JSON (what dataset_tools put in its caption)."""
    import json
    try:
        meta = json.loads(clip.path.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    out = {}
    if isinstance(meta.get("bpm"), (int, float)) and 20 <= meta["bpm"] <= 400:
        out["bpm"] = float(round(meta["bpm"]))
    if isinstance(meta.get("key"), str) and meta["key"].strip():
        out["key"] = meta["key"].strip()
    return out


def plan_clips(genres: tp.Sequence[str], valid_clips, config: EvaluateConfig) -> tp.List[Planned]:
    """The prompts: per genre, ``clips_per_genre`` captions in the training captions' words (the
    genre, with the tempo and key of that genre's held-out clips in turn when they record them),
    then the generic clips; clip i seeded ``config.seed + i``, in batches of ``config.batch_size``."""
    from ..generation import clip_seeds
    from ..outputs import genre_caption

    texts: tp.List[tp.Tuple[str, tp.Optional[str]]] = []
    for genre in genres:
        mine = [c for c in valid_clips if c.genre == genre]
        for j in range(config.clips_per_genre):
            words = _prompt_words(mine[j % len(mine)]) if mine else {}
            texts.append((genre_caption([genre], **words), genre))
    # A dataset without genres gets as many generic clips as a genre would (they are then the
    # clips compared with the real ones).
    n_generic = config.generic_clips if genres else max(config.generic_clips, config.clips_per_genre)
    texts += [(" ".join(config.generic_prompt.split()), None)] * n_generic
    seeds = clip_seeds(config.seed, len(texts))
    return [Planned(i, text, genre, seeds[i], i // config.batch_size) for i, (text, genre) in enumerate(texts)]


def load_real_clips(clips, rate: int, seconds: float) -> tp.Tuple[list, list, tp.List[str]]:
    """The held-out clips as mono ``[n]`` float32 at ``rate``, cut to their first ``seconds``
    (the window validation reads); returns (waves, their clips, notes on unreadable ones)."""
    from dataset_tools.audio_io import AudioDecodeError, load_audio
    waves, kept, notes = [], [], []
    for clip in clips:
        try:
            audio, _ = load_audio(clip.path, sample_rate=rate, mono=True)
        except AudioDecodeError as err:
            notes.append(f"Held-out clip {clip.path} left out: {err}")
            continue
        waves.append(audio[:int(round(seconds * rate))])
        kept.append(clip)
    return waves, kept, notes


def _held_out_ce(model, inputs: Inputs, device: str, progress: bool) -> dict:
    from ..melody import prepare_melody
    from .held_out import held_out_cross_entropy, validation_codes

    codes, captions, kept = validation_codes(model, inputs.data, inputs.valid_fraction, inputs.split_seed,
                                             inputs.cache_dir, progress=progress)
    if not codes:
        return {"note": "the dataset's validation split holds no clip"}
    window = min(inputs.window_seconds, model.max_duration)
    _, melody = prepare_melody(model, [], kept, inputs.cache_dir, progress=progress, window_seconds=window)
    precision = inputs.precision if str(device).startswith("cuda") and inputs.precision in ("bf16", "fp16") \
        else "fp32"
    return held_out_cross_entropy(model, codes, captions, n_frames=int(round(window * model.frame_rate)),
                                  batch_size=inputs.batch_size, melody=melody, precision=precision)


def _generate_all(model, plan: tp.List[Planned], config: EvaluateConfig, label: str) -> tp.Tuple[list, list]:
    """Every planned clip from ``model``: (waves ``[C, T]``, codes ``[K, F]``), batch by batch, each
    row with its own seed (so a clip does not depend on the batch size or its neighbours)."""
    from tqdm.auto import tqdm

    from ..generation import GenerationConfig, generate

    batches = sorted({p.batch for p in plan})
    # The steps of a batch are known once generation has set the model's duration: the first
    # report of each batch gives them (every batch has the same length).
    bar = tqdm(total=None, desc=f"generating ({label})", unit="step", disable=not config.progress,
               dynamic_ncols=True, mininterval=0.5)
    waves, codes = [], []
    try:
        for b in batches:
            rows = [p for p in plan if p.batch == b]
            done = [0]

            def step(n: int, total: int) -> None:
                if bar.total != total * len(batches):
                    bar.total = total * len(batches)
                bar.update(n - done[0])
                done[0] = n
            wav, tokens = generate(model, [p.prompt for p in rows], GenerationConfig(duration=config.duration,
                                                                                     seed=rows[0].seed),
                                   progress=step, return_tokens=True, seeds=[p.seed for p in rows])
            waves += [w.numpy() for w in wav]
            codes += [t.numpy() for t in tokens]
    finally:
        bar.close()
    return waves, codes


def _model_pass(name: str, role: str, inputs: Inputs, plan, config: EvaluateConfig, folder: Path,
                log) -> tp.Tuple[ModelRun, tp.Any]:
    """Load one model, measure and generate; returns its results and the loaded model."""
    from dataset_tools.audio_io import write_wav_atomic

    from ..models import load_model

    started = time.time()
    model = load_model(name, device=config.device)
    device = str(next(model.lm.parameters()).device)
    log(f"{MODEL_LABELS[role]}: {name} loaded ({time.time() - started:.1f} s); held-out cross-entropy")
    result = ModelRun(ce=_held_out_ce(model, inputs, device, config.progress))
    log(f"{MODEL_LABELS[role]}: generating {len(plan)} clips of {config.duration:g} s")
    result.waves, result.codes = _generate_all(model, plan, config, MODEL_LABELS[role])
    for p, wave in zip(plan, result.waves):
        rel = clip_path(role, p)
        write_wav_atomic(folder / rel, wave, model.sample_rate)
        result.files.append(rel)
    return result, model


def clip_path(role: str, p: Planned) -> str:
    """Where one model's clip of prompt ``p`` goes. The name does not say which model made it (the
    page's players, downloads and "open in new tab" show it; the blind test must not): the two
    clips of a prompt are ``_1`` and ``_2`` in an order drawn per prompt; report.json maps them."""
    import random
    first = random.Random(f"clip-order:{p.index}:{p.seed}").random() < 0.5
    number = 1 if (role == FINETUNE) == first else 2
    return f"{CLIPS_DIR}/{p.index:03d}_{_slug(p.genre or 'generic')}_s{p.seed}_{number}.wav"


def _load_clap(config: EvaluateConfig, device: str, notes: list):
    if config.clap == NONE:
        notes.append("CLAP figures skipped (--clap none).")
        return None
    from ..models import ModelUnavailableError
    from dataset_tools.clap import tiny_seed

    from .embeddings import load_clap, tiny_clap
    try:
        seed = tiny_seed(config.clap)   # tiny / tiny:SEED, as load_clap takes them
    except ValueError as err:
        notes.append(f"CLAP not measured: {err}.")
        return None
    if seed is not None:
        notes.append(f"CLAP: a tiny random model (--clap {config.clap}): its figures mean nothing, they test "
                     f"the pipeline.")
        return tiny_clap(seed=seed)
    try:
        return load_clap(config.clap, device=device)
    except ModelUnavailableError as err:
        notes.append(f"CLAP not measured: {err}.")
        return None


def _data_section(inputs: Inputs, valid_clips) -> dict:
    genres: tp.Dict[str, dict] = {}
    for c in valid_clips:
        g = genres.setdefault(c.genre or "(no genre)", {"tracks": set(), "clips": 0})
        g["tracks"].add(c.track)
        g["clips"] += 1
    return {"path": str(inputs.data), "split": "valid", "valid_fraction": inputs.valid_fraction,
            "split_seed": inputs.split_seed, "split_source": inputs.split_source,
            "genres": {k: {"tracks": len(v["tracks"]), "clips": v["clips"]} for k, v in sorted(genres.items())}}


def evaluate(config: EvaluateConfig, log: tp.Callable[[str], None] = print) -> Path:
    """Evaluate ``config.model`` against its base; returns the report folder (``config.out``).

    Raises:
        ValueError, DatasetError, ModelUnavailableError: bad input (one line), before any work
        where they can be found out early.
    """
    from genre_classifier.model_folder import ModelFolderError, load_classifier

    from ..code_cache import CodeCache
    from ..data import find_clips, split_clips
    from .report import write_report

    inputs = resolve_inputs(config)
    clips = find_clips(inputs.data, inputs.valid_fraction, inputs.split_seed)
    train_clips, valid_clips = split_clips(clips)
    trained_on = inputs.trained_on or inputs.data
    other_data = trained_on.exists() and trained_on.resolve() != inputs.data.resolve()
    if other_data:  # memorisation is checked against what the run trained on
        train_clips = split_clips(find_clips(trained_on, inputs.valid_fraction, inputs.split_seed))[0]
    classifier_dir, classifier_note = find_classifier(config, inputs.data)
    # TensorFlow (the classifier) takes all of a GPU's memory by default when it starts, and the
    # models generate on that GPU afterwards: let it grow as needed instead (set before TF loads).
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    classifier = None
    if classifier_dir:  # before the report folder is claimed: a classifier that cannot load costs nothing
        try:
            classifier = load_classifier(classifier_dir)
        except (ModelFolderError, ImportError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            if config.classifier:  # named by the user: their input is wrong
                raise ValueError(f"--classifier {classifier_dir}: {reason}") from None
            classifier_note = (f"Genre figures skipped: the classifier found beside the dataset ({classifier_dir}) "
                               f"cannot be loaded ({reason}).")
            classifier_dir = None
    folder = claim_report_folder(config.out, config.overwrite)
    notes = [f"Held-out music: the {len(valid_clips)} clip(s) of {inputs.data}'s validation split, made with "
             f"{inputs.split_source}; the run trained on {len(train_clips)} clip(s).", classifier_note]
    if other_data:
        notes.append(f"--data {inputs.data} is not the dataset the run trained on ({trained_on}): its validation "
                     f"tracks are held out only if the run never saw them.")
    if not valid_clips:
        notes.append("The dataset's validation split is empty: held-out figures cannot be measured.")
    genres = sorted({c.genre for c in clips if c.genre})
    plan = plan_clips(genres, valid_clips, config)
    write_record(folder, [clip_path(m, p) for m in MODELS for p in plan])  # before writing them
    if classifier is not None and os.environ.get("TF_CPP_MIN_LOG_LEVEL") not in ("0", "1"):
        # Clips of several lengths reach Keras' predict: its "retracing" warnings are noise here
        # (quiet unless TensorFlow's logs were asked for, as genre_classifier does it).
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    clap = None

    runs: tp.Dict[str, ModelRun] = {}
    names = {FINETUNE: str(inputs.export), BASE: inputs.base}
    codec = rate = real_waves = real_clips = train_codes = None
    # One model in memory at a time, the base first: a base that cannot be loaded (a hub name not
    # cached offline) stops the command before any long work. The fine-tune's codec is kept.
    for role in (BASE, FINETUNE):
        runs[role], model = _model_pass(names[role], role, inputs, plan, config, folder, log)
        if role == FINETUNE:  # the fine-tune's codec measures both models' clips and the real ones
            codec, rate = model.compression_model, model.sample_rate
            device = str(next(model.lm.parameters()).device)
            clap = _load_clap(config, device, notes)
            real_waves, real_clips, read_notes = load_real_clips(valid_clips, rate, config.duration)
            notes += read_notes
            overlap = classifier_overlap_note(classifier_dir, inputs.data, real_clips) if classifier_dir else None
            notes += [overlap] if overlap else []
            codes, _, _ = CodeCache(codec, inputs.cache_dir).codes_for(train_clips, progress=config.progress)
            train_codes = [np.asarray(c) for c in codes]
        del model
        gc.collect()

    report: dict = {
        "format": "musicgen_trainer.evaluation_report", "version": 1,
        "models": {FINETUNE: {"name": inputs.run.name if inputs.run else inputs.export.name,
                              "path": str(inputs.export)},
                   BASE: {"name": inputs.base, "path": inputs.base, "source": inputs.base_source}},
        "data": _data_section(inputs, valid_clips),
        "settings": {"duration": config.duration, "per_genre": config.clips_per_genre,
                     "seeds": sorted({p.seed for p in plan}), "generic_prompt": config.generic_prompt,
                     "generic_clips": config.generic_clips, "blind_seed": config.seed, "batch_size": config.batch_size,
                     "genres": genres, "classifier": str(classifier_dir) if classifier_dir else None,
                     "clap": getattr(clap, "name", None)},
        "held_out_ce": ({m: runs[m].ce for m in MODELS} if valid_clips else
                        {"note": "the dataset's validation split is empty"}),
        "genre_adherence": {"note": "no genre classifier (see the notes)"},
        "classifier_ceiling": {"note": "no genre classifier (see the notes)"},
        "clips": [{"prompt": p.prompt, "genre": p.genre, "seed": p.seed, "batch": p.batch,
                   "files": {m: runs[m].files[p.index] for m in MODELS}} for p in plan],
        "notes": notes,
    }
    for m in MODELS:
        if isinstance(runs[m].ce, dict) and "note" in runs[m].ce:
            report["held_out_ce"] = {"note": runs[m].ce["note"]}
    log("measuring: genre adherence, FAD, CLAP, sanity, memorisation")
    measure(report, runs, plan, real_waves, real_clips, rate, codec, classifier, clap, train_codes, config)
    paths = write_report(report, folder)
    written = [paths["json"], paths["markdown"], paths["html"], *paths["plots"]]
    write_record(folder, [clip_path(m, p) for m in MODELS for p in plan] + written)
    log(f"report: {paths['html']} (and report.md, report.json)")
    return folder
