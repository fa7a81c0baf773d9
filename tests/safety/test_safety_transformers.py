"""The safety contract for transformers-format models and the tokenizers they name: opening a
downloaded model never runs code shipped with it (a tokenizer folder or config.json with an
``auto_map`` and a Python file), even when the user would answer "y" to transformers' prompt.

Each test builds a real payload (``evil.py`` creates a marker file when imported), loads the model
in a fresh interpreter with "y" on stdin, and checks that the marker does not exist.
"""
import json
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
    """An audiocraft export whose xp.cfg names a tokenizer folder shipped beside it, with custom
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
    cfg.musicgen_trainer.tokenizer_folder = str(tok)
    package["xp.cfg"] = OmegaConf.to_yaml(cfg)
    torch.save(package, folder / LM_FILE)
    result = load_answering_yes(folder)
    assert not marker.exists(), result.stdout + result.stderr
    assert result.returncode == 0 and "refused" not in result.stdout, result.stdout + result.stderr


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
