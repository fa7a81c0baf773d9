"""The web app: ``python -m musicgen_trainer.app``, then open http://127.0.0.1:7860.

``page.py`` lays out the Gradio page; ``backend.py`` is what the page does, without Gradio
(model list, model cache, request checks, one request -> files), so it is tested directly.

The names below load on first use: the job wrapper (``python -m musicgen_trainer.app.jobs``)
imports this package too, and must not pay for Gradio and torch while it only waits.
"""
from importlib import import_module

__all__ = ["App", "build_demo", "build_parser", "launch", "main", "serve_in_background"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(import_module(".page", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
