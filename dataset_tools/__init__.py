"""Turn a folder of music into clean, captioned MusicGen training data."""
