"""The dataset format: the few numbers and names every package must agree on.

``dataset_tools prepare`` writes this format; the genre classifier and the MusicGen trainer
read it. Everything else lives beside the code that uses it. Importing this is free (no
third-party modules).
"""

SAMPLE_RATE = 44_100              # Hz: prepared WAVs, 16-bit PCM, mono by default (prepare --channels 2: stereo)
CHANNELS = 1
SUBTYPE = "PCM_16"
SEGMENT_SECONDS = 30.0            # MusicGen's training window: prepare cuts tracks into segments this long
MIN_SEGMENT_SECONDS = 1.0         # a trailing remainder shorter than this is dropped
VALID_FRACTION = 0.1              # share of source tracks put in the validation split

UNKNOWN_GENRE_DIRS = ("unknown", "unknow")  # folders of unlabelled tracks
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".opus", ".m4a", ".aac", ".aiff", ".aif", ".wma", ".webm")
MIDI_EXTENSIONS = (".mid", ".midi")
