"""push: exactly the export's files in one commit (never training states, logs, caches or
anything outside the folder), the card's repo filled in; offline or without a token a one-line
error before any Hub call."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from musicgen_trainer.sharing.card import CARD_MARK, REPO_LINE, REPO_PLACEHOLDER
from musicgen_trainer.sharing.push import PushOptions, push

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = ["README.md", "adapter/adapter_config.json", "compression_state_dict.bin", "export_info.json",
            "samples/sample_01.png", "samples/sample_01.wav", "state_dict.bin"]


class FakeHfApi:
    """Records every call; ``instances`` holds each one made."""
    instances: list = []

    def __init__(self, token=None, **kwargs):
        self.token, self.calls = token, []
        FakeHfApi.instances.append(self)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_commit(self, repo_id, operations, **kwargs):
        self.calls.append(("create_commit", repo_id, kwargs))
        self.operations = list(operations)
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    def __getattr__(self, name):  # any other call (upload_file, ...) would be a second commit
        raise AssertionError(f"unexpected HfApi.{name}")


@pytest.fixture
def online(monkeypatch):
    """Online, with a token, and HfApi replaced by the fake."""
    from huggingface_hub import constants
    import huggingface_hub
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_fake_token")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    FakeHfApi.instances = []
    return FakeHfApi


def _export(tmp_path) -> Path:
    """A run folder's export with its card, plus what must never be uploaded."""
    run = tmp_path / "run"
    export = run / "export"
    (export / "samples").mkdir(parents=True)
    (export / "adapter").mkdir()
    for name in ("state_dict.bin", "compression_state_dict.bin", "export_info.json", "samples/sample_01.wav",
                 "samples/sample_01.png", "adapter/adapter_config.json"):
        (export / name).write_bytes(b"x")
    (export / "README.md").write_text(f"---\nlicense: mit\n---\n{CARD_MARK}\n\n```python\n"
                                      f"{REPO_LINE.format(REPO_PLACEHOLDER)}\n```\n", encoding="utf-8")
    # never uploaded: training states, logs, caches, partial and hidden files
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "step_00000010.pt").write_bytes(b"state")
    for name in ("step_00000010.pt", "events.out.tfevents.1.host", "state_dict.bin.part", ".DS_Store"):
        (export / name).write_bytes(b"junk")
    for folder in ("tensorboard", "checkpoints", ".cache", "__pycache__"):
        (export / folder).mkdir()
        (export / folder / "x.bin").write_bytes(b"junk")
    return export


def test_push_uploads_exactly_the_export_files_in_one_commit(tmp_path, online, capsys):
    export = _export(tmp_path)
    url = push(PushOptions(export=str(export), repo="alice/lofi-jazz", private=True))
    assert url == "https://huggingface.co/alice/lofi-jazz/commit/abc"
    (api,) = online.instances
    assert api.token == "hf_fake_token"
    assert [c[0] for c in api.calls] == ["create_repo", "create_commit"]
    assert api.calls[0][2]["exist_ok"] is True and api.calls[0][2]["private"] is True
    assert sorted(op.path_in_repo for op in api.operations) == EXPECTED
    card = next(op for op in api.operations if op.path_in_repo == "README.md")
    uploaded = card.path_or_fileobj
    assert REPO_LINE.format("alice/lofi-jazz").encode() in uploaded and REPO_PLACEHOLDER.encode() not in uploaded
    # the local card is unchanged (the snippet keeps its placeholder there)
    assert REPO_PLACEHOLDER in (export / "README.md").read_text(encoding="utf-8")
    assert "pushing 7 files" in capsys.readouterr().out


def test_a_link_out_of_the_export_stops_the_push_before_any_hub_call(tmp_path, online):
    export = _export(tmp_path)
    (tmp_path / "private.wav").write_bytes(b"someone else's")
    os.symlink(tmp_path / "private.wav", export / "samples" / "sample_02.wav")
    with pytest.raises(ValueError, match="outside") as err:
        push(PushOptions(export=str(export), repo="alice/x"))
    assert "\n" not in str(err.value) and online.instances == []


def test_no_card_no_push(tmp_path, online):
    export = _export(tmp_path)
    (export / "README.md").unlink()
    with pytest.raises(ValueError, match="musicgen_trainer card"):
        push(PushOptions(export=str(export), repo="alice/x"))
    assert online.instances == []


def test_offline_or_no_token_is_one_line_before_any_work(tmp_path, online, monkeypatch):
    import huggingface_hub
    missing = str(tmp_path / "not-even-there")  # checked after: the error comes first
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="offline") as err:
        push(PushOptions(export=missing, repo="alice/x"))
    assert "\n" not in str(err.value)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ValueError, match="HF_TOKEN") as err:
        push(PushOptions(export=missing, repo="alice/x"))
    assert "\n" not in str(err.value) and online.instances == []
    with pytest.raises(ValueError, match="USER/NAME"):
        PushOptions(export=missing, repo="no-slash")


def test_push_command_offline_exits_2_with_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "musicgen_trainer", "push", str(tmp_path), "--repo", "alice/x"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("error: offline")
    assert "torch" not in proc.stderr


def test_dry_run_lists_the_files_and_calls_no_hub_even_offline(tmp_path, online, monkeypatch, capsys):
    export = _export(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert push(PushOptions(export=str(export), repo="alice/x", dry_run=True)) == ""
    listed = [line.strip() for line in capsys.readouterr().out.splitlines()[1:]]
    assert listed == EXPECTED and online.instances == []
