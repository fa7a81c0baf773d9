"""``python -m musicgen_trainer push EXPORT --repo USER/NAME [--private]``: an export on the
Hugging Face Hub, as one commit.

What is uploaded is the export folder's own files, listed before anything is sent
(``files_to_push``): the weights (audiocraft's layout and/or transformers'), ``export_info.json``,
the model card ``README.md`` and its ``samples/``, a LoRA ``adapter/``. Never training states
(``*.pt``), TensorBoard logs, caches, hidden files or partial writes; never anything outside the
folder (a symlink that leads out of it stops the push). The card's snippets get the repo's name.

Order: the repo name, then offline mode and the token (``HF_TOKEN``, or ``hf auth login``'s
cache: ``huggingface_hub.get_token``), each a one-line error before any other work; then the
folder and its card; then ``create_repo(exist_ok=True)`` and one ``create_commit`` with every
file: the Hub applies a commit whole or not at all, so a failed push leaves nothing half-uploaded.
"""
from __future__ import annotations

import os
import re
import typing as tp
from dataclasses import dataclass
from pathlib import Path

from dataset_tools.cli import option

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
HUB_URL = "https://huggingface.co"
# Never uploaded: training states and checkpoints, TensorBoard logs, Python caches, partial writes.
SKIP_FILE = re.compile(r"(\.pt|\.pth|\.ckpt|\.part|\.tmp|\.pyc)$|^events\.out\.tfevents\.")
SKIP_DIRS = ("checkpoints", "tensorboard", "__pycache__", "cache")


@dataclass
class PushOptions:
    """Every option of ``python -m musicgen_trainer push``: each field one flag."""
    export: str = option(help="the export folder (a run's export/ or export-best/, or a transformers-format export) "
                         "with its model card", positional=True, metavar="EXPORT")
    repo: str = option(help="the Hub repository, USER/NAME or ORG/NAME (created when missing)", metavar="USER/NAME")
    private: bool = option(False, "create the repository private (an existing one keeps its visibility)")
    message: str = option("Upload a MusicGen fine-tune (musicgen_trainer)", "the commit message", metavar="TEXT")
    dry_run: bool = option(False, "list the files that would be uploaded, and upload nothing (needs no token)")

    def __post_init__(self):
        if not REPO_ID.match(str(self.repo or "")):
            raise ValueError(f"--repo {self.repo!r} is not a Hub repository name: give USER/NAME, e.g. alice/lofi-jazz")


def _offline() -> bool:
    from huggingface_hub import constants
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in constants.ENV_VARS_TRUE_VALUES or constants.is_offline_mode()


def hub_token() -> str:
    """The token to push with; ValueError (one line) offline or without one. Makes no request."""
    if _offline():
        raise ValueError("offline (HF_HUB_OFFLINE is set): cannot push to the Hugging Face Hub; unset it and "
                         "connect to push")
    from huggingface_hub import get_token
    token = get_token()
    if not token:
        raise ValueError("not logged in to the Hugging Face Hub: set HF_TOKEN or run `hf auth login` "
                         "(a token with write access)")
    return token


def files_to_push(export) -> tp.List[Path]:
    """The files of ``export`` to upload, relative to it, sorted. ValueError (one line) for a
    symlink that leads out of the folder."""
    root = Path(export)
    real_root = root.resolve()
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for name in list(dirnames):
            path = here / name
            if path.is_symlink():
                _check_inside(path, real_root, root)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS
                             and not (here / d).is_symlink())  # a linked folder inside: its files are there anyway
        for name in sorted(filenames):
            path = here / name
            if path.is_symlink():
                _check_inside(path, real_root, root)
            if name.startswith(".") or SKIP_FILE.search(name) or not path.is_file():
                continue
            files.append(path.relative_to(root))
    return sorted(files)


def _check_inside(path: Path, real_root: Path, root: Path) -> None:
    target = path.resolve()
    if target != real_root and real_root not in target.parents:
        raise ValueError(f"{path} is a link to {target}, outside {root}: push uploads the export folder's own "
                         f"files only; replace the link with the file, or remove it")


def push(options: PushOptions, api=None) -> str:
    """Upload ``options.export`` to ``options.repo`` as one commit; returns the commit's URL
    ("" with ``dry_run``). ``api``: an ``HfApi`` (default: one with the token found)."""
    token = None if options.dry_run else hub_token()  # offline / no token: before any other work
    from ..run_folder import CARD_FILE
    from .card_data import export_formats
    from .card import CARD_MARK, fill_repo
    export = Path(options.export).expanduser()
    if not export.is_dir() or not export_formats(export):
        raise ValueError(f"{options.export} is not an export folder (audiocraft's state_dict.bin + "
                         f"compression_state_dict.bin, or a transformers config.json + model.safetensors)")
    card = export / CARD_FILE
    if not card.is_file():
        raise ValueError(f"{export} has no model card ({CARD_FILE}): write it with "
                         f"python -m musicgen_trainer card {export}")
    files = files_to_push(export)
    from huggingface_hub import CommitOperationAdd, HfApi
    operations = []
    for rel in files:
        if rel.as_posix() == CARD_FILE:
            text = card.read_text(encoding="utf-8")
            data = (fill_repo(text, options.repo) if CARD_MARK in text else text).encode("utf-8")
            operations.append(CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=data))
        else:
            operations.append(CommitOperationAdd(path_in_repo=rel.as_posix(), path_or_fileobj=str(export / rel)))
    size = sum((export / rel).stat().st_size for rel in files)
    if options.dry_run:
        print(f"would push {len(files)} files ({size / 1e6:.1f} MB) from {export} to {HUB_URL}/{options.repo}:")
        print("\n".join(f"  {rel.as_posix()}" for rel in files))
        return ""
    print(f"pushing {len(files)} files ({size / 1e6:.1f} MB) from {export} to {HUB_URL}/{options.repo}")
    api = api if api is not None else HfApi(token=token)
    api.create_repo(options.repo, repo_type="model", private=options.private, exist_ok=True)
    commit = api.create_commit(repo_id=options.repo, repo_type="model", operations=operations,
                               commit_message=options.message)
    url = getattr(commit, "commit_url", None) or f"{HUB_URL}/{options.repo}"
    print(f"pushed: {url}")
    return url
