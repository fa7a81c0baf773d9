"""An export's own copy of its sentencepiece text tokenizer (``tokenizer/`` inside the export).

A model converted from a transformers folder (or any tiny-conditioner model whose T5 tokenizer
is a sentencepiece one, as the released models') needs that vocabulary to read captions. An
export carries it under the fixed relative name ``TOKENIZER_DIR`` and its ``xp.cfg`` names it
so (``musicgen_trainer.tokenizer_folder``), never by a path of the machine that wrote it: a
pushed export then loads anywhere and says nothing about where its author kept their files.

Loading resolves that name inside the export folder only (``tokenizer_folder_in``): an
``xp.cfg`` comes with a download, so an absolute path, ``..`` or a link that leads out of the
folder is refused in one line. The files are read as data by transformers' ``T5Tokenizer``
(``tiny.load_t5_tokenizer``), never by an ``Auto*`` class that could run code.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import typing as tp
from pathlib import Path, PurePosixPath, PureWindowsPath

TOKENIZER_DIR = "tokenizer"
# What transformers' save_pretrained writes for a T5 tokenizer (the vocabulary, its settings): the
# only names an export's tokenizer/ holds, so that replacing or removing it deletes nothing else.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "special_tokens_map.json",
                   "added_tokens.json")
# The temporary folders write_export_tokenizer makes beside tokenizer/ (mkdtemp's 8-character
# suffix): a crash between mkdtemp and the rename leaves one, which the next export or clean-up removes.
_LEFTOVER = re.compile(r"^\.%s-(new|old)-[a-z0-9_]{8}$" % TOKENIZER_DIR)


def tokenizer_files(export: tp.Union[str, os.PathLike]) -> tp.List[Path]:
    """The files of ``export/tokenizer`` an export writes (for the run folder's clean-up lists)."""
    return [Path(export) / TOKENIZER_DIR / name for name in TOKENIZER_FILES]


def foreign_tokenizer_files(export: tp.Union[str, os.PathLike]) -> tp.List[Path]:
    """What ``export/tokenizer`` holds that an export does not write (a link to it included).

    Ours are regular files of the known names only: a folder or a link named ``tokenizer.json``
    (a user's ``tokenizer/tokenizer.json/my_notes.txt``) is someone else's."""
    folder = Path(export) / TOKENIZER_DIR
    if folder.is_symlink() or folder.exists() and not folder.is_dir():
        return [folder]
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.name not in TOKENIZER_FILES or p.is_symlink() or not p.is_file())


def remove_tokenizer_leftovers(export: tp.Union[str, os.PathLike]) -> None:
    """Delete the temporary folders an interrupted ``write_export_tokenizer`` left in ``export``
    (``.tokenizer-new-*`` / ``.tokenizer-old-*``; a link of that name is removed as a link).

    Such a folder is removed only when it holds nothing but what the write puts there (regular files
    of ``TOKENIZER_FILES`` names, in ``.tokenizer-old-*`` under ``tokenizer/``): one holding
    anything else is someone's, and is left."""
    folder = Path(export)
    if folder.is_symlink() or not folder.is_dir():
        return
    for path in folder.iterdir():
        if _LEFTOVER.match(path.name):
            if path.is_symlink() or not path.is_dir():
                path.unlink()
            elif _holds_only_tokenizer_files(path, nested=True):
                shutil.rmtree(path, ignore_errors=True)


def _holds_only_tokenizer_files(folder: Path, nested: bool) -> bool:
    """Whether ``folder`` holds only regular files of ``TOKENIZER_FILES`` names (``nested``: or a
    ``tokenizer/`` folder holding only those, as ``.tokenizer-old-*`` keeps the earlier copy)."""
    for path in folder.iterdir():
        if path.is_symlink():
            return False
        if nested and path.name == TOKENIZER_DIR and path.is_dir():
            if not _holds_only_tokenizer_files(path, nested=False):
                return False
        elif path.name not in TOKENIZER_FILES or not path.is_file():
            return False
    return True


def write_export_tokenizer(tokenizer, folder: tp.Union[str, os.PathLike]) -> str:
    """Save ``tokenizer`` (a transformers tokenizer) into ``folder/tokenizer``, replacing an
    earlier copy (a re-export into the same folder); returns the relative name to record.

    Written under a temporary name and renamed, so a crash leaves either copy, never half of one.
    A link at ``folder/tokenizer`` is replaced, not written through; a file of another name in the
    folder stops the export (ValueError, one line) rather than being deleted with it."""
    folder = Path(folder)
    target = folder / TOKENIZER_DIR
    foreign = [p for p in foreign_tokenizer_files(folder) if p != target or not target.is_symlink()]
    if foreign:
        raise ValueError(f"{foreign[0]} is in the export's {TOKENIZER_DIR}/ folder, which the export replaces: "
                         f"move it away")
    remove_tokenizer_leftovers(folder)
    fresh = Path(tempfile.mkdtemp(prefix=f".{TOKENIZER_DIR}-new-", dir=folder))
    try:
        tokenizer.save_pretrained(str(fresh))
        for path in fresh.iterdir():  # anything else a transformers version adds: not needed to load it
            if path.name not in TOKENIZER_FILES:
                path.unlink()
        old = None
        if target.is_symlink():
            target.unlink()
        elif target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{TOKENIZER_DIR}-old-", dir=folder))
            os.replace(target, old / TOKENIZER_DIR)
        os.replace(fresh, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if fresh.exists():
            shutil.rmtree(fresh, ignore_errors=True)
    return TOKENIZER_DIR


def tokenizer_folder_in(export: tp.Union[str, os.PathLike], relative: str) -> Path:
    """The folder ``relative`` (from an export's ``xp.cfg``) inside the export folder ``export``.

    ValueError (one line) for an absolute path or drive, ``..``, or a folder whose real location
    (links followed) is not inside the export; the sender's string is shown shortened."""
    shown = repr(str(relative)[:80])
    refuse = (f"the model names its text tokenizer folder {shown}, which is not a folder inside the export: "
              f"refused (an export keeps its tokenizer in {TOKENIZER_DIR}/; export the model again from its source)")
    text = str(relative)
    if not text or "\x00" in text or any(p.is_absolute() or p.drive for p in (PurePosixPath(text),
                                                                                PureWindowsPath(text))):
        raise ValueError(refuse)
    parts = PureWindowsPath(text).parts  # splits on / and \ alike
    if ".." in parts:
        raise ValueError(refuse)
    root = Path(os.path.realpath(export))
    real = Path(os.path.realpath(root.joinpath(*parts)))
    if real == root or root not in real.parents:
        raise ValueError(refuse)
    if not real.is_dir():
        raise ValueError(f"the model's text tokenizer folder {shown} is missing from the export: copy the whole "
                         f"export folder (or export the model again)")
    for name in os.listdir(real):  # a vocabulary file linked to somewhere else is not the export's either
        path = real / name
        if path.is_symlink() and root not in Path(os.path.realpath(path)).parents:
            raise ValueError(refuse)
    return real
