"""Held-out evaluation while training (``--eval-every``): the best export and early stopping.

Every ``eval_every`` steps (and at the last step) :class:`HeldOutEval` computes the held-out
cross-entropy: the training objective on the validation split (``step.validation_loss``),
never trained on. Then:

- **best export** (``--keep-best``): when the cross-entropy is the lowest so far, the weights
  are exported to ``OUT/export-best/`` exactly as the final ``OUT/export/`` is (audiocraft's
  layout; with ``--lora`` the adapter in ``export-best/adapter/``), its ``export_info.json``
  saying which step and cross-entropy (``best``). It replaces the previous best only once
  complete (``RunFolder.replace_best_export``);
- **early stopping** (``--early-stop PATIENCE``): after PATIENCE evaluations in a row without
  a lower cross-entropy the run stops, says so, and exports as usual;
- **genre check** (``--eval-classifier``, :class:`GenreCheck`): one short clip per genre of the
  validation captions, generated from a validation caption with a fixed seed (genre i: seed + i), labelled by the
  genre classifier; its accuracy (was a "jazz" caption heard as jazz?) and its mean
  probability for the prompted genre go to TensorBoard (``eval/``).

The best cross-entropy, its step and the evaluations since are part of the training state
(``"eval"``), so a resumed run keeps them. With several processes the cross-entropy is reduced
over all of them (the same number everywhere), and the main process's decision (new best,
stop) is broadcast anyway, so that every process exports (under FSDP) and stops together.
"""
from __future__ import annotations

import json
import math
import typing as tp
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dataset_tools.atomic import atomic_path

from .run_folder import BEST_EXPORT
from .step import TrainState, export_weights, validation_loss



# --- the best cross-entropy so far ---------------------------------------------------------

@dataclass
class BestSoFar:
    """The lowest held-out cross-entropy, its step, and the evaluations since (``stale``)."""
    valid_ce: float = math.inf
    step: int = 0  # 0: no evaluation yet
    stale: int = 0

    def update(self, valid_ce: float, step: int) -> bool:
        """Count one evaluation; True when ``valid_ce`` is lower than every one before (a
        non-finite value never is)."""
        if math.isfinite(valid_ce) and valid_ce < self.valid_ce:
            self.valid_ce, self.step, self.stale = float(valid_ce), int(step), 0
            return True
        self.stale += 1
        return False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: tp.Optional[dict]) -> "BestSoFar":
        """From a training state's ``"eval"`` (a fresh one for states saved before it existed)."""
        if not isinstance(saved, dict):
            return cls()
        return cls(valid_ce=float(saved.get("valid_ce", math.inf)), step=int(saved.get("step", 0)),
                   stale=int(saved.get("stale", 0)))


# --- exports -------------------------------------------------------------------------------

def write_export(model, weights: dict, folder: Path, config, extra: dict, adapter_dir: Path) -> Path:
    """The export of ``weights`` (the LM state dict) to ``folder``, as the run's final one: with
    ``--lora`` the adapter alone goes to ``adapter_dir`` and the export holds the merged weights
    (and records where the adapter is, relative to the export: ``adapter`` inside it, ``../adapter``
    beside it; never a path of this machine, since an export may be pushed)."""
    import os

    from .exports import export_model
    extra = dict(extra)
    if config.lora:
        from .lora import merged_state_dict, save_adapter
        save_adapter(model.lm, weights, adapter_dir, config, extra={"trained_steps": extra.get("trained_steps")},
                     shareable=Path(adapter_dir).parent == Path(folder))  # inside the export: pushed, no path
        weights = merged_state_dict(model.lm, weights)
        extra["lora"] = Path(os.path.relpath(adapter_dir, folder)).as_posix()
    return export_model(model, folder, lm_state=weights, extra=extra, dtype=config.export_dtype)


def add_to_export_info(folder: Path, **facts) -> None:
    """Merge ``facts`` into an export's ``export_info.json`` (its readers ignore keys they do not know)."""
    from .exports import EXPORT_INFO_FILE
    path = Path(folder) / EXPORT_INFO_FILE
    info = json.loads(path.read_text(encoding="utf-8"))
    info.update(facts)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --- generation while training -------------------------------------------------------------

def generate_clips(state: TrainState, prompts: tp.Sequence[str], seconds: float, seed: int) -> list:
    """``[channels, samples]`` tensors generated from the text alone, in eval mode, then back to
    training. Prompt i is seeded ``seed + i`` (``generation.clip_seeds``, as ``generate.py --seed seed``
    seeds its clips): each clip is what its prompt gives alone with its seed, whichever prompts share
    the batch. Under FSDP every process must call it (the LM's forwards are collective)."""
    from .generation import GenerationConfig, clip_seeds, generate
    model = state.model
    model.lm.eval()
    if state.sharded:  # the condition provider runs outside the LM's forward: gather the root first
        model.lm.unshard()
    try:
        from contextlib import nullcontext

        from .lora import raw_weights_folded  # LoRA's in_proj adapters: W + s B A folded once, as fast as merged
        with raw_weights_folded(model.lm) if state.config.lora else nullcontext():
            return generate(model, list(prompts), GenerationConfig(duration=min(seconds, model.max_duration),
                                                                   seed=seed), seeds=clip_seeds(seed, len(prompts)))
    finally:
        if state.sharded:
            model.lm.reshard()
        model.lm.train()


# --- the genre classifier's check ----------------------------------------------------------

def resolve_classifier(option: tp.Optional[str], data: str) -> tp.Optional[Path]:
    """The classifier folder for ``--eval-classifier``: ``none`` → None; ``auto`` → the one
    ``genre_classifier.model_folder.classifier_for_dataset`` finds for the dataset (beside it), else
    None; a folder → that folder (``ModelFolderError``, one line, when it is not a classifier)."""
    import importlib.util

    from genre_classifier.model_folder import ModelFolderError, classifier_for_dataset, read_info
    if option is None or str(option).lower() in ("none", ""):
        return None
    has_keras = importlib.util.find_spec("keras") is not None  # the classifier runs on Keras/TensorFlow
    if str(option).lower() != "auto":
        read_info(option)  # fails fast, before any training
        if not has_keras:
            raise ValueError(f"--eval-classifier {option}: the genre classifier needs TensorFlow (Keras 3), "
                             f"which is not installed; install it or pass --eval-classifier none")
        return Path(option)
    candidate = classifier_for_dataset(data)  # the same places `evaluate` looks
    if candidate is None or not has_keras:
        return None
    try:
        read_info(candidate)
    except ModelFolderError as exc:
        print(f"note: genre check off: {exc}")
        return None
    return candidate


def _hide_gpus_from_tensorflow() -> None:
    """TensorFlow would reserve most of every GPU's memory for itself at its first operation,
    under the LM being trained. The classifier is small: it runs on the CPU."""
    from genre_classifier.model import import_keras
    import_keras()
    import tensorflow as tf
    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):  # already initialised by someone else in this process
        pass


class GenreCheck:
    """One clip per genre of the validation clips that the classifier knows, scored by it.

    Every process knows the prompts (from ``classifier.json``: under FSDP all generate); the
    classifier itself (TensorFlow) is loaded where ``load`` (the main process), before training."""

    def __init__(self, folder: Path, valid_clips: tp.Sequence, seed: int, load: bool = True):
        from dataset_tools.captions import genre_words
        from genre_classifier.features import FeatureSettings
        from genre_classifier.model_folder import load_classifier, read_info

        from .outputs import genre_caption
        info = read_info(folder)
        self.folder, self.seed = Path(folder), seed
        self.settings = FeatureSettings.from_dict(info["features"])
        self.classifier = None
        if load:
            _hide_gpus_from_tensorflow()
            self.classifier = load_classifier(folder)
        by_words = {genre_words(label, False): i for i, label in enumerate(info["labels"])}
        self.genres, self.prompts, self.targets, self.unknown = [], [], [], []
        for genre in sorted({c.genre for c in valid_clips if c.genre}):
            target = by_words.get(genre_words(genre, False))
            if target is None:
                self.unknown.append(genre)
                continue
            captions = [c.caption for c in valid_clips if c.genre == genre and c.caption]
            self.genres.append(genre)
            self.prompts.append(captions[0] if captions else genre_caption([genre]))
            self.targets.append(target)
        # The clip is one classifier window long: the least audio the classifier scores in full.
        self.seconds = float(self.settings.segment_seconds)

    def describe(self) -> str:
        if not self.genres:
            return (f"note: genre check off: the classifier in {self.folder} knows none of the validation "
                    f"clips' genres ({', '.join(self.unknown) or 'none'})")
        skipped = f"; not in the classifier: {', '.join(self.unknown)}" if self.unknown else ""
        return (f"genre check at each evaluation: {len(self.genres)} clip(s) of {self.seconds:g} s "
                f"({', '.join(self.genres)}) scored by {self.folder}{skipped}")

    def score(self, wavs: tp.Sequence[torch.Tensor], sample_rate: int) -> dict:
        """Accuracy and mean probability of the prompted genre over ``wavs`` (``[C, T]`` each, in
        the order of ``self.genres``); a clip the classifier cannot score (silent) counts as wrong."""
        from dataset_tools.audio_io import resample
        from genre_classifier.features import FeatureError, features_from_audio
        settings = self.settings
        right, probs = [], {}
        for genre, target, wav in zip(self.genres, self.targets, wavs):
            audio = resample(wav.float().mean(0).cpu().numpy(), sample_rate, settings.sample_rate)
            try:
                p = self.classifier.predict_track(features_from_audio(audio, settings))
            except FeatureError:
                right.append(False)
                probs[genre] = 0.0
                continue
            right.append(int(p.argmax()) == target)
            probs[genre] = float(p[target])
        return {"genre_accuracy": sum(right) / max(1, len(right)),
                "genre_confidence": sum(probs.values()) / max(1, len(probs)),
                **{f"genre_prob/{g}": v for g, v in probs.items()}}


# --- the evaluation ------------------------------------------------------------------------

class HeldOutEval:
    """What happens at each evaluation; ``run`` returns True when the run should stop early."""

    def __init__(self, config, acc, run_folder, valid_codes, valid_clips, n_frames: int, valid_melody=None,
                 genre_check: tp.Optional[GenreCheck] = None):
        self.config, self.acc, self.run_folder = config, acc, run_folder
        self.valid_codes, self.valid_captions = valid_codes, [c.caption for c in valid_clips]
        self.n_frames, self.valid_melody, self.genre_check = n_frames, valid_melody, genre_check
        self.best = BestSoFar()
        self.export_extra: dict = {}  # what the export records (finetune.py sets it: genres, options...)

    def due(self, step: int, total: int) -> bool:
        every = self.config.eval_every
        return bool(self.valid_codes) and every > 0 and (step % every == 0 or step == total)

    def run(self, state: TrainState, writer) -> bool:
        config, main = self.config, self.acc.is_main_process
        ce = validation_loss(state, self.valid_codes, self.valid_captions, self.n_frames, self.valid_melody)
        state.history[-1]["valid_loss"] = ce
        improved = self.best.update(ce, state.step)
        patience = config.early_stop or 0
        stop = bool(patience) and self.best.stale >= patience
        improved, stop = self._agree(improved, stop)
        if writer is not None:
            writer.add_scalar("loss/valid", ce, state.step)
            writer.add_scalar("eval/valid_ce", ce, state.step)
            if math.isfinite(self.best.valid_ce):
                writer.add_scalar("eval/best_valid_ce", self.best.valid_ce, state.step)
            writer.add_scalar("eval/evals_since_best", self.best.stale, state.step)
        if improved and config.keep_best and (main or state.sharded):
            weights = export_weights(state, keep=main)  # gathered under FSDP: every process calls it
            if main:
                self._write_best(state, weights, ce)
            del weights
        if self.genre_check is not None and self.genre_check.genres and (main or state.sharded):
            wavs = generate_clips(state, self.genre_check.prompts, self.genre_check.seconds, self.genre_check.seed)
            if main:
                sample_rate = state.model.sample_rate
                for key, value in self.genre_check.score(wavs, sample_rate).items():
                    writer.add_scalar(f"eval/{key}", value, state.step)
                for genre, wav in zip(self.genre_check.genres, wavs):
                    writer.add_audio(f"eval/{genre}", wav.float().mean(0), state.step, sample_rate=sample_rate)
        if stop and main:
            print(f"early stop at step {state.step}: the held-out cross-entropy has not improved for {patience} "
                  f"evaluation(s) in a row (best {self.best.valid_ce:.4f} at step {self.best.step})")
        return stop

    def _agree(self, improved: bool, stop: bool) -> tp.Tuple[bool, bool]:
        """The main process's decision on every process (they compute the same one from the
        same reduced cross-entropy; broadcasting makes that a guarantee, not an assumption)."""
        if self.acc.num_processes == 1:
            return improved, stop
        from accelerate.utils import broadcast
        flags = broadcast(torch.tensor([int(improved), int(stop)], device=self.acc.device), from_process=0)
        return bool(flags[0].item()), bool(flags[1].item())

    def _write_best(self, state: TrainState, weights: dict, ce: float) -> None:
        extra = {**self.export_extra, "trained_steps": state.step}

        def write(folder: Path) -> None:
            write_export(state.model, weights, folder, self.config, extra, adapter_dir=folder / "adapter")
            add_to_export_info(folder, best={"step": state.step, "valid_ce": ce,
                                             "metric": "held-out cross-entropy (the training objective "
                                                       "on the validation split)"})
            from .sharing.card_data import card_after_training  # the run's samples so far (none generated)
            card_after_training(folder, self.run_folder.path, self.config, title=f"{self.run_folder.path.name} (best)")
        self.run_folder.replace_best_export(write, state.step, ce)

    def summary(self) -> str:
        """The final log's line about the best evaluation ("" when there was none)."""
        if not self.best.step:
            return ""
        where = f": {self.run_folder.path / BEST_EXPORT}" if self.config.keep_best else ""
        return f"best held-out cross-entropy {self.best.valid_ce:.4f} at step {self.best.step}{where}"
