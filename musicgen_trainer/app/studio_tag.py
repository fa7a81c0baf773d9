"""The Tag tab's work, without Gradio: train the genre classifier on a prepared dataset, show its
evaluation, propose genres for the dataset's ``unknown/`` tracks, and file the accepted ones.

Both long steps are the project's own command lines run as background jobs (:mod:`jobs`) in the
classifier's folder, ``checkpoints/genre-<dataset folder name>`` (``classifier_name``): where
``genre_classifier train`` puts it by default and where ``model_folder.classifier_for_dataset``
(train.py's ``--eval-classifier auto``, ``evaluate``) looks for it:

- ``python -m genre_classifier train DATA --out checkpoints/genre-<dataset> --overwrite ...``;
- ``python -m genre_classifier tag DATA/unknown --model ... --report .../proposals.csv``: a dry
  run, which moves nothing and writes the proposals (CSV + JSON) into the classifier's folder.

Applying files only the tracks the user accepted, with ``genre_classifier.filing.Filer``, the
very code of ``tag --apply``: nothing is overwritten (a free name is chosen), captions and
metadata get the genre, the manifests are updated. The page names a track, never a path: the
files come from the proposals the dry run wrote.
"""
from __future__ import annotations

import dataclasses
import os
import re
import sys
import typing as tp
from pathlib import Path

from dataset_tools.atomic import write_json_atomic
from dataset_tools.dataset_format import UNKNOWN_GENRE_DIRS

from . import jobs
from .paths import OutsideRootError, confined, is_regular_file, read_json_record
from .studio_captions import dataset_folder
from .studio_data import PROJECT_ROOT, JobView, cli_flags, coerce, hide_roots, job_view, require_root

CLASSIFIER_PREFIX = "genre-"  # checkpoints/genre-<dataset>, as `genre_classifier train` names it
PROPOSALS = "proposals.csv"   # the dry run's results (and proposals.json beside it)
# The classifier TrainConfig fields the tab offers; the rest keep their defaults.
MAIN_TRAIN_OPTIONS = ("epochs", "patience", "batch_size", "val_fraction", "test_fraction", "seed", "head",
                      "augment", "calibrate")
MAX_PROPOSALS_SHOWN = 500
_EPOCH = re.compile(r"epoch\s+(\d+)/(\d+)")


def classifier_name(dataset: str) -> str:
    """``genre-<dataset folder name>`` (``a/ds`` -> ``genre-ds``): the name under checkpoints/ where
    train.py's ``--eval-classifier auto`` and ``evaluate`` look for a dataset's classifier, built from
    their own rule (``genre_classifier.model_folder.CLASSIFIER_PLACES``), so the Tag tab's classifier
    is the one they find. Two datasets with the same folder name would share it: ``classifier_folder``
    refuses the second (``_check_owner``)."""
    from genre_classifier.model_folder import CLASSIFIER_PLACES
    name = Path((dataset or "").strip().rstrip("/")).name
    template = next(place for place in CLASSIFIER_PLACES if place.startswith("checkpoints/"))
    return Path(template.format(name=name)).name


def classifier_folder(checkpoints, dataset: str, check_owner: bool = True, root=None) -> Path:
    """``checkpoints/genre-<dataset name>`` (confined to the checkpoints root); with ``check_owner``,
    ``OtherDatasetsClassifier`` (one line) when it holds the classifier of another dataset of the
    same name than ``root/dataset`` (``root``, the data root, is then required)."""
    if checkpoints is None:
        raise ValueError("the app has no checkpoints folder (--checkpoints)")
    if not (dataset or "").strip():
        raise ValueError("choose a prepared dataset")
    folder = confined(checkpoints, classifier_name(dataset))
    if check_owner:
        _check_owner(folder, confined(require_root(root), dataset))
    return folder


class OtherDatasetsClassifier(ValueError):
    """The classifier folder of a dataset holds the classifier of another one of the same name."""


def _check_owner(folder: Path, data: Path) -> None:
    """A classifier records the dataset it was trained on (``classifier.json``'s ``config.data``):
    one of another dataset with the same folder name (``a/ds`` and ``b/ds``, or ``ds`` and ``a/ds``)
    is neither replaced nor used for this one (``model_folder.other_datasets_classifier``, the check
    train.py's ``--eval-classifier auto`` makes too). A record without it, or a relative one (typed
    in some other working folder), says nothing."""
    from genre_classifier.model_folder import other_datasets_classifier
    if other_datasets_classifier(folder, data) is not None:
        raise OtherDatasetsClassifier(f"{folder.name} holds the classifier of another dataset folder named "
                                      f"{data.name!r}: a dataset's classifier is found by its folder name "
                                      f"(train.py --eval-classifier auto), so rename one of the two dataset folders")


def _check_classifier_out(out: Path) -> None:
    """Refuse to train into a folder that holds a fine-tuning run or an export: ``train --overwrite``
    would replace its report and job record."""
    # run.json: a fine-tuning run (train.py); export_info.json / state_dict.bin: an export
    # (musicgen_trainer.exports: not imported here, it loads torch).
    if any(os.path.lexists(out / name) for name in ("run.json", "export_info.json", "state_dict.bin")):
        raise ValueError(f"{out.name} holds a training run or an export, not a genre classifier: "
                         f"rename it before training the classifier")


def unknown_folder(data: Path) -> Path:
    """The dataset's folder of unlabelled tracks (``unknown/`` or ``unknow/``)."""
    for name in UNKNOWN_GENRE_DIRS:
        folder = data / name
        if folder.is_dir() and not folder.is_symlink():
            return folder
    raise ValueError("this dataset has no unknown/ folder: there is nothing to tag")


def classifier_options(values: tp.Mapping[str, tp.Any]) -> tp.Dict[str, tp.Any]:
    """The page's classifier options, checked against ``TrainConfig``'s fields and rules."""
    from genre_classifier.model import HEADS
    unknown = set(values) - set(MAIN_TRAIN_OPTIONS)
    if unknown:
        raise ValueError(f"not an option of the page: {', '.join(sorted(unknown))}")
    from genre_classifier.training import TrainConfig
    clean = {name: coerce(TrainConfig, name, value) for name, value in values.items()}
    # TrainConfig checks these in __post_init__ (which also wants DATA to exist): the same rules here.
    if not 1 <= clean.get("epochs", 1) <= 1000 or clean.get("batch_size", 1) < 1 or clean.get("patience", 0) < 0:
        raise ValueError("epochs must be 1-1000, batch size >= 1 and patience >= 0")
    val, test = clean.get("val_fraction", 0.15), clean.get("test_fraction", 0.15)
    if not (0 < val < 1 and 0 < test < 1 and val + test <= 0.8):
        raise ValueError("the validation and test fractions must each be between 0 and 1 and leave at least "
                         "20 % of the tracks for training")
    if clean.get("head", HEADS[0]) not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}")
    return clean


def start_classifier(root, checkpoints, dataset: str, values: tp.Mapping[str, tp.Any]) -> jobs.JobInfo:
    """Train the classifier of ``dataset`` as a job in its folder (a model already there is replaced)."""
    from genre_classifier.training import TrainConfig
    data = dataset_folder(root, dataset)
    out = classifier_folder(checkpoints, dataset, root=root)
    _check_classifier_out(out)
    flags = cli_flags(TrainConfig, classifier_options(values))
    argv = [sys.executable, "-m", "genre_classifier", "train", str(data), "--out", str(out), "--overwrite", *flags]
    return jobs.start_job("classifier", argv, out, cwd=str(PROJECT_ROOT))


def start_proposals(root, checkpoints, dataset: str, min_confidence: float) -> jobs.JobInfo:
    """Propose genres for ``unknown/`` (a ``tag`` dry run: nothing moves) as a job."""
    from genre_classifier.model_folder import read_info
    data = dataset_folder(root, dataset)
    model = classifier_folder(checkpoints, dataset, root=root)
    read_info(model)  # ModelFolderError (one line) when there is no trained classifier yet
    if not 0.0 <= float(min_confidence) <= 1.0:
        raise ValueError("the minimum confidence must be between 0 and 1")
    argv = [sys.executable, "-m", "genre_classifier", "tag", str(unknown_folder(data)), "--model", str(model),
            "--into", str(data), "--min-confidence", f"{float(min_confidence):g}", "--report", str(model / PROPOSALS)]
    return jobs.start_job("tag", argv, model, cwd=str(PROJECT_ROOT))


def classifier_view(root, checkpoints, dataset: str) -> JobView:
    """The classifier folder's job (training or proposing), its progress from the bar or epoch lines."""
    if not (dataset or "").strip():
        return JobView("none")
    dataset_folder(root, dataset)
    try:
        folder = classifier_folder(checkpoints, dataset, root=root)
    except OtherDatasetsClassifier:  # not this dataset's job: Train and Propose say why
        return JobView("none")
    view = job_view(folder, require_root(root), checkpoints)
    epochs = _EPOCH.findall(view.log)
    if view.kind == "classifier" and epochs:
        view.done, view.total, view.what = int(epochs[-1][0]), int(epochs[-1][1]), "epochs"
    return view


def running_classifier(root, checkpoints) -> tp.Optional[str]:
    """The prepared dataset whose classifier job (training or proposing) runs now, if any: what a
    reloaded page attaches to."""
    from .studio_data import dataset_choices
    try:
        names = dataset_choices(root)
    except ValueError:
        return None
    for name in names:
        info = jobs.job_status(classifier_folder(checkpoints, name, check_owner=False)) if checkpoints else None
        if info is not None and info.running:
            return name
    return None


def classifier_report(root, checkpoints, dataset: str) -> tp.Tuple[str, tp.Optional[Path]]:
    """``(markdown, confusion-matrix PNG)`` of the dataset's trained classifier (its test split)."""
    from genre_classifier.model_folder import REPORT_DIR, read_info
    dataset_folder(root, dataset)
    folder = classifier_folder(checkpoints, dataset, root=root)
    info = read_info(folder)
    metrics = (info.get("metrics") or {}).get("test") or {}
    training = info.get("training") or {}
    lines = [f"**{classifier_name(dataset)}**: genres {', '.join(info['labels'])}.",
             f"Test split (tracks never seen in training): track accuracy "
             f"{100 * metrics.get('track_accuracy', 0.0):.0f} %, macro-F1 {metrics.get('macro_f1', 0.0):.2f} "
             f"on {metrics.get('tracks', 0)} tracks; {training.get('epochs_run', '?')} epochs "
             f"(best {training.get('best_epoch', '?')})."]
    png = folder / REPORT_DIR / "confusion_matrix.png"
    text = hide_roots("\n\n".join(lines), require_root(root), checkpoints)
    return text, png if is_regular_file(png) else None  # never a link out of the folder


@dataclasses.dataclass
class Proposal:
    """One unknown track: its predicted genre, how sure the classifier is, its files."""
    track: str
    genre: str              # the predicted genre (what accepting files it under)
    confidence: float
    above_threshold: bool   # the dry run's own decision (``tagged``)
    top3: str
    files: tp.List[str]     # relative to the unknown folder
    action: str = ""        # "", or what applying did ("moved", "copied", "failed", ...)

    def label(self) -> str:
        return f"{self.track} -> {self.genre} ({self.confidence:.2f})"


def _proposals_file(root, checkpoints, dataset: str) -> Path:
    return classifier_folder(checkpoints, dataset, root=root) / Path(PROPOSALS).with_suffix(".json").name


def load_proposals(root, checkpoints, dataset: str) -> tp.List[Proposal]:
    """The last dry run's proposals for the dataset, one per track (tracks it skipped left out)."""
    dataset_folder(root, dataset)  # a dataset under the data root, or one line
    try:
        path = _proposals_file(root, checkpoints, dataset)
    except OtherDatasetsClassifier:  # another dataset's proposals
        return []
    data = read_json_record(path)  # bounded; never a link, FIFO or device
    if data is None:
        return []
    labels = _classifier_labels(root, checkpoints, dataset)
    by_track: tp.Dict[str, Proposal] = {}
    for row in (data.get("rows") or [])[:10_000]:
        if not isinstance(row, dict) or row.get("status") not in ("tagged", "unknown") or not row.get("predicted"):
            continue
        if row["predicted"] not in labels:  # a crafted genre ("../../x") would name a folder outside
            continue
        proposal = by_track.setdefault(str(row["track"]), Proposal(
            str(row["track"]), str(row["predicted"]), float(row.get("confidence") or 0.0),
            row.get("status") == "tagged", str(row.get("top3", "")), [], str(row.get("applied", ""))))
        proposal.files.append(str(row["file"]))
    return sorted(by_track.values(), key=lambda p: (-p.confidence, p.track))[:MAX_PROPOSALS_SHOWN]


def _classifier_labels(root, checkpoints, dataset: str) -> tp.Set[str]:
    """The genres the dataset's classifier knows (its ``classifier.json`` labels), each one plain
    folder name; empty when there is none (or a label is not such a name): then nothing can be filed."""
    from genre_classifier.filing import check_genre_folder
    from genre_classifier.model_folder import INFO_FILE
    info = read_json_record(classifier_folder(checkpoints, dataset, root=root) / INFO_FILE) or {}
    labels = info.get("labels") if isinstance(info.get("labels"), list) else []
    try:  # one crafted label and the record is not the classifier's (read_info refuses it too)
        return {check_genre_folder(label) for label in labels}
    except ValueError:
        return set()


def proposal_audio(root, checkpoints, dataset: str, track: str) -> tp.Tuple[int, tp.Any]:
    """``(rate, samples)`` of the first file of a proposed track (for the player)."""
    import soundfile as sf
    proposal = _find(load_proposals(root, checkpoints, dataset), track)
    unknown = unknown_folder(dataset_folder(root, dataset))
    for rel in proposal.files:
        try:
            path = confined(unknown, rel, must_exist=True)
        except OutsideRootError:
            continue
        if not is_regular_file(path):  # a FIFO would block the reader, a device never end
            continue
        samples, rate = sf.read(str(path), dtype="int16", frames=int(60 * 48000))
        return rate, samples
    raise ValueError(f"the files of {track!r} are no longer in unknown/")


def _find(proposals: tp.Sequence[Proposal], track: str) -> Proposal:
    for proposal in proposals:
        if proposal.track == track:
            return proposal
    raise ValueError(f"{track!r} is not one of the proposed tracks")


def apply_proposals(root, checkpoints, dataset: str, accepted: tp.Sequence[str], mode: str = "move") -> str:
    """File the accepted tracks (their names, from the proposals) into the dataset's genre folders
    with ``Filer``, as ``tag --apply`` does; returns a one-line summary. Rejected tracks stay."""
    from genre_classifier.filing import Filer
    from genre_classifier.tagging import APPLY_MODES
    if mode not in APPLY_MODES:
        raise ValueError(f"apply must be one of {', '.join(APPLY_MODES)}")
    data = dataset_folder(root, dataset)
    folder = classifier_folder(checkpoints, dataset, root=root)
    for busy in (jobs.job_status(data), jobs.job_status(folder)):
        if busy is not None and busy.running:
            raise ValueError(f"{busy.kind} is running: wait until it has finished")
    if (data / ".prepare.lock").exists():
        raise ValueError("prepare is running on this dataset: wait until it has finished")
    unknown = unknown_folder(data)
    proposals = load_proposals(root, checkpoints, dataset)
    chosen = [_find(proposals, track) for track in dict.fromkeys(accepted or [])]
    if not chosen:
        raise ValueError("accept at least one proposal first")
    filed = failed = 0
    results: tp.Dict[str, str] = {}
    filer = Filer(data, move=mode == "move", source_roots=[unknown, data])
    try:
        for proposal in chosen:
            for rel in proposal.files:
                try:
                    src = confined(unknown, rel, must_exist=True)
                    done = filer.file(src, proposal.genre)
                    results[rel] = done.action
                    filed += 1
                except OutsideRootError:
                    results[rel] = "gone"
                    failed += 1
                except Exception as err:  # one file that cannot be filed never stops the others
                    results[rel] = f"failed: {type(err).__name__}"
                    failed += 1
    finally:
        filer.close()
        _record_applied(root, checkpoints, dataset, results)
    verb = "moved" if mode == "move" else "copied"
    return f"{len(chosen)} track(s) accepted: {filed} file(s) {verb} into their genre folders" + \
        (f", {failed} could not be filed" if failed else "")


def _record_applied(root, checkpoints, dataset: str, results: tp.Dict[str, str]) -> None:
    """Note in proposals.json what applying did to each file (filed tracks are not offered again)."""
    path = _proposals_file(root, checkpoints, dataset)
    data = read_json_record(path)
    if data is None:
        return
    for row in data.get("rows") or []:
        if isinstance(row, dict) and row.get("file") in results:
            row["applied"] = results[row["file"]]
    write_json_atomic(path, data)


def pending(proposals: tp.Sequence[Proposal]) -> tp.List[Proposal]:
    """The proposals not applied yet (what the page offers)."""
    return [p for p in proposals if not p.action or p.action.startswith("failed")]
