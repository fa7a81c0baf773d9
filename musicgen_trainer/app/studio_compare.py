"""The Compare tab's backend (no Gradio): two models, one prompt, one seed, two clips side by side.

Each side is generated exactly as the Generate tab generates (``backend.run_request``: the same
allow-lists, bounds and files), with the same seed. In blind mode the order of the two models on
the page is drawn per request and the clips are copied to neutral names (``A.wav``, ``B.wav``) in
a comparison folder of their own: neither their names, their order of creation nor anything the
page receives says which model made which, until "Reveal" reads the comparison's record
(``compare.json``, kept on the server) back.

When a fine-tune's run folder holds an evaluation report (``python -m musicgen_trainer evaluate``
writes ``report.json`` + ``report.html`` into the folder it is given; any such folder inside the
run is found), its verdict is shown with the report to open.
"""
from __future__ import annotations

import dataclasses
import json
import re
import secrets
import shutil
import typing as tp
from pathlib import Path

from ..generation import GenerationConfig
from .backend import NO_ADAPTER, AppRequest, run_request
from .paths import is_regular_file, read_json_record

COMPARE_FOLDER = "compare"        # under the app's output folder
RECORD = "compare.json"
TOKEN = re.compile(r"^[0-9a-f]{16}$")
KEEP_COMPARISONS = 50             # comparison folders kept (the oldest removed first)
REPORT_DEPTH = 2                  # folders below a run searched for an evaluation report
VERDICT_CHARS = 1200
MAX_REPORT_BYTES = 4 << 20        # report.json read (ours are KBs)


@dataclasses.dataclass
class Side:
    model: str                    # the public model key
    adapter: str = NO_ADAPTER     # the public adapter key

    def label(self) -> str:
        return self.model + ("" if self.adapter in (None, "", NO_ADAPTER) else f" + {self.adapter}")


@dataclasses.dataclass
class Comparison:
    token: str                    # names the comparison for Reveal
    wavs: tp.Tuple[Path, Path]    # the clips as the page shows them: left, right
    labels: tp.Tuple[str, str]    # what the page says above them ("A", "B" when blind)
    blind: bool
    seed: int
    summary: str


def _request(app, side: Side, prompt: str, seed: int, duration: float) -> AppRequest:
    model = app.value_of(side.model)
    if model is None:
        raise ValueError(f"choose both models from the list ({side.model!r} is not in it)")
    listed = app.adapter_of(side.adapter)
    if side.adapter not in (None, "", NO_ADAPTER) and listed is None:
        raise ValueError("choose LoRA adapters from the list")
    generation = GenerationConfig(duration=float(duration), seed=int(seed))
    return AppRequest(model=model, allowed_models=list(app.by_value), prompt=prompt or "",
                      generation=generation, max_duration=app.duration_limit(model), midi=False,
                      adapter=listed.value if listed else None, allowed_adapters=app.adapters)


def compare(app, first: Side, second: Side, prompt: str, seed: int, duration: float, blind: bool,
            progress: tp.Optional[tp.Callable[[str, int, int], None]] = None) -> Comparison:
    """Generate ``prompt`` with both models and the same ``seed`` (a random one when below 0)."""
    seed = secrets.randbelow(2 ** 31) if seed is None or int(seed) < 0 else int(seed)
    sides = [first, second]
    requests = [_request(app, side, prompt, seed, duration) for side in sides]  # both checked before any work
    order = [0, 1]
    if blind and secrets.randbelow(2):
        order = [1, 0]
    token = secrets.token_hex(8)
    folder = _new_folder(Path(app.out), token)
    try:
        made = {}
        for i in (0, 1):  # generated in the page's order: creation times say nothing either
            index = order[i]
            report = (lambda stage, done, total, i=i: progress(f"clip {'AB'[i]}: {stage}", done, total)) \
                if progress else None
            result = run_request(requests[index], app.cache, Path(app.out) / COMPARE_FOLDER / "clips", report)
            target = folder / f"{'AB'[i]}.wav"
            shutil.copyfile(result.wav, target)
            shutil.rmtree(result.wav.parent, ignore_errors=True)  # the request's own result folder
            made[index] = target
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    record = {"token": token, "order": [sides[i].label() for i in order], "seed": seed,
              "prompt": requests[0].prompt, "duration": float(duration), "blind": bool(blind)}
    (folder / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    wavs = (folder / "A.wav", folder / "B.wav")
    labels = ("A", "B") if blind else tuple(record["order"])
    text = requests[0].prompt or "(no prompt)"
    summary = f"seed {seed} · prompt: {text}" + (" · blind: listen, choose, then Reveal" if blind else "")
    return Comparison(token, wavs, labels, bool(blind), seed, summary)


def reveal(app, token: str) -> str:
    """Which model made A and which made B (one line); ValueError for an unknown comparison."""
    if not isinstance(token, str) or not TOKEN.match(token):
        raise ValueError("nothing to reveal: compare first")
    path = Path(app.out) / COMPARE_FOLDER / token / RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ValueError("nothing to reveal: that comparison is gone (compare again)") from None
    a, b = record["order"]
    return f"A = {a} · B = {b}"


def _new_folder(out: Path, token: str) -> Path:
    """``OUT/compare/<token>``, the oldest comparisons beyond ``KEEP_COMPARISONS`` removed (only
    folders named like ours that hold our record)."""
    root = out / COMPARE_FOLDER
    root.mkdir(parents=True, exist_ok=True)
    ours = sorted((p for p in root.iterdir() if TOKEN.match(p.name) and (p / RECORD).is_file()),
                  key=lambda p: p.stat().st_mtime)
    for old in ours[:max(0, len(ours) - KEEP_COMPARISONS + 1)]:
        shutil.rmtree(old, ignore_errors=True)
    folder = root / token
    folder.mkdir()
    return folder


# --- the fine-tune's evaluation report ---------------------------------------------------------

def evaluation_report(app, model_key: str) -> tp.Tuple[str, tp.Optional[Path]]:
    """(the verdict of the newest evaluation report in the fine-tune's run folder, report.html);
    ``("", None)`` when the model is not a fine-tune or its run has no report."""
    choice = app.by_key.get(model_key)
    if choice is None or not choice.export or not app.checkpoints:
        return "", None
    root = Path(app.checkpoints).resolve()
    run = Path(choice.value).resolve().parent
    if run == root or root not in run.parents:
        return "", None
    reports = []
    level = [run]
    for _ in range(REPORT_DEPTH + 1):
        nxt = []
        for folder in level:
            # regular files in real folders of the run: a link would serve a file from elsewhere
            if is_regular_file(folder / "report.json") and is_regular_file(folder / "report.html"):
                reports.append(folder)
            try:
                nxt += [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")]
            except OSError:
                pass
        level = nxt
    if not reports:
        return "", None
    newest = max(reports, key=lambda p: _mtime(p / "report.json"))
    data = read_json_record(newest / "report.json", MAX_REPORT_BYTES) or {}  # bounded: no /dev/zero, no FIFO
    verdict = str(data.get("verdict") or "").strip()
    name = newest.relative_to(root).as_posix()
    text = f"Evaluation report ({name}): " + (verdict[:VERDICT_CHARS] or "no verdict recorded")
    return app.public_text(text), newest / "report.html"


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0
