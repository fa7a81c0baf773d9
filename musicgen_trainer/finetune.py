"""``train(config)``: data → cached codes → training loop → checkpoints → audiocraft export.

Layout of ``config.out``::

    run.json               the run's record: id, base model, options, its saved states (run_folder.py)
    config.json            the options of the latest start or resume
    metrics.jsonl          one JSON line per logged step: loss, lr, tokens/s, elapsed seconds, and
                           the held-out loss where evaluated (what the studio's curve reads: metrics_log.py)
    checkpoints/step_*.pt  full training states (the last ``keep_last``), for --resume
    tensorboard/           losses, ce_q1..q4, lr, grad norm, tokens/s, validation loss, samples
    samples/step_*/        audio generated from text alone every ``sample_every`` steps
    export/                state_dict.bin + compression_state_dict.bin (audiocraft's layout), README.md +
                           samples/ (the model card: sharing/card_data.py)
    export-best/           the same for the lowest held-out cross-entropy so far (train_eval.py)
    adapter/               with --lora: the adapter alone (peft's files + musicgen_lora.json, lora.py);
                           export/ then holds the base with the adapter merged in
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
import typing as tp
from pathlib import Path

import torch

from .data import Clip, CropSampler, find_clips, split_clips

from .code_cache import check_dual_mono, check_stereo_data, CodeCache
from .melody import prepare_melody
from .optimizers import STATE_BYTES
from .run_folder import (RunFolder, RunFolderError, check_resume, check_resume_world, claim_run_folder, load_state, read_record,
                         resolve_resume, rng_state, set_rng_state)
from .preflight import captions_warning, disk_space_warning, exports_bytes, training_state_bytes
from .distributed import encode_clips
from .train_config import TrainConfig, total_steps
from .step import (TrainState, export_weights, make_state, prepare_lm_for_training, resolve_dropouts,
                       resolve_precision, train_step)
from .train_eval import BestSoFar, GenreCheck, HeldOutEval, generate_clips, resolve_classifier, write_export
from .metrics_log import MetricsLog
from .stop_request import StopRequest, TrainingStopped

logger = logging.getLogger(__name__)


def _accelerator(config: TrainConfig):
    """Built with our precision ("no": step.py's autocast is the only one) and refused for
    launches we do not run (DeepSpeed, ...): see distributed.py."""
    from .distributed import make_accelerator
    return make_accelerator(config)




def default_prompts(train: tp.Sequence[Clip], valid: tp.Sequence[Clip], n: int = 3) -> list:
    """Distinct captions, validation clips first (they were not trained on)."""
    prompts = []
    for clip in list(valid) + list(train):
        if clip.caption and clip.caption not in prompts:
            prompts.append(clip.caption)
        if len(prompts) == n:
            break
    return prompts or ["music"]


def _write_samples(state: TrainState, prompts: list, folder: Path, writer, write: bool = True) -> None:
    """Generate from the text alone (never prompted with training audio) and save WAVs (where
    ``write``: under FSDP every process generates, in step, and the main one writes)."""
    from dataset_tools.audio_io import write_wav_atomic

    from .outputs import slug

    model = state.model
    wavs = generate_clips(state, prompts, state.config.sample_seconds, state.config.seed)
    if not write:
        return
    for i, (prompt, wav) in enumerate(zip(prompts, wavs)):
        write_wav_atomic(folder / f"{i:02d}_{slug(prompt)}.wav", wav.numpy(), model.sample_rate)
        if writer is not None:
            writer.add_audio(f"samples/{i:02d}", wav.mean(0), state.step, sample_rate=model.sample_rate)


def _training_state_dict(state: TrainState, keep: bool = True, best: tp.Optional[BestSoFar] = None) -> dict:
    """The state to save (``{}`` where not ``keep``). Under FSDP every process must call it: the
    full weights, optimiser state (keyed by parameter names) and EMA are gathered. ``best``: the
    held-out evaluation's best so far (kept by --resume)."""
    if state.sharded:
        from .distributed import full_model_state, full_optimizer_state, full_tensors
        lm = full_model_state(state.model.lm, keep)
        optimizer = full_optimizer_state(state.model.lm, state.optimizer, keep)
        ema = full_tensors(state.ema, keep) if state.ema is not None else None
    else:
        # Frozen parameters (the base under LoRA, --freeze) never change and resume keeps the base
        # model's own values (_load_trained_weights): saving them would make a LoRA run of
        # musicgen-medium write 3.7 GB per state instead of ~0.2 GB.
        frozen = {name for name, p in state.model.lm.named_parameters() if not p.requires_grad}
        lm = {k: v for k, v in state.model.lm.state_dict().items() if k not in frozen}
        optimizer, ema = state.optimizer.state_dict(), state.ema
    if not keep:
        return {}
    return {"config": state.config.to_dict(), "lm": lm,
            "optimizer": optimizer, "scheduler": state.scheduler.state_dict(),
            "scaler": state.scaler.state_dict() if state.scaler else None, "ema": ema,
            "rng": rng_state(), "nonfinite_streak": state.nonfinite_streak,
            "skipped_steps": state.skipped_steps, "world_size": state.accelerator.num_processes,
            "sharded": state.sharded,
            "history": state.history[-1000:], "eval": best.to_dict() if best else None}


def _load_trained_weights(lm, weights: dict) -> None:
    """Load a state's LM weights except the frozen ones (--freeze), which never change: those keep
    the base model's own values (a state saved with them in bf16/fp16 must not round them when
    the run resumes in another precision or on another device)."""
    frozen = {name for name, p in lm.named_parameters() if not p.requires_grad}
    result = lm.load_state_dict({k: v for k, v in weights.items() if k not in frozen}, strict=False)
    missing = sorted(set(result.missing_keys) - frozen)
    if missing or result.unexpected_keys:
        raise KeyError(f"weights do not match: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")


def _restore(state: TrainState, saved: dict, path: Path, total: int) -> None:
    """Load a training state into ``state``; one-line ``ValueError`` when it does not fit."""
    if int(saved["step"]) > total:
        raise ValueError(f"{path} is at step {saved['step']}, past this run's {total} steps: "
                         f"pass a larger --steps (or --epochs) to train on")
    try:
        if state.sharded:
            from .distributed import load_full_state
            load_full_state(state.model.lm, state.optimizer, saved["lm"], saved["optimizer"])
        else:
            _load_trained_weights(state.model.lm, saved["lm"])
            state.optimizer.load_state_dict(saved["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ValueError(f"{path} does not fit this model ({state.config.model}): it was trained "
                         f"from {saved.get('config', {}).get('model')!r} ({first})") from None
    state.scheduler.load_state_dict(saved["scheduler"])
    if state.scaler and saved.get("scaler"):
        state.scaler.load_state_dict(saved["scaler"])
    if state.ema is not None and saved.get("ema") and state.sharded:
        from .distributed import shard_like
        state.ema = shard_like(saved["ema"], state.model.lm)
    elif state.ema is not None and saved.get("ema"):
        state.ema = {k: v.to(state.accelerator.device) for k, v in saved["ema"].items()}
    set_rng_state(saved["rng"])
    state.step = int(saved["step"])
    state.nonfinite_streak = int(saved.get("nonfinite_streak", 0))
    state.skipped_steps = int(saved.get("skipped_steps", 0))
    state.history = list(saved.get("history", []))


def _log(writer, metrics: dict, step: int) -> None:
    if writer is None:
        return
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and math.isfinite(value):
            group = "loss" if key == "loss" or key.startswith("ce_q") else "train"
            writer.add_scalar(f"{group}/{key}", value, step)


def _claim(config: TrainConfig, acc) -> RunFolder:
    """The main process checks and records the run folder; the others read its record."""
    if acc.is_main_process:
        run = claim_run_folder(config, resuming=bool(config.resume))
    acc.wait_for_everyone()
    if not acc.is_main_process:
        record = read_record(Path(config.out))
        if record is None:
            raise RunFolderError(f"{config.out}: the main process did not create the run folder")
        run = RunFolder(Path(config.out), record)
    return run


def train(config: TrainConfig) -> Path:
    """Fine-tune ``config.model`` on ``config.data``; returns the export folder.

    Raises:
        DatasetError, ModelUnavailableError, ValueError: bad input, with a one-line message.
        TrainingDiverged: too many non-finite losses in a row (nothing exported).
    """
    from .models import load_model

    acc = _accelerator(config)
    device = acc.device
    if config.sharding == "fsdp" and acc.num_processes == 1:
        print("note: --sharding fsdp in a single process has nothing to shard: training unsharded")
    out = Path(config.out)
    clips = find_clips(config.data, config.valid_fraction, config.seed)  # bad --data fails before loading
    classifier = resolve_classifier(config.eval_classifier, config.data) if config.eval_every else None
    model = None
    if config.gpu_memory:  # the plan decides options the run folder and a resume check record
        from .planner import apply_plan
        model = model or load_model(config.model, device=str(device))
        config, plan_line = apply_plan(config, model, resolve_precision(config.precision, device),
                                       [c.caption for c in clips])
        if acc.is_main_process:
            print(plan_line)
    run = _claim(config, acc)  # another run's folder, or a foreign file in the way: stop before any work
    if config.keep_best and acc.is_main_process:
        run.check_best_export_free()
    resume_from = resolve_resume(config.resume, run.own_states())
    saved = load_state(resume_from, mmap=acc.num_processes > 1) if resume_from is not None else None
    if saved is not None:
        check_resume(saved.get("config") or {}, config, str(resume_from))
        check_resume_world(saved, config, acc.num_processes, str(resume_from))
        if bool(saved.get("sharded")) != (config.sharding == "fsdp" and acc.num_processes > 1):
            # the optimiser state is keyed by parameter names when sharded, by index otherwise
            was = "a sharded (--sharding fsdp)" if saved.get("sharded") else "an unsharded"
            raise ValueError(f"{resume_from} was saved by {was} run: resume it the same way (--sharding fsdp "
                             f"takes effect with several processes only)")
    torch.manual_seed(config.seed)

    train_clips, valid_clips = split_clips(clips)
    model = load_model(config.model, device=str(device))
    precision = resolve_precision(config.precision, device)
    cond_dropout, word_dropout = resolve_dropouts(config, model.lm)  # before audiocraft's are switched off
    prepare_lm_for_training(model, config, precision)
    mono = check_stereo_data(clips, model.audio_channels, config.allow_mono_for_stereo)  # before encoding
    if mono and acc.is_main_process:
        print(f"warning: {mono} mono file(s) copied to both channels (--allow-mono-for-stereo): the model "
              f"learns identical left and right from them")
    if acc.is_main_process:  # before hours of training, not at the first save
        state_bytes = training_state_bytes(model.lm, config.ema, optimizer_bytes=STATE_BYTES[config.optimizer],
                                           sharded=config.sharding == "fsdp")
        space = disk_space_warning(out, config.keep_last, state_bytes, export_bytes=exports_bytes(
                                       model, config.export_dtype, config.keep_best and config.eval_every > 0),
                                   existing=len(run.own_states()))
        if space:
            print(space)
    cache = CodeCache(model.compression_model, config.cache_dir)
    bars = config.progress and acc.is_main_process  # --no-progress hides the encoding bars too
    # Every process encodes its share of what is not cached yet, then all read all codes.
    train_codes, train_clips, skipped = encode_clips(cache, train_clips, acc, bars)
    valid_codes, valid_clips, skipped_valid = encode_clips(cache, valid_clips, acc, bars)
    if acc.is_main_process:
        for clip, reason in skipped + skipped_valid:
            print(f"skipped {clip.path}: {reason}")
        if not any(c.caption for c in train_clips):
            print(captions_warning(config.data))
    if not train_codes:
        raise ValueError(f"no usable training audio in {config.data} ({len(skipped)} file(s) skipped)")
    dual = check_dual_mono(train_clips + valid_clips, train_codes + valid_codes, model.audio_channels,
                           config.allow_mono_for_stereo)  # 2-channel files with left == right
    if dual and acc.is_main_process:
        print(f"warning: {dual} stereo file(s) have identical left and right (--allow-mono-for-stereo): the "
              f"model learns identical channels from them")
    if config.early_stop and not valid_codes:
        raise ValueError("--early-stop watches the held-out cross-entropy, but there are no validation clips: "
                         "raise --valid-fraction (or give the dataset a validation split), or drop --early-stop")
    window = min(config.segment_seconds, model.max_duration)  # the training window, seconds
    # Melody models: each clip's chroma, computed once (melody.py); like the codes, every process
    # computes its share of what is not cached yet, then all read all.
    if acc.num_processes > 1:
        world, rank = acc.num_processes, acc.process_index
        prepare_melody(model, train_clips[rank::world], valid_clips[rank::world], config.cache_dir,
                       progress=False, window_seconds=window)
        acc.wait_for_everyone()
    train_melody, valid_melody = prepare_melody(model, train_clips, valid_clips, config.cache_dir,
                                                progress=config.progress and acc.is_main_process,
                                                window_seconds=window)

    n_frames = int(round(min(config.segment_seconds, model.max_duration) * model.frame_rate))
    sampler = CropSampler(train_codes, [c.caption for c in train_clips], n_frames, config.batch_size,
                          config.seed, cond_dropout, word_dropout, melody=train_melody)
    steps = total_steps(config, len(train_codes), acc.num_processes)
    state = make_state(model, config, acc, steps, precision)
    genre_check = None
    if classifier is not None and valid_clips:
        genre_check = GenreCheck(classifier, valid_clips, config.seed, load=acc.is_main_process)
        if acc.is_main_process:
            print(genre_check.describe())
    held_out = HeldOutEval(config, acc, run, valid_codes, valid_clips, n_frames, valid_melody, genre_check)
    if saved is not None:
        _restore(state, saved, resume_from, steps)
        held_out.best = BestSoFar.from_dict(saved.get("eval"))
        del saved
        if acc.is_main_process:
            print(f"resumed from {resume_from} at step {state.step}")

    writer = None
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({**config.to_dict(), "precision_used": precision,
                                                     "cond_dropout_used": cond_dropout,
                                                     "word_dropout_used": word_dropout,
                                                     "total_steps": steps,
                                                     # what relative paths above are relative to (evaluate)
                                                     "working_folder": os.getcwd()}, indent=2) + "\n")
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out / "tensorboard"))
    # OUT/metrics.jsonl: a resumed run keeps the lines up to its step (none beyond: no doubled curve)
    metrics_log = MetricsLog(out / "metrics.jsonl", state.step) if acc.is_main_process else None
    prompts = config.sample_prompts or default_prompts(train_clips, valid_clips)
    genres = sorted({c.genre for c in train_clips + valid_clips if c.genre})
    extra = {"genres": genres, "train_config": config.shareable_dict(), "caption_examples": prompts}
    if config.model != "tiny" and not config.model.startswith("tiny:"):  # a folder "tiny_runs/x" is a base
        extra["base_model"] = config.model  # already the full hub name (TrainConfig resolves "small")
    held_out.export_extra = extra

    from tqdm.auto import tqdm
    bar = tqdm(total=steps, initial=state.step, desc="training", unit="step",
               disable=not (config.progress and acc.is_main_process), dynamic_ncols=True)
    world, accum, rank = acc.num_processes, config.grad_accum, acc.process_index
    # Ctrl-C / SIGTERM (the studio's Stop): finish the current step, save a resumable state as
    # save_every does, stop (TrainingStopped: exit 130). A second Ctrl-C abandons the step.
    stop, stopped = StopRequest(acc), False
    try:
        stop.install()
        while state.step < steps:
            t0 = time.perf_counter()
            first = (state.step * world + rank) * accum
            micro = [sampler.micro_batch(first + i).to(device) for i in range(accum)]
            t1 = time.perf_counter()
            metrics = train_step(state, micro)
            t2 = time.perf_counter()
            metrics.update(data_time=t1 - t0, model_time=t2 - t1, tokens_per_s=metrics["tokens"] / (t2 - t0),
                           epoch=sampler.epoch_of(first + accum))
            state.history.append({"step": state.step, **metrics})
            if state.step % config.log_every == 0 or state.step == steps:
                _log(writer, metrics, state.step)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{metrics['lr']:.2e}",
                            tok_s=f"{metrics['tokens_per_s']:.0f}", refresh=False)
            bar.update(1)
            early = held_out.due(state.step, steps) and held_out.run(state, writer)
            if metrics_log is not None and (state.step % config.log_every == 0 or state.step == steps
                                            or "valid_loss" in state.history[-1]):
                metrics_log.write(state.history[-1])
            if early:
                break  # early stop (every process agrees): the state and export below as usual
            if config.sample_every and state.step % config.sample_every == 0 and \
                    (acc.is_main_process or state.sharded):
                _write_samples(state, prompts, out / "samples" / f"step_{state.step:08d}", writer,
                               write=acc.is_main_process)
            stopping = stop.agreed()  # every process the same answer (or none would leave the collectives)
            if (state.step % config.save_every == 0 or stopping) and state.step < steps and \
                    (acc.is_main_process or state.sharded):
                saving = _training_state_dict(state, acc.is_main_process, held_out.best)  # gathers under FSDP
                if acc.is_main_process:
                    run.save_state(state.step, saving, config.keep_last)
                del saving
            if stopping and state.step < steps:
                stopped = True
                break
    finally:
        stop.uninstall()
        bar.close()
        if writer:
            writer.flush()
        if metrics_log is not None:
            metrics_log.close()
    if stopped:  # (an early stop or the last step exports as usual, whatever was asked meanwhile)
        if writer:
            writer.close()
        acc.wait_for_everyone()
        acc.end_training()
        raise TrainingStopped(state.step)
    export_dir = out / "export"
    if acc.is_main_process or state.sharded:  # under FSDP every process gathers, the main one writes
        final_state = _training_state_dict(state, acc.is_main_process, held_out.best)
        if acc.is_main_process:
            run.save_state(state.step, final_state, config.keep_last)
        del final_state  # before gathering the export's copy (host RAM of the main process)
        weights = export_weights(state, keep=acc.is_main_process)
    if acc.is_main_process:
        # with --lora the adapter alone in adapter/, the merged weights as the ordinary export
        write_export(model, weights, export_dir, config, {**extra, "trained_steps": state.step},
                     adapter_dir=out / "adapter")
        from .sharing.card_data import card_after_training  # README.md: data, settings, samples, usage
        # Samples: the newest training samples; a run that asked for some (--sample-every) but ended before
        # the first gets them from model.lm, unless its weights are not the export's (EMA, FSDP shards).
        generate = config.sample_every and not (config.ema or state.sharded)
        model.lm.eval()  # training is over
        card_after_training(export_dir, out, config, model=model if generate else None)
        last = state.history[-1] if state.history else {}
        best = held_out.summary()
        print(f"done: {state.step} steps, last loss {last.get('loss', float('nan')):.4f}, "
              f"{state.skipped_steps} skipped; exported to {export_dir}" + (f"; {best}" if best else ""))
        if writer:
            writer.close()
    acc.wait_for_everyone()
    # Close the process group before the interpreter exits (torch asks for it; its threads are
    # otherwise torn down in whatever order exit happens). No-op in a single process.
    acc.end_training()
    return export_dir
