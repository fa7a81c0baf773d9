"""File tagged tracks into genre folders (``tag --apply copy|move``) without ever losing one.

For each track: ``INTO/<genre>/<name>`` receives the audio and, for a prepared dataset, its
caption ``.txt`` and audiocraft ``.json`` sidecars with the genre written in; the dataset's
``manifest.jsonl`` lines are updated to the new path and genre.

Safety rules, and how they are kept:
- never overwrite: a free name is chosen for the audio *and* its sidecars (``name-1.wav`` ...),
  and the final placement uses ``os.link``, which fails instead of replacing an existing file;
- never lose a track: new sidecars are written first, the audio is placed (hard link, rename,
  or copy + size check when crossing filesystems), and only then are the originals removed;
- manifests are rewritten atomically (temporary file + rename), once at the end, and also
  when the run is interrupted, so they describe the files actually moved.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from dataset_tools.atomic import finish_temp, temp_path, write_text_atomic

from .data import MANIFEST

SIDECARS = (".txt", ".json")
# What dataset_tools prepare writes: every segment, the training / validation subsets (by the
# row's "split"), and the unlabelled tracks still waiting for a genre.
MANIFEST_FILES = (MANIFEST, "train.jsonl", "valid.jsonl")
UNLABELLED_MANIFEST = "unlabelled.jsonl"


def check_genre_folder(genre) -> str:
    """``genre`` when it is one plain folder name (no ``/``, ``..``, leading ``.`` or ``-``, no
    control characters): what a genre may be before a track is filed under ``INTO/<genre>``.

    Raises:
        ValueError: one line, for anything that could name a place outside ``INTO`` or a hidden folder.
    """
    text = genre if isinstance(genre, str) else ""
    if (not text or text != text.strip() or "/" in text or "\\" in text or text in (".", "..")
            or text[0] in ".-" or any(ord(ch) < 32 for ch in text) or len(text) > 200):
        raise ValueError(f"not a plain genre folder name: {str(genre)[:80]!r}")
    return text


def caption_with_genre(caption: str, genre: str) -> str:
    """``caption`` with the genre in front, worded as ``dataset_tools prepare`` words it for
    labelled tracks ("Hip hop music, ..."), unless it already names the genre."""
    from dataset_tools.captions import render_caption
    words = re.sub(r"\s+", " ", genre.replace("_", " ").replace("-", " ")).strip().lower()  # as prepare writes it
    text = caption.strip()
    if re.search(r"(?<![\w])" + re.escape(words.lower()) + r"(?![\w])", text.lower()):
        return text
    prefix = render_caption("{genre} music", {"genre": words})  # the first part of prepare's template
    return f"{prefix}, {text}" if text else prefix


def _write_new(path: Path, text: str) -> None:
    """Create ``path`` with ``text``; FileExistsError instead of overwriting."""
    with temp_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", errors="backslashreplace") as handle:  # non-UTF-8 names
            handle.write(text)
        finish_temp(tmp)
        _link_no_replace(tmp, path)


def _link_no_replace(src: Path, dst: Path) -> None:
    """Make ``dst`` name ``src``'s data, never replacing an existing ``dst`` (src stays)."""
    try:
        os.link(src, dst)  # atomic and refuses to overwrite
    except FileExistsError:
        raise
    except OSError:  # no hard links here (FAT/exFAT drives, some network shares)
        if os.path.lexists(dst):
            raise FileExistsError(f"{dst} already exists") from None
        shutil.copy2(src, dst)


def place_file(src: Path, dst: Path, move: bool) -> None:
    """Copy or move ``src`` to the free name ``dst``; ``src`` is removed only once ``dst`` is complete."""
    if move:
        try:
            os.link(src, dst)
            os.unlink(src)
            return
        except FileExistsError:
            raise
        except OSError:
            pass  # another filesystem, or no hard links: copy, check, then delete
    with temp_path(dst) as tmp:  # the copy keeps the source's permissions (copy2)
        shutil.copy2(src, tmp)
        if os.path.getsize(tmp) != os.path.getsize(src):
            raise OSError(f"copy of {src.name} is incomplete (disk full?)")
        _link_no_replace(tmp, dst)
    if move:
        os.unlink(src)


class Manifest:
    """One ``.jsonl`` manifest of a dataset, edited in memory and saved atomically.

    ``lines[i]`` is the raw line, or None once removed (indices stay valid while editing)."""

    def __init__(self, root: Path, name: str = MANIFEST):
        self.root, self.name, self.file = root, name, root / name
        self.lines: list[str | None] = []
        self.index: dict[str, int] = {}
        if self.file.is_file():
            self.lines = self.file.read_text(encoding="utf-8").splitlines()
            for i, line in enumerate(self.lines):
                try:
                    self.index.setdefault(str(json.loads(line)["path"]), i)
                except (ValueError, KeyError, TypeError):
                    continue  # kept verbatim, never matched
        self.changed = False

    def find(self, rel: str) -> int | None:
        return self.index.get(rel)

    def replace(self, i: int, line: str | None) -> None:
        self.lines[i] = line
        self.changed = True

    def append(self, line: str) -> None:
        self.lines.append(line)
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        write_text_atomic(self.file, "".join(line + "\n" for line in self.lines if line is not None),
                          errors="backslashreplace")  # non-UTF-8 names
        self.changed = False


@dataclass
class Filed:
    action: str          # "copied", "moved" or "already in place"
    destination: Path
    note: str = ""


class Filer:
    """Files tracks into ``into/<genre>/``; ``close()`` saves the edited manifests."""

    def __init__(self, into: Path, move: bool, source_roots: list[Path]):
        self.into, self.move = Path(into).resolve(), move
        self.source_roots = [Path(r).resolve() for r in source_roots]
        self.manifests: dict[tuple[Path, str], Manifest] = {}

    def _manifest(self, root: Path, name: str = MANIFEST) -> Manifest | None:
        """The (cached) manifest ``name`` of the dataset at ``root``, or None if it has none."""
        key = (root, name)
        if key not in self.manifests:
            self.manifests[key] = Manifest(root, name)
        return self.manifests[key] if self.manifests[key].file.is_file() else None

    def _source_root(self, src: Path) -> tuple[Path, str] | tuple[None, None]:
        """(dataset root, path relative to it) of the dataset whose manifest.jsonl lists ``src``."""
        for root in self.source_roots:
            manifest = self._manifest(root)
            if manifest is not None and root in src.parents:
                rel = src.relative_to(root).as_posix()
                if manifest.find(rel) is not None:
                    return root, rel
        return None, None

    @staticmethod
    def free_stem(folder: Path, stem: str, suffix: str, reserved: set | None = None) -> str:
        """``stem``, or ``stem-1``, ``stem-2``...: the first for which neither the audio nor a
        sidecar name exists in ``folder`` (nor is in ``reserved``, used to plan a dry run)."""
        candidate, n = stem, 0
        while any((folder / (candidate + s)).exists() or (folder / (candidate + s)) in (reserved or ())
                  for s in (suffix, *SIDECARS)):
            n += 1
            candidate = f"{stem}-{n}"
        return candidate

    def plan(self, src, genre: str, reserved: set) -> Path:
        """Where ``file(src, genre)`` would put the audio, if the earlier planned ones were filed."""
        src, folder = Path(src).resolve(), self._genre_folder(genre)
        if src.parent == folder:
            return src
        stem = self.free_stem(folder, src.stem, src.suffix, reserved)
        reserved.update(folder / (stem + s) for s in (src.suffix, *SIDECARS))
        return folder / (stem + src.suffix)

    def _genre_folder(self, genre: str) -> Path:
        """``INTO/<genre>``, refused (one line) unless ``genre`` is one plain folder name and the
        folder (a link followed) is still inside ``INTO``."""
        folder = self.into / check_genre_folder(genre)
        if Path(os.path.realpath(folder)).parent != self.into:
            raise ValueError(f"the genre folder {genre!r} is a link out of {self.into.name}")
        return folder

    def file(self, src, genre: str) -> Filed:
        src = Path(src).resolve()
        folder = self._genre_folder(genre)
        if src.parent == folder:
            return Filed("already in place", src)
        folder.mkdir(parents=True, exist_ok=True)
        stem = self.free_stem(folder, src.stem, src.suffix)
        dst = folder / (stem + src.suffix)
        notes, written = [], []
        try:
            caption_src, meta_src = src.with_suffix(".txt"), src.with_suffix(".json")
            caption = None
            if caption_src.is_file():
                caption = caption_with_genre(caption_src.read_text(encoding="utf-8", errors="replace"), genre)
                _write_new(folder / f"{stem}.txt", caption + "\n")
                written.append(folder / f"{stem}.txt")
            if meta_src.is_file():
                text = meta_src.read_text(encoding="utf-8", errors="replace")
                try:
                    meta = json.loads(text)
                    meta["genre"] = genre
                    meta["description"] = caption if caption is not None else \
                        caption_with_genre(str(meta.get("description") or ""), genre)
                    if "name" in meta and meta["name"] == src.stem:
                        meta["name"] = stem
                    text = json.dumps(meta, indent=2, ensure_ascii=False) + "\n"
                except (ValueError, TypeError, AttributeError):
                    notes.append("metadata .json is not valid JSON; copied unchanged")
                _write_new(folder / f"{stem}.json", text)
                written.append(folder / f"{stem}.json")
            place_file(src, dst, self.move)
        except BaseException:
            for path in written:  # the track stays where it was: undo the half-made copy
                path.unlink(missing_ok=True)
            raise
        if self.move:
            for sidecar in (src.with_suffix(s) for s in SIDECARS):
                sidecar.unlink(missing_ok=True)
        try:
            notes.append(self._update_manifests(src, dst, genre, has_json=(folder / f"{stem}.json") in written))
        except Exception as err:  # the track itself is safely filed; say what is left to fix
            notes.append(f"manifest.jsonl not updated ({type(err).__name__}: {err})")
        notes = [n for n in notes if n]
        return Filed("moved" if self.move else "copied", dst, "; ".join(notes))

    def _update_manifests(self, src: Path, dst: Path, genre: str, has_json: bool) -> str:
        """Point the manifests' lines at the filed copy, with its genre.

        manifest.jsonl / train.jsonl / valid.jsonl: a move rewrites the line (or moves it to
        the destination dataset's file), a copy adds a line. unlabelled.jsonl: a moved track
        leaves it (it has a genre now); a copied one stays listed there, as its original does.
        """
        root, rel = self._source_root(src)
        if root is None:
            return "not in a manifest.jsonl; run dataset_tools prepare to add it" \
                if self._manifest(self.into) is not None else ""
        new_path = dst.relative_to(self.into).as_posix()
        same_dataset = root == self.into
        for name in MANIFEST_FILES:
            source, dest = self._manifest(root, name), self._manifest(self.into, name)
            index = source.find(rel) if source is not None else None
            if index is None:
                continue
            entry = json.loads(source.lines[index])
            entry.update(path=new_path, genre=genre)
            if has_json and entry.get("info_path"):  # dataset_tools leaves it null: keep that
                entry["info_path"] = dst.with_suffix(".json").relative_to(self.into).as_posix()
            line = json.dumps(entry, ensure_ascii=False)
            if self.move and same_dataset:
                source.replace(index, line)
                continue
            if self.move:
                source.replace(index, None)
            if dest is not None:
                dest.append(line)
        unlabelled = self._manifest(root, UNLABELLED_MANIFEST)
        if self.move and unlabelled is not None and unlabelled.find(rel) is not None:
            unlabelled.replace(unlabelled.find(rel), None)
        if self._manifest(self.into) is None:
            return "destination has no manifest.jsonl; run dataset_tools prepare on it"
        return ""

    def close(self) -> None:
        for manifest in self.manifests.values():
            manifest.save()
