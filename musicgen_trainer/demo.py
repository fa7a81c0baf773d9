"""The offline demo behind `make demo`: tiny model in, generated WAV out."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class DemoConfig:
    out: Path = Path("demo_output")
    model: str = "tiny"
    duration: float = 2.0
    prompt: str = "lo-fi jazz, piano, 80 bpm"

    def __post_init__(self):
        self.out = Path(self.out)
        if not 0 < self.duration <= 30:
            raise ValueError(f"demo duration must be between 0 and 30 s, got {self.duration}")


def run_demo(config: DemoConfig) -> Path:
    """Load the model, print its summary, generate one clip; returns the WAV path."""
    from dataset_tools.audio_io import write_wav_atomic

    from .generation import GenerationConfig, generate
    from .loading import format_summary, load_model, model_summary

    start = time.time()
    model = load_model(config.model)
    print(format_summary(model_summary(model)))
    wav = generate(model, [config.prompt], GenerationConfig(duration=config.duration, seed=0))
    path = write_wav_atomic(config.out / "demo.wav", wav[0].numpy(), model.sample_rate)
    meta = {**asdict(config), "out": str(config.out), "sample_rate": model.sample_rate,
            "samples": int(wav.shape[-1]), "seconds_taken": round(time.time() - start, 2)}
    (config.out / "demo.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {path} ({wav.shape[-1] / model.sample_rate:.2f} s at {model.sample_rate} Hz)")
    return path
