"""bench/gpu_check.py runs only when a GPU is lent (minutes, rarely): its --smoke mode runs the
same checks with tiny shapes on the CPU here, so a broken script is found before GPU time is spent."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_runs_every_check(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--smoke", "--json", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert {r["check"] for r in results} == {"step", "train", "resume", "generate", "decode"}
    assert not [r for r in results if "error" in r]
    by_model = {r["model"]: r for r in results if r["check"] == "train"}
    assert by_model["tiny-stereo"]["wav_shape"][0] == 2 and by_model["tiny-melody"]["melody_wav_shape"][0] == 1
    assert all(r["tokens_per_s"] > 0 for r in results if r["check"] == "step")
    decode = [r for r in results if r["check"] == "decode"]
    assert decode and all(r["same_codes"]["eager"] == 1.0 and r["ratio"] > 0 for r in decode)
