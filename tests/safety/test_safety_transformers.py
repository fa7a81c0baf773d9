"""The safety contract for transformers-format models and the tokenizers they name: opening a
downloaded model never runs code shipped with it (a tokenizer folder or config.json with an
``auto_map`` and a Python file), even when the user would answer "y" to transformers' prompt.

Each test builds a real payload (``evil.py`` creates a marker file when imported), loads the model
in a fresh interpreter with "y" on stdin, and checks that the marker does not exist.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def plant_custom_code(folder: Path, marker: Path) -> None:
    """Make ``folder`` ask transformers' Auto* classes to import its ``evil.py``."""
    code = (f"open({str(marker)!r}, 'w').write('code ran')\n"
            "from transformers import PretrainedConfig\n"
            "class EvilConfig(PretrainedConfig):\n    model_type = 'evilmodel'\n"
            "class EvilTok:\n    pass\n")
    (folder / "evil.py").write_text(code)
    config = folder / "config.json"
    data = json.loads(config.read_text()) if config.exists() else {"model_type": "evilmodel"}
    data["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoTokenizer": ["evil.EvilTok", None]}
    config.write_text(json.dumps(data))
    tok = folder / "tokenizer_config.json"
    data = json.loads(tok.read_text()) if tok.exists() else {}
    data.pop("tokenizer_class", None)
    data["auto_map"] = {"AutoTokenizer": ["evil.EvilTok", None]}
    tok.write_text(json.dumps(data))


def load_answering_yes(folder: Path) -> subprocess.CompletedProcess:
    """``load_model(folder)`` in a fresh interpreter whose stdin answers "y" to any prompt."""
    script = ("import sys\nfrom musicgen_trainer.models import load_model\n"
              "try:\n    load_model(sys.argv[1], device='cpu')\n"
              "except Exception as exc:\n    print('refused:', exc)\n")
    return subprocess.run([sys.executable, "-c", script, str(folder)], input="y\ny\ny\n", capture_output=True,
                          text=True, cwd=ROOT, timeout=300,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def spiece_folder(tmp_path_factory):
    """A folder holding a real (tiny) sentencepiece T5 vocabulary."""
    import sentencepiece as spm
    from transformers import T5Tokenizer
    root = tmp_path_factory.mktemp("spm")
    (root / "text.txt").write_text("\n".join(["rock song with loud guitars", "jazz tune on a piano",
                                              "calm ambient pads", "fast drums and bass"] * 20))
    spm.SentencePieceTrainer.train(input=str(root / "text.txt"), model_prefix=str(root / "spiece"), vocab_size=30,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    folder = root / "tok"
    T5Tokenizer(vocab_file=str(root / "spiece.model"), extra_ids=10).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sentencepiece_hf(spiece_folder, tmp_path_factory):
    """A transformers export of a tiny model with a sentencepiece T5 tokenizer (the released kind)."""
    from musicgen_trainer.models import load_model
    from musicgen_trainer.sharing.transformers_format import export_transformers
    from transformers import T5Tokenizer
    model = load_model("tiny", device="cpu")
    model.lm.condition_provider.conditioners["description"].t5_tokenizer = T5Tokenizer.from_pretrained(spiece_folder)
    return export_transformers(model, tmp_path_factory.mktemp("sp") / "hf")


def copy_folder(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_export_naming_a_tokenizer_folder_with_code_runs_nothing(tiny_model, spiece_folder, tmp_path):
    """An audiocraft export whose xp.cfg names a tokenizer folder shipped inside it, with custom
    tokenizer code (the reviewer's exp1): the code never runs; the vocabulary is read as data."""
    from omegaconf import OmegaConf

    from musicgen_trainer.exports import LM_FILE, export_model
    folder = export_model(tiny_model, tmp_path / "checkpoints" / "downloaded")
    tok = folder / "tok"
    tok.mkdir()
    for f in spiece_folder.iterdir():
        (tok / f.name).write_bytes(f.read_bytes())
    marker = tmp_path / "CODE_RAN"
    plant_custom_code(tok, marker)
    package = torch.load(folder / LM_FILE, map_location="cpu", weights_only=True)
    cfg = OmegaConf.create(package["xp.cfg"])
    cfg.musicgen_trainer.tokenizer = "t5-base"
    cfg.musicgen_trainer.tokenizer_folder = "tok"  # relative: inside the export
    package["xp.cfg"] = OmegaConf.to_yaml(cfg)
    torch.save(package, folder / LM_FILE)
    result = load_answering_yes(folder)
    assert not marker.exists(), result.stdout + result.stderr
    assert result.returncode == 0 and "refused" not in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("trap", ["absolute", "dotdot", "link-out", "file-link-out"])
def test_export_naming_a_tokenizer_folder_outside_it_is_refused(tiny_model, spiece_folder, tmp_path, trap):
    """A downloaded export's xp.cfg that names a tokenizer folder outside the export (an absolute
    path such as /etc, ``../x``, a link inside that leads out, a vocabulary file linked to a file
    outside): refused in one line, nothing read from there."""
    import os

    from omegaconf import OmegaConf

    from musicgen_trainer.exports import LM_FILE, export_model
    from musicgen_trainer.models import ModelUnavailableError, load_model
    outside = tmp_path / "outside"
    shutil.copytree(spiece_folder, outside)  # a loadable vocabulary: only the confinement refuses it
    folder = export_model(tiny_model, tmp_path / "downloaded")
    name = {"absolute": str(outside), "dotdot": "../outside", "link-out": "tok", "file-link-out": "tok"}[trap]
    if trap == "link-out":
        os.symlink(outside, folder / "tok")
    elif trap == "file-link-out":
        (folder / "tok").mkdir()
        for f in outside.iterdir():
            os.symlink(f, folder / "tok" / f.name)
    package = torch.load(folder / LM_FILE, map_location="cpu", weights_only=True)
    cfg = OmegaConf.create(package["xp.cfg"])
    cfg.musicgen_trainer.tokenizer = "t5-base"
    cfg.musicgen_trainer.tokenizer_folder = name
    package["xp.cfg"] = OmegaConf.to_yaml(cfg)
    torch.save(package, folder / LM_FILE)
    with pytest.raises(ModelUnavailableError, match="not a folder inside the export") as err:
        load_model(str(folder), device="cpu")
    assert "\n" not in str(err.value)


def test_etc_as_tokenizer_folder_is_refused(tmp_path):
    """The check itself, on the names a booby-trapped xp.cfg could hold."""
    from musicgen_trainer.export_tokenizer import tokenizer_folder_in
    (tmp_path / "export" / "tokenizer").mkdir(parents=True)
    assert tokenizer_folder_in(tmp_path / "export", "tokenizer") == (tmp_path / "export" / "tokenizer").resolve()
    for name in ("/etc", "../x", "tokenizer/../../x", "C:\\Windows", "..\\x", ".", ""):
        with pytest.raises(ValueError, match="refused"):
            tokenizer_folder_in(tmp_path / "export", name)


def test_unknown_tokenizer_name_is_refused_in_one_line(tiny_model, tmp_path):
    """The tokenizer name is the sender's too: only byt5 and the T5 names are accepted."""
    from omegaconf import OmegaConf

    from musicgen_trainer.exports import LM_FILE, export_model
    from musicgen_trainer.models import ModelUnavailableError, load_model
    folder = export_model(tiny_model, tmp_path / "downloaded")
    package = torch.load(folder / LM_FILE, map_location="cpu", weights_only=True)
    cfg = OmegaConf.create(package["xp.cfg"])
    cfg.musicgen_trainer.tokenizer = "someone/evil-tokenizer"
    package["xp.cfg"] = OmegaConf.to_yaml(cfg)
    torch.save(package, folder / LM_FILE)
    with pytest.raises(ModelUnavailableError, match="unknown text tokenizer") as err:
        load_model(str(folder), device="cpu")
    assert "\n" not in str(err.value)


def test_transformers_folder_with_code_runs_nothing(sentencepiece_hf, tmp_path):
    """A transformers MusicGen folder whose config.json and tokenizer_config.json carry an auto_map
    to its own evil.py: loading it runs nothing."""
    folder = copy_folder(sentencepiece_hf, tmp_path / "hf")
    marker = tmp_path / "CODE_RAN"
    plant_custom_code(folder, marker)
    result = load_answering_yes(folder)
    assert not marker.exists(), result.stdout + result.stderr
    assert result.returncode == 0 and "refused" not in result.stdout, result.stdout + result.stderr


def test_tokenizer_folder_without_vocabulary_is_refused(sentencepiece_hf, tmp_path):
    """P2: a T5 tokenizer_config without spiece.model / tokenizer.json would load as a tokenizer of
    special tokens only (every caption all-unknown): refused in one line instead."""
    from musicgen_trainer.models import ModelUnavailableError, load_model
    folder = copy_folder(sentencepiece_hf, tmp_path / "hf")
    for name in ("spiece.model", "tokenizer.json"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(ModelUnavailableError, match="vocabulary") as err:
        load_model(str(folder), device="cpu")
    assert "\n" not in str(err.value)


# --- config.json sizes, listing, and what --overwrite may delete -------------------------------

@pytest.fixture(scope="module")
def tiny_hf(tiny_model, tmp_path_factory):
    """The tiny model's transformers export (byte-level tokenizer)."""
    from musicgen_trainer.sharing.transformers_format import export_transformers
    return export_transformers(tiny_model, tmp_path_factory.mktemp("tiny_hf") / "hf")


def edit_config(folder: Path, section: str, field: str, value) -> None:
    config = json.loads((folder / "config.json").read_text())
    config[section][field] = value
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("section, field, value, message", [
    ("text_encoder", "vocab_size", 10 ** 12, "text_encoder.shared.weight has shape"),  # 2e15 bytes if built
    ("decoder", "num_hidden_layers", 40, "num_hidden_layers = 40, the weights have 2"),
    ("audio_encoder", "num_filters", 64, "has shape"),
    ("audio_encoder", "upsampling_ratios", [8, 0, 4, 4], "cannot build"),  # was a ZeroDivisionError
    ("decoder", "num_codebooks", None, "cannot read its config.json"),  # was a strict-dataclass error
])
def test_config_sizes_must_match_the_weights_before_anything_is_built(tiny_hf, tmp_path, section, field, value,
                                                                       message):
    """config.json is the sender's: its sizes decide what is allocated, so they are checked against
    the tensors' shapes first (one line), never trusted to build a model 10^12 tokens wide."""
    from musicgen_trainer.models import ModelUnavailableError, load_model
    folder = copy_folder(tiny_hf, tmp_path / "hf")
    edit_config(folder, section, field, value)
    with pytest.raises(ModelUnavailableError, match=message) as err:
        load_model(str(folder), device="cpu")
    assert "\n" not in str(err.value)


def test_weights_missing_a_tensor_are_refused_in_one_line(tiny_hf, tmp_path):
    from safetensors.torch import load_file, save_file

    from musicgen_trainer.models import ModelUnavailableError, load_model
    folder = copy_folder(tiny_hf, tmp_path / "hf")
    state = load_file(str(folder / "model.safetensors"))
    del state["text_encoder.shared.weight"]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelUnavailableError, match="lack text_encoder.shared.weight") as err:
        load_model(str(folder), device="cpu")
    assert "\n" not in str(err.value)


def test_listing_reads_only_small_regular_config_files(tmp_path):
    """The app lists every folder under checkpoints/ at start-up: a huge config.json, one linked
    to /dev/zero or a FIFO is skipped, never read to the end (memory) or waited on (hang)."""
    import os

    from musicgen_trainer.sharing.transformers_import import is_transformers_folder
    big = tmp_path / "big"
    big.mkdir()
    (big / "config.json").write_text(json.dumps({"model_type": "musicgen", "pad": "x" * (2 << 20)}))
    assert not is_transformers_folder(big)
    small = tmp_path / "small"
    small.mkdir()
    (small / "config.json").write_text(json.dumps({"model_type": "musicgen"}))
    assert is_transformers_folder(small)
    zero = tmp_path / "zero"
    zero.mkdir()
    (zero / "config.json").symlink_to("/dev/zero")
    assert not is_transformers_folder(zero)
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "config.json")
    assert not is_transformers_folder(fifo)


def rewrite_record(folder: Path, files) -> None:
    from musicgen_trainer.sharing.transformers_format import RECORD_FILE
    record = json.loads((folder / RECORD_FILE).read_text())
    record["files"] = files
    (folder / RECORD_FILE).write_text(json.dumps(record))


def test_a_foreign_record_cannot_choose_what_overwrite_deletes(tiny_model, tiny_hf, tmp_path):
    """A cloned repo carries the sender's record: naming .git/config or notes/ in it must not make
    ``--overwrite`` delete them (the reviewer's exp4); a record whose files is a string is refused."""
    from musicgen_trainer.sharing.transformers_format import export_transformers
    clone = copy_folder(tiny_hf, tmp_path / "clone")
    (clone / ".git").mkdir()
    (clone / ".git" / "config").write_text("[core]")
    (clone / "notes").mkdir()
    (clone / "notes" / "mine.txt").write_text("mine")
    rewrite_record(clone, ["config.json", ".git/config", "notes/mine.txt"])
    with pytest.raises(ValueError, match="never writes") as err:
        export_transformers(tiny_model, clone, overwrite=True)
    assert "\n" not in str(err.value)
    assert (clone / ".git" / "config").read_text() == "[core]" and (clone / "notes" / "mine.txt").exists()
    rewrite_record(clone, "README.md")
    (clone / "README.md").write_text("their card")
    with pytest.raises(ValueError, match="list of file names"):
        export_transformers(tiny_model, clone, overwrite=True)
    assert (clone / "README.md").read_text() == "their card" and (clone / "config.json").exists()


def test_overwrite_never_replaces_a_file_the_old_export_did_not_write(tiny_model, tiny_hf, tmp_path):
    """A new export writing a name the old record did not list (e.g. spiece.model when the
    tokenizer kind changes) stops in one line instead of replacing the user's file."""
    from musicgen_trainer.sharing.transformers_format import RECORD_FILE, export_transformers
    out = copy_folder(tiny_hf, tmp_path / "hf")
    files = json.loads((out / RECORD_FILE).read_text())["files"]
    rewrite_record(out, [f for f in files if f != "generation_config.json"])
    (out / "generation_config.json").write_text("mine")
    with pytest.raises(ValueError, match="did not write") as err:
        export_transformers(tiny_model, out, overwrite=True)
    assert "\n" not in str(err.value)
    assert (out / "generation_config.json").read_text() == "mine" and (out / "model.safetensors").exists()


def test_a_crash_during_overwrite_leaves_a_folder_the_next_overwrite_repairs(tiny_model, tiny_hf, tmp_path,
                                                                            monkeypatch):
    """Killed while moving the new files in: the folder still has a record listing every file of
    ours, so the next ``--overwrite`` recognises it and finishes (it used to be refused as foreign)."""
    import os

    from musicgen_trainer.sharing import transformers_format
    from musicgen_trainer.sharing.transformers_format import RECORD_FILE, export_transformers
    out = copy_folder(tiny_hf, tmp_path / "hf")
    (out / "notes.txt").write_text("mine")
    real = os.replace

    def crash(src, dst):
        if Path(dst) == out / "model.safetensors":
            raise OSError("simulated crash")
        return real(src, dst)
    monkeypatch.setattr(transformers_format.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        export_transformers(tiny_model, out, overwrite=True, dtype="fp16")
    monkeypatch.setattr(transformers_format.os, "replace", real)
    export_transformers(tiny_model, out, overwrite=True, dtype="fp16")
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["dtype"] == "fp16" and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir() if p.name != "notes.txt") == sorted(record["files"])


# --- what else a downloaded folder could steer --------------------------------------------------

class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        import os
        return os.system, (f"touch '{self.marker}'",)


def test_pickled_weights_are_never_opened(tiny_hf, tmp_path):
    """A real pickle payload as ``pytorch_model.bin``: alone it is refused in one line, beside a
    valid ``model.safetensors`` it is ignored; its code never runs either way."""
    from musicgen_trainer.models import ModelUnavailableError, load_model
    marker = tmp_path / "PAYLOAD_RAN"
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "config.json").write_text((tiny_hf / "config.json").read_text())
    torch.save({"weight": Payload(marker)}, alone / "pytorch_model.bin")
    with pytest.raises(ModelUnavailableError, match="pytorch_model.bin") as err:
        load_model(str(alone), device="cpu")
    assert "\n" not in str(err.value) and not marker.exists()
    beside = copy_folder(tiny_hf, tmp_path / "beside")
    torch.save({"weight": Payload(marker)}, beside / "pytorch_model.bin")
    load_model(str(beside), device="cpu")
    assert not marker.exists()


def test_a_stray_safetensors_file_does_not_override_the_weights(tiny_model, tiny_hf, tmp_path):
    """Only model.safetensors (or the shards its index maps) is read, as transformers does: a stray
    ``zz.safetensors`` beside it cannot replace the model's tensors."""
    from safetensors.torch import save_file

    from musicgen_trainer.models import load_model
    folder = copy_folder(tiny_hf, tmp_path / "hf")
    t5 = tiny_model.lm.condition_provider.conditioners["description"].t5
    shared = t5.shared.weight
    save_file({"text_encoder.shared.weight": torch.zeros_like(shared)}, str(folder / "zz.safetensors"))
    back = load_model(str(folder), device="cpu")
    loaded = back.lm.condition_provider.conditioners["description"].t5.shared.weight
    assert torch.equal(loaded, shared)


def test_the_record_cannot_choose_the_separator_or_an_absurd_window():
    """Our record travels with a pushed export: its tiny separator config is used only when it is
    the one tiny builds, and its window only within MusicGen's 30 s."""
    from musicgen_trainer.sharing.transformers_import import _record_window, _trusted_tiny_facts
    from musicgen_trainer.tiny import TINY_DEMUCS
    ours = {"tiny": {"demucs_config": dict(TINY_DEMUCS), "seed": 3}}
    assert _trusted_tiny_facts(ours) == ours["tiny"]
    assert _trusted_tiny_facts({"tiny": {"demucs_config": dict(TINY_DEMUCS, depth=1000), "seed": 3}}) == {}
    assert _trusted_tiny_facts({"tiny": {"demucs_config": dict(TINY_DEMUCS), "seed": "x"}}) == {}
    assert _record_window({"max_duration": 8.0}) == 8.0
    assert _record_window({"max_duration": 1e9}) == 30.0 and _record_window({"max_duration": "nan"}) == 30.0


def test_the_record_names_a_local_source_folder_without_its_path(tiny_hf, tmp_path):
    """The record is pushed with the export: a model loaded from a local folder is recorded by the
    folder's name, not its absolute (home) path."""
    from musicgen_trainer.models import load_model
    from musicgen_trainer.sharing.transformers_format import RECORD_FILE, export_transformers
    model = load_model(str(tiny_hf), device="cpu")
    out = export_transformers(model, tmp_path / "again")
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["source"] == tiny_hf.name and str(tmp_path.parent) not in json.dumps(record)
