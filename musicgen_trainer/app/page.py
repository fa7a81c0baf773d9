"""The web app: ``python -m musicgen_trainer.app`` then open http://127.0.0.1:7860.

Pick a model (pretrained, ``tiny``, or any export under ``checkpoints/``), optionally a LoRA
adapter found under ``checkpoints/`` (which picks its base model), write a prompt,
tick genres (a fine-tune offers the genres it was trained on), optionally upload audio to
continue, and get the audio, its spectrogram and WAV/MIDI downloads. Requests wait in a
queue; those waiting together for the same model and settings are generated as one batch
(``--batch``, see ``batching``); loaded models are cached.

Safe by default: it listens on 127.0.0.1 unless ``--host`` or ``--share`` is given, reads
only files uploaded through the page, bounds text, upload size and duration, and shows
errors as messages in the page (tracebacks go to the server's log only). The page names
fine-tunes by their folder under ``checkpoints/`` (``export:my-run/export``), never by a
server path (adapters likewise: ``adapter:my-run/adapter``), and the app deletes only result
folders it made itself (see ``backend``).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
import typing as tp
from pathlib import Path

from .backend import (APP_BATCH_LIMIT, APP_MAX_BATCH, APP_MAX_SECONDS, APP_MAX_UPLOAD_MB, APP_MODEL_CACHE, NO_ADAPTER,
                      hub_cached)

logger = logging.getLogger("musicgen_trainer.app")

RESCAN_INTERVAL_S = 5.0  # the checkpoints folder is walked at most once per this many seconds
APP_MAX_QUEUE = 20  # --max-queue: requests allowed to wait besides the Generate requests the batcher holds
OTHER_THREADS = 40  # Gradio's worker threads (its default) kept for every event but Generate's waiting requests


class App:
    """The page's state: the model list (rescanned on demand) and the model cache.

    Models are known by two names: ``value``, what the server loads (a fine-tune's folder),
    and ``key``, what the page and API callers see and send (``export:jazzrun/export``: the
    folder relative to ``checkpoints``). The page never receives a server path.
    """

    def __init__(self, checkpoints: tp.Optional[str] = "checkpoints", out: str = "outputs/app",
                 device: tp.Optional[str] = None, max_duration: float = APP_MAX_SECONDS,
                 cache_size: int = APP_MODEL_CACHE, pretrained: tp.Optional[tp.Sequence[str]] = None,
                 midi_default: bool = True, rescan_interval: float = RESCAN_INTERVAL_S,
                 clock: tp.Callable[[], float] = time.monotonic, data_root: tp.Optional[str] = "datasets",
                 batch: int = APP_MAX_BATCH):
        from .backend import ModelCache
        from .batching import GenerationBatcher
        from ..models import PRETRAINED_NAMES
        self.checkpoints = checkpoints
        # The studio tabs read, list and write only under these two roots (see paths.confined).
        self.data_root = Path(data_root) if data_root else None
        self.out = Path(out)
        self.max_duration = float(max_duration)
        self.pretrained = list(PRETRAINED_NAMES if pretrained is None else pretrained)
        self.cache = ModelCache(cache_size, device=device)
        self.batcher = GenerationBatcher(max_batch=batch)  # the Generate tab's requests
        self.midi_default = midi_default
        self.rescan_interval = float(rescan_interval)
        self.clock = clock
        self.scans = 0  # times the checkpoints folder was actually walked
        self._scan_lock = threading.Lock()
        self._scanned_at: tp.Optional[float] = None
        self.rescan()

    def rescan(self):
        """Walk ``checkpoints`` again, unless that was done less than ``rescan_interval`` ago
        (then the current list is returned as is): however often it is asked, from the page or
        by anyone who can reach the server, the folder is walked at most once per interval,
        one walk at a time."""
        from .backend import list_adapters, list_models
        with self._scan_lock:
            now = self.clock()
            if self._scanned_at is not None and now - self._scanned_at < self.rescan_interval:
                return self.choices
            choices = list_models(self.checkpoints, self.pretrained)
            self.choices = choices
            self.by_value = {c.value: c for c in choices}
            self.by_key = {c.key: c for c in choices}
            # The same walk's roots; each adapter's musicgen_lora.json is read, never its weights.
            self.adapters = list_adapters(self.checkpoints, choices)
            self.adapter_by_key = {a.key: a for a in self.adapters}
            self.scans += 1
            self._scanned_at = self.clock()
            return choices

    def key_of(self, value: str) -> str:
        """The public key of model ``value`` (itself when it is not listed)."""
        choice = self.by_value.get(value)
        return choice.key if choice else value

    def value_of(self, key: str) -> tp.Optional[str]:
        """What the server loads for public key ``key``; None when it is not in the list."""
        choice = self.by_key.get(key)
        return choice.value if choice else None

    def dropdown_choices(self) -> tp.List[tp.Tuple[str, str]]:
        """``(label, key)`` pairs: what the page's model list holds."""
        return [(c.label, c.key) for c in self.choices]

    def adapter_choices(self) -> tp.List[tp.Tuple[str, str]]:
        """``(label, key)`` pairs of the adapter picker: ``none`` first, then every adapter found."""
        return [(NO_ADAPTER, NO_ADAPTER)] + [(a.label, a.key) for a in self.adapters]

    def adapter_of(self, key: tp.Optional[str]):
        """The listed ``AdapterChoice`` for public key ``key``; None for ``none`` or an unknown key."""
        return self.adapter_by_key.get(key) if key and key != NO_ADAPTER else None

    def adapter_note(self, adapter_key: tp.Optional[str], model_value: str) -> str:
        """What the page says under the pickers about the chosen adapter: what is applied, or
        why it cannot be (the one-line error a request would get)."""
        from .backend import check_adapter_base
        adapter = self.adapter_of(adapter_key)
        if adapter is None:
            return ""
        try:
            check_adapter_base(adapter, model_value)
        except ValueError as exc:
            return f"**{self.public_text(str(exc))}**"
        return f"LoRA adapter {adapter.key} (rank {adapter.rank}) is merged into {adapter.base_name} when it loads."

    def public_text(self, text: str) -> str:
        """``text`` (an error message) with the fine-tunes' and adapters' server folders replaced by their keys."""
        folders = [(c.value, c.key) for c in self.choices if c.export] + [(a.value, a.key) for a in self.adapters]
        for value, key in sorted(folders, key=lambda f: -len(f[0])):
            text = text.replace(value, key)
        if self.checkpoints:
            root = Path(self.checkpoints)
            for spelled in sorted({str(root.resolve()), str(root.absolute())}, key=len, reverse=True):
                if len(spelled) > 1:  # never "/" alone
                    text = text.replace(spelled, root.name or "checkpoints")
        return text

    def default_model(self) -> str:
        exports = [c for c in self.choices if c.export]
        if exports:  # the most recently exported fine-tune
            return max(exports, key=lambda c: _mtime(Path(c.value) / "state_dict.bin")).value
        if "facebook/musicgen-small" in self.by_value and hub_cached("facebook/musicgen-small"):
            return "facebook/musicgen-small"
        return "tiny"

    def duration_limit(self, value: str) -> float:
        choice = self.by_value.get(value)
        window = choice.window if choice else 30.0
        return max(1.0, min(self.max_duration, 2 * window))

    def guidance(self, value: str) -> float:
        """Model ``value``'s own guidance coefficient (3 for one not listed): the Generate tab's
        guidance control starts at it, as generate.py and the Compare tab use it when none is given."""
        from ..generation import MUSICGEN_CFG_COEF
        choice = self.by_value.get(value)
        return choice.guidance if choice else MUSICGEN_CFG_COEF

    def genre_choices(self, value: str) -> tp.List[str]:
        from .backend import BASE_GENRES
        choice = self.by_value.get(value)
        return list(choice.genres) if choice and choice.genres else list(BASE_GENRES)

    def model_note(self, value: str) -> str:
        choice = self.by_value.get(value)
        if choice is None or not choice.genres:
            return ""
        note = f"Trained on: {', '.join(choice.genres)}."
        if choice.examples:
            note += " Training captions look like: " + " · ".join(f"*{e}*" for e in choice.examples[:3])
        return note


def build_demo(app: App):
    """The Gradio ``Blocks`` page (queue included) for ``app``: one tab per step of the job,
    from a folder of music to a fine-tune and a comparison (see docs/app.md)."""
    import gradio as gr

    from .tab_captions import build_captions_tab
    from .tab_compare import build_compare_tab
    from .tab_data import build_data_tab
    from .tab_generate import build_generate_tab
    from .tab_tag import build_tag_tab
    from .tab_train import build_train_tab

    with gr.Blocks(title="MusicGen", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("## MusicGen studio: your music in, a fine-tuned MusicGen out")
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Data", id="data", elem_id="tab-data"):
                build_data_tab(app)
            with gr.Tab("Captions", id="captions", elem_id="tab-captions"):
                build_captions_tab(app)
            with gr.Tab("Tag", id="tag", elem_id="tab-tag"):
                build_tag_tab(app)
            with gr.Tab("Train", id="train", elem_id="tab-train"):
                build_train_tab(app)
            with gr.Tab("Generate", id="generate", elem_id="tab-generate"):
                build_generate_tab(app)
            with gr.Tab("Compare", id="compare", elem_id="tab-compare"):
                build_compare_tab(app)
    return demo


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def server_threads(app: App) -> int:
    """Gradio worker threads for ``app``'s page: the Generate requests waiting in the batcher hold
    one each (up to ``tab_generate.generate_concurrency``), on top of the ``OTHER_THREADS`` that
    every other event keeps, so another tab answers however many Generate requests wait."""
    from .tab_generate import generate_concurrency
    return OTHER_THREADS + generate_concurrency(app.batcher.max_batch)


def queue_size(app: App, max_queue: int = APP_MAX_QUEUE) -> int:
    """Gradio's queue bound for ``app``'s page: ``max_queue`` requests waiting, plus the Generate
    requests the batcher takes at once (``tab_generate.generate_concurrency``). Those pass through
    Gradio's queue on their way in, and a burst of them arrives before Gradio's dispatch loop has moved
    any into the batcher: counted as waiting, such a burst was refused ("Queue is full") while
    fewer than ``max_queue`` requests really waited."""
    from .tab_generate import generate_concurrency
    return int(max_queue) + generate_concurrency(app.batcher.max_batch)


def launch(demo, host: str = "127.0.0.1", port: tp.Optional[int] = 7860, share: bool = False,
           max_queue: int = APP_MAX_QUEUE, block: bool = True, max_threads: int = OTHER_THREADS):
    """Queue (one generation at a time, at most ``max_queue`` in Gradio's queue: ``queue_size(app)``)
    and serve with ``max_threads`` worker threads (``server_threads(app)``)."""
    demo.queue(default_concurrency_limit=1, max_size=max_queue)
    _bypass_proxy_for(host)
    return demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                       max_threads=max_threads,
                       max_file_size=f"{APP_MAX_UPLOAD_MB}mb", show_error=True, quiet=not block,
                       footer_links=["gradio"])


def _bypass_proxy_for(host: str) -> None:
    """Gradio checks its own page over HTTP at start-up; behind an http(s)_proxy that does not
    exempt this machine, that check goes to the proxy and start-up fails ("Couldn't start the app")."""
    for var in ("NO_PROXY", "no_proxy"):
        names = [n for n in os.environ.get(var, "").split(",") if n.strip()]
        for name in (host, "127.0.0.1", "localhost"):
            if name not in names:
                names.append(name)
        os.environ[var] = ",".join(names)


def serve_in_background(app: App, host: str = "127.0.0.1", port: tp.Optional[int] = None,
                        max_queue: int = APP_MAX_QUEUE):
    """Start the page in this process without blocking (tests, screenshots); returns
    ``(demo, url)``; stop it with ``demo.close()``. ``port=None`` picks a free port; ``max_queue``
    is ``--max-queue`` (requests allowed to wait besides those the batcher holds)."""
    import socket
    for attempt in range(3 if port is None else 1):
        chosen = port
        if chosen is None:
            with socket.socket() as s:
                s.bind((host, 0))
                chosen = s.getsockname()[1]
        demo = build_demo(app)
        try:
            launch(demo, host=host, port=chosen, block=False, max_queue=queue_size(app, max_queue),
                   max_threads=server_threads(app))
        except OSError:  # the free port was taken between picking and listening: pick another
            demo.close()
            if attempt == 2 or port is not None:
                raise
            continue
        return demo, f"http://{host}:{chosen}/"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m musicgen_trainer.app", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: the network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also publish a temporary public gradio.live link")
    p.add_argument("--checkpoints", default="checkpoints",
                   help="folder of classifiers, training runs and exports: searched for models, and where the "
                        "page's training runs are written (default checkpoints)")
    p.add_argument("--data-root", default="datasets",
                   help="folder of music libraries and prepared datasets: the page lists, reads and writes "
                        "nothing outside it and --checkpoints (default datasets)")
    p.add_argument("--out", default="outputs/app", help="where results are written (default outputs/app)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--max-duration", type=float, default=APP_MAX_SECONDS,
                   help=f"longest clip a request may ask for, seconds (default {APP_MAX_SECONDS:g})")
    p.add_argument("--cache", type=int, default=APP_MODEL_CACHE, help="models kept loaded (default 2)")
    p.add_argument("--max-queue", type=int, default=APP_MAX_QUEUE,
                   help=f"requests allowed to wait, besides the Generate requests the batcher holds "
                        f"(twice --batch) (default {APP_MAX_QUEUE})")
    p.add_argument("--batch", type=int, default=APP_MAX_BATCH,
                   help=f"largest batch: Generate requests waiting together for the same model, duration and "
                        f"sampling settings are generated as one batch of up to this many, each with its own "
                        f"seed and the same clip as alone up to float rounding (1: one at a time; at most "
                        f"{APP_BATCH_LIMIT}; default {APP_MAX_BATCH})")
    from dataset_tools.cli import add_debug_flag
    add_debug_flag(p)
    return p


def main(argv=None) -> int:
    """Serve the page until Ctrl-C. Exit status: 2 for a bad option or an address it cannot
    listen on, 1 for a failure while serving, 130 after Ctrl-C (the project's CLI convention)."""
    from dataset_tools.cli import run_command
    args = build_parser().parse_args(argv)

    def command() -> int:
        if not 0 < args.max_duration <= 600:
            raise ValueError("--max-duration must be more than 0 and at most 600 seconds")
        if args.max_queue < 0:
            raise ValueError("--max-queue must be 0 or more")
        if not 1 <= args.batch <= APP_BATCH_LIMIT:
            raise ValueError(f"--batch must be between 1 and {APP_BATCH_LIMIT}")
        if args.host not in ("127.0.0.1", "localhost", "::1") or args.share:
            print("note: the app is reachable from other machines; anyone who can reach it can use it",
                  file=sys.stderr)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        app = App(checkpoints=args.checkpoints, out=args.out, device=args.device, max_duration=args.max_duration,
                  cache_size=args.cache, data_root=args.data_root, batch=args.batch)
        try:
            launch(build_demo(app), host=args.host, port=args.port, share=args.share, max_queue=queue_size(app, args.max_queue),
                   max_threads=server_threads(app))
        except OSError as exc:  # port in use, bad address
            raise ValueError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
        return 0
    return run_command(command, debug=args.debug)

if __name__ == "__main__":
    sys.exit(main())
