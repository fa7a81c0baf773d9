"""Audio constants shared by every part of the project.

One place for the numbers that the dataset tools, the genre classifier and the
MusicGen trainer must agree on. Importing this module is cheap (no torch).
"""

# --- Dataset (what `dataset_tools prepare` writes) --------------------------
DATASET_SAMPLE_RATE = 44_100      # Hz: prepared WAVs, mono 16-bit PCM
DATASET_CHANNELS = 1
DATASET_SUBTYPE = "PCM_16"
SEGMENT_SECONDS = 30.0            # MusicGen's training window
MIN_SEGMENT_SECONDS = 1.0         # a trailing remainder shorter than this is dropped

# --- MusicGen (EnCodec 32 kHz, as in the released checkpoints) --------------
MUSICGEN_SAMPLE_RATE = 32_000     # Hz: audio is resampled to this before encoding
MUSICGEN_FRAME_RATE = 50          # EnCodec frames (LM steps) per second
MUSICGEN_HOP_LENGTH = MUSICGEN_SAMPLE_RATE // MUSICGEN_FRAME_RATE  # 640 samples per frame
MUSICGEN_CODEBOOKS = 4            # residual codebooks per frame (mono models)
MUSICGEN_CARD = 2048              # codes per codebook; `card` is also the special (masked) token
MUSICGEN_MAX_SECONDS = 30.0       # context window of the released models
MUSICGEN_EXTEND_STRIDE = 18.0     # audiocraft's default stride for generation beyond the window

# --- Genre classifier (MFCC CNN) ---------------------------------------------
CLASSIFIER_SAMPLE_RATE = 22_050
CLASSIFIER_N_MFCC = 13
CLASSIFIER_N_FFT = 2048
CLASSIFIER_HOP_LENGTH = 512
CLASSIFIER_SEGMENT_SECONDS = 3.0  # 3 s at 22.05 kHz / hop 512 -> 130 frames
CLASSIFIER_N_MELS = 128           # mel bands under the MFCCs (librosa's default)
CLASSIFIER_MIN_TRACK_SECONDS = 0.5  # shorter files are skipped; 0.5-3 s ones are zero-padded
CLASSIFIER_SILENCE_DBFS = -60.0   # a file whose peak is below this is skipped as silent

# --- Names ---------------------------------------------------------------------
UNKNOWN_GENRE_DIRS = ("unknown", "unknow")  # folders of unlabelled tracks
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".opus", ".m4a", ".aac", ".aiff", ".aif", ".wma", ".webm")
MIDI_EXTENSIONS = (".mid", ".midi")

# --- Dataset preparation (`dataset_tools prepare`) ------------------------------
SILENCE_DB = -60.0                # leading/trailing audio quieter than this (dBFS peak) is trimmed
MIN_TRACK_SECONDS = 0.1           # a whole track with less sound than this is skipped as empty
MIDI_RELEASE_SECONDS = 1.0        # kept after a rendered MIDI file's last note-off (release tail)
ANALYSIS_SAMPLE_RATE = 22_050     # Hz: tempo/key estimation runs on a downsampled copy
ANALYSIS_MAX_SECONDS = 60.0       # ...of at most this much audio from the middle of the track
VALID_FRACTION = 0.1              # share of source tracks put in the validation split

# --- Generation (generate.py and the web app) -----------------------------------
GENERATION_MAX_SECONDS = 600.0    # longest clip generate.py makes (windowed beyond the model's window)
GENERATION_MAX_BATCH = 64         # prompts in one generate.py call
APP_MAX_SECONDS = 60.0            # longest clip the web app makes
APP_MAX_PROMPT_CHARS = 500        # longest text prompt the web app accepts
APP_MAX_UPLOAD_MB = 25            # largest audio-prompt upload the web app accepts
APP_MAX_PROMPT_AUDIO_SECONDS = 600.0  # longest audio-prompt upload decoded (its end is used)
APP_MODEL_CACHE = 2               # loaded models kept in memory by the web app (least recently used go)

# --- Source separation (`dataset_tools separate`, `prepare --remove-vocals`) ------
SEPARATION_MODEL = "htdemucs"     # demucs' default pretrained model (4 stems, 44.1 kHz stereo)
SEPARATION_STEMS = ("instrumental", "vocals")  # default stems; instrumental = mix - vocals
SEPARATION_OVERLAP = 0.25         # share of each model window overlapping the next (as demucs)
SEPARATION_MAX_SHIFT_SECONDS = 0.5  # random window offsets of the "shift trick" (as demucs)
SEPARATION_BLOCK_FRAMES = 65_536  # input frames decoded per read: memory stays flat with length
SEPARATION_DOWNLOAD_TIMEOUT_S = 60  # a pretrained download whose connection stalls this long fails
