"""Sharing a fine-tune: transformers' format both ways (``transformers_format``)."""
