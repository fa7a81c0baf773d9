"""Sharing a fine-tune: its model card (README.md with samples), the Hugging Face Hub push, other formats."""
