"""The web app: ``python -m musicgen_trainer.app``, then open http://127.0.0.1:7860.

``page.py`` lays out the Gradio page; ``backend.py`` is what the page does, without Gradio
(model list, model cache, request checks, one request -> files), so it is tested directly.
"""
from .page import App, build_demo, build_parser, launch, main, serve_in_background

__all__ = ["App", "build_demo", "build_parser", "launch", "main", "serve_in_background"]
