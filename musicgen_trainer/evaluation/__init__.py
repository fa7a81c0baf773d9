"""Evaluation of a fine-tune against its base model (issue 16).

``evaluate.py``: ``evaluate(config) -> report folder``, the ``python -m musicgen_trainer evaluate``
command's library function, over ``evaluate_config.py`` (``EvaluateConfig``, what its options
resolve to, the report folder) and ``evaluate_measures.py`` (both models' clips -> the report's
measures). Pure metric functions, each in its own module, that it and the training-time
evaluation call:

- ``fad.py``: Fréchet distance between two sets of embeddings, with a bootstrap interval.
- ``embeddings.py``: clip embeddings that exist offline (the genre classifier's penultimate layer,
  the model's own EnCodec latents) and CLAP (audio and text) when its weights are local.
- ``genre_adherence.py``: was a "jazz" prompt heard as jazz by the user's genre classifier?
- ``held_out.py``: held-out cross-entropy per codebook, exactly the training objective.
- ``sanity.py``: flags for silent, clipped and repetitive clips, and memorised training audio.
- ``report.py``: report.json -> report.md / report.html / plots.
"""
