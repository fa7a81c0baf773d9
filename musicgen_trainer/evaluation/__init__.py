"""Evaluation of a fine-tune against its base: metrics and the report."""
