"""Sharing a fine-tune: transformers' format both ways (``transformers_format``), its model card
(README.md with samples: ``card``), the Hugging Face Hub push (``push``)."""
