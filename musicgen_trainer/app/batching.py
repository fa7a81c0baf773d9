"""The Generate tab's queue: requests waiting at the same time for the same model and settings
run as one batch (no Gradio here).

Each page request (a Gradio handler thread) hands its validated ``AppRequest`` to
``GenerationBatcher.submit`` and waits there for its own result, reporting its own progress. One
worker thread does the generating: it takes the oldest waiting request and every other waiting
request with the same ``batch_key`` (model, LoRA adapter, output folder and every sampling
setting but the seed: duration, top-k, top-p, temperature, guidance, decoder), at most
``max_batch``, and generates them as one batch with one seed per row
(``generation.generate(..., seeds=...)``): each clip has the codes the request gives alone, up to
float rounding (identical on CPU in the tests; on a GPU, half-precision batched matrix products
may round differently and, rarely, flip a near-tie between two tokens).
Each request still gets its own result folder, seed, files and summary, and errors stay its own:
requests are validated before they are submitted, and a request whose files cannot be written
(e.g. MIDI transcription) fails alone. A model that cannot load fails the requests of that batch;
a batch whose generation fails (e.g. out of accelerator memory) is retried request by request
(``run_request`` each, after freeing the accelerator's cached memory), so each fails or succeeds
on its own. Requests with an audio prompt batch with each other only: each row continues its own
upload (``generation.generate_continuation`` with one audio prompt per row), and uploads whose
kept part (the model's half window from their end) differs in length run as separate batches,
one after the other under the same lock; an upload that cannot be read fails its request alone.

The worker takes requests only while it holds ``backend.GENERATION_LOCK``: the requests that arrive
while any generation runs (a batch, a Compare) wait, and are batched together when it ends. A
batch's files (spectrogram, MIDI transcription) are written after the lock is released, and each
request gets its result as soon as its own files are written. Whatever fails, every request the
worker took is answered (with an error if nothing else), and the worker carries on.
"""
from __future__ import annotations

import functools
import logging
import shutil
import threading
import time
import typing as tp
from dataclasses import dataclass, field
from pathlib import Path

from .backend import (APP_MAX_BATCH, GENERATION_LOCK, AppRequest, AppResult, ModelCache, _free_accelerator_memory,
                      _new_result_folder, clip_request, open_audio_prompt, read_audio_tail, result_stem,
                      result_summary, run_request)

logger = logging.getLogger("musicgen_trainer.app")

GATHER_S = 0.05  # an idle worker waits this long after a request arrives: requests sent together join it

Report = tp.Callable[[str, int, int], None]  # (stage, done, total)
# A request's outcome from a batch function: its result, its error, or a pending result (see run_batch).
Outcome = tp.Union[AppResult, BaseException, tp.Callable[[], AppResult]]


def batch_key(request: AppRequest, out_root: Path) -> tp.Optional[tuple]:
    """What requests must share to be generated as one batch (with the same model cache); None:
    the request runs alone. Continuations (an audio prompt each) batch with continuations only."""
    settings = {**request.generation.to_dict(), "seed": None}
    return (request.model, request.adapter or None, str(out_root), tuple(sorted(settings.items())),
            bool(request.audio_prompt))


def run_batch(requests: tp.Sequence[AppRequest], cache: ModelCache, out_root: Path,
              reports: tp.Optional[tp.Sequence[Report]] = None) -> tp.List[Outcome]:
    """Generate ``requests`` (same ``batch_key``) as one batch; one outcome per request, in order.

    An outcome is the request's ``AppResult``, its own error, or a pending result: a function
    ``() -> AppResult`` (raising the request's error) that the caller runs once it no longer
    holds ``GENERATION_LOCK`` (it writes the files, or generates the request alone).

    One request is ``backend.run_request`` as it always was. Several: the model is loaded once,
    ``generate(model, texts, config, seeds=[each request's seed])`` makes every clip in one batch
    under the lock (continuations: ``generate_continuation`` with each request's own audio prompt,
    one batch per kept prompt length; an upload that cannot be read is that request's error), and
    each pending result writes its request's files into its own new folder.
    Raises only when the model cannot load: that is every request's error. When a batch's
    generation raises, the accelerator's cached memory is freed and each pending result of it is
    ``run_request`` for its request alone.
    """
    reports = list(reports or [None] * len(requests))
    reports = [r or (lambda stage, done, total: None) for r in reports]
    if len(requests) == 1:
        try:
            return [run_request(requests[0], cache, out_root, reports[0])]
        except Exception as exc:
            return [exc]
    outcomes: tp.List[tp.Optional[Outcome]] = [None] * len(requests)
    inputs: list = [None] * len(requests)
    for i, request in enumerate(requests):  # each upload checked before the model loads, as run_request does
        if request.audio_prompt:
            try:
                inputs[i] = open_audio_prompt(request.audio_prompt)
            except Exception as exc:
                outcomes[i] = exc
    with GENERATION_LOCK:
        for i, report in enumerate(reports):
            if outcomes[i] is None:
                report("loading model", 0, 1)
        model = cache.get(requests[0].model, requests[0].adapter or None)
        groups = _rows(model, requests, inputs, outcomes)
        for rows in groups.values():
            outcomes_of = _generate_rows(model, cache, requests, rows, reports, Path(out_root))
            for (i, _, _), outcome in zip(rows, outcomes_of):
                outcomes[i] = outcome
    return outcomes


def _rows(model, requests, inputs, outcomes) -> tp.Dict[int, list]:
    """The requests still standing as ``(index, ClipRequest, kept audio prompt [C, P] or None)``,
    grouped by the prompt's length in samples (0: text alone); a request whose upload cannot be
    read gets its error in ``outcomes``."""
    import torch

    from ..generation import prepare_audio_prompt
    groups: tp.Dict[int, list] = {}
    for i, request in enumerate(requests):
        if outcomes[i] is not None:
            continue
        try:
            audio = read_audio_tail(inputs[i], float(model.max_duration)) if inputs[i] is not None else None
            clip = clip_request(request, audio)
            kept = None if audio is None else \
                prepare_audio_prompt(model, torch.as_tensor(audio[0]), audio[1], clip.prompt_seconds)[0]
        except Exception as exc:
            outcomes[i] = exc
            continue
        groups.setdefault(0 if kept is None else kept.shape[-1], []).append((i, clip, kept))
    return groups


def _generate_rows(model, cache: ModelCache, requests, rows: list, reports, out_root: Path) -> tp.List[Outcome]:
    """One batch (under the lock): the pending results of ``rows`` (see ``_rows``), or, when the
    batch's generation fails, each request generated alone (``run_request``) once the lock is free."""
    from .. import generation
    from ..outputs import clip_record, write_outputs

    picked = [requests[i] for i, _, _ in rows]
    texts, seeds = [c.prompts[0] for _, c, _ in rows], [int(r.generation.seed) for r in picked]
    config = picked[0].generation

    def step(done: int, total: int) -> None:
        for i, _, _ in rows:
            reports[i]("generating", done, total)
    started = time.time()
    failure = None
    try:
        if rows[0][2] is None:
            wavs = generation.generate(model, texts, config, progress=step, seeds=seeds)
        else:  # the kept prompts are at the model's rate already: prepared again, they stay as they are
            wavs = generation.generate_continuation(model, [k for _, _, k in rows], model.sample_rate, texts, config,
                                                    progress=step, max_prompt_seconds=rows[0][1].prompt_seconds,
                                                    seeds=seeds)
    except Exception as exc:  # e.g. out of memory at this batch size: each request may still fit alone
        failure = f"{exc.__class__.__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
    # (out of the except block: the error's traceback, which holds the batch's tensors, is gone)
    elapsed = time.time() - started
    if failure is not None:
        logger.warning("a batch of %d requests failed (%s); generating them one by one", len(rows), failure)
        _free_accelerator_memory()
        for i, _, _ in rows:
            reports[i]("waiting for its turn", 0, 1)
        return [functools.partial(run_request, requests[i], cache, out_root, reports[i]) for i, _, _ in rows]
    return [functools.partial(_write, model, requests[i], clip, wav, kept, elapsed, len(rows), out_root,
                              clip_record, write_outputs, reports[i])
            for (i, clip, kept), wav in zip(rows, wavs)]


def _write(model, request, clip, wav, kept, elapsed: float, batch: int, out_root: Path, clip_record, write_outputs,
           report: Report):
    report("writing files", 0, 1)
    folder = _new_result_folder(out_root)
    used = None if kept is None else round(kept.shape[-1] / model.sample_rate, 6)
    try:
        record = clip_record(model, clip, 0, elapsed, used)
        record["app_batch_size"] = batch  # generated beside other requests; the clip is this request's alone
        files = write_outputs(folder / result_stem(request), wav.numpy(), model.sample_rate, record,
                              midi=clip.midi, prompt_audio=None if kept is None else kept.numpy(),
                              prompt_rate=model.sample_rate, title=clip.prompts[0] or "(no text)")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # this request's own new folder: a failure leaves none
        raise
    seconds = wav.shape[-1] / model.sample_rate
    return AppResult(wav=files.wav, png=files.png, json=files.json, midi=files.midi,
                     summary=result_summary(request, clip, seconds, elapsed, used, batch=batch))


@dataclass
class _Job:
    request: AppRequest
    cache: ModelCache
    out_root: Path
    key: tp.Optional[tuple]
    progress: tp.Optional[Report] = None  # the submitter's progress (called from its own thread only)
    owner: threading.Thread = field(default_factory=threading.current_thread)  # the submitting thread
    state: tp.Tuple[str, int, int] = ("waiting for its turn", 0, 1)
    done: threading.Event = field(default_factory=threading.Event)
    result: tp.Optional[tp.Union[AppResult, tp.Callable[[], AppResult]]] = None  # or a pending result
    error: tp.Optional[BaseException] = None

    def report(self, stage: str, done: int, total: int) -> None:
        self.state = (stage, done, total)
        if self.progress is not None and threading.current_thread() is self.owner:  # a pending result's work
            self.progress(stage, done, total)


class GenerationBatcher:
    """One worker thread generating the submitted requests, compatible waiting ones as one batch.

    ``run`` is the batch function (``run_batch`` by default; tests count its calls).
    """

    def __init__(self, max_batch: int = APP_MAX_BATCH, gather_s: float = GATHER_S,
                 run: tp.Optional[tp.Callable] = None):
        if int(max_batch) < 1:
            raise ValueError(f"the batch size must be 1 or more, got {max_batch}")
        self.max_batch = int(max_batch)
        self.gather_s = float(gather_s)
        self._run = run or run_batch
        self._pending: tp.List[_Job] = []
        self._cond = threading.Condition()
        self._thread: tp.Optional[threading.Thread] = None

    def submit(self, request: AppRequest, cache: ModelCache, out_root, progress: tp.Optional[Report] = None,
               poll_s: float = 0.2) -> AppResult:
        """``run_request(request, cache, out_root, progress)``, in a batch with the compatible requests
        waiting with it: queue ``request``, wait for its result (raises its error). ``progress(stage,
        done, total)`` is called from this thread (where Gradio's progress bar works). A request
        generated in a batch writes its files in this thread once the batch is generated (the
        worker and ``GENERATION_LOCK`` free for the next generation meanwhile)."""
        key = batch_key(request, Path(out_root))
        job = _Job(request, cache, Path(out_root), None if key is None else (id(cache),) + key, progress)
        with self._cond:
            self._pending.append(job)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="generation-batcher", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        shown = None
        while not job.done.wait(poll_s):
            if progress is not None and job.state != shown:
                shown = job.state
                progress(*shown)
        if job.error is not None:
            raise job.error
        if callable(job.result):  # a pending result (see run_batch): written here, while the worker goes on
            return job.result()
        return job.result

    def waiting(self) -> int:
        """Requests submitted and not yet taken by the worker."""
        with self._cond:
            return len(self._pending)

    def _next_batch(self) -> tp.List[_Job]:
        """The oldest waiting request and the waiting ones that can join it (at most ``max_batch``)."""
        with self._cond:
            first = self._pending[0]
            batch = [first] if first.key is None else \
                [j for j in self._pending if j.key == first.key][:self.max_batch]
            taken = set(map(id, batch))
            self._pending = [j for j in self._pending if id(j) not in taken]
            return batch

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
            time.sleep(self.gather_s)  # requests sent together arrive within milliseconds: let them join
            batch: tp.List[_Job] = []
            try:
                self._run_one_batch(batch)
            except BaseException:  # never expected (run_batch answers per request): the worker carries on
                logger.exception("the generation worker failed")
            finally:  # no request the worker took may wait forever
                for job in batch:
                    if not job.done.is_set():
                        job.error = RuntimeError("generation failed (see the server's log)")
                        job.done.set()

    def _run_one_batch(self, batch: tp.List[_Job]) -> None:
        """Take the next batch (into ``batch``, the caller's list), generate it, answer each request."""
        with GENERATION_LOCK:  # while another generation runs, requests keep gathering
            batch.extend(self._next_batch())
            try:
                outcomes = self._run([j.request for j in batch], batch[0].cache, batch[0].out_root,
                                     [j.report for j in batch])
            except BaseException as exc:  # the batch itself failed (its model cannot load): every request of it
                if not isinstance(exc, Exception):
                    logger.exception("generation batch interrupted")
                outcomes = [exc] * len(batch)
        if not isinstance(outcomes, (list, tuple)) or len(outcomes) != len(batch):  # never expected
            raise RuntimeError(f"the batch function returned {type(outcomes).__name__}, not {len(batch)} results")
        for job, outcome in zip(batch, outcomes):
            if isinstance(outcome, BaseException):
                job.error = outcome
            else:  # a result, or a pending one: its own thread writes the files, the lock free
                job.result = outcome
            job.done.set()
