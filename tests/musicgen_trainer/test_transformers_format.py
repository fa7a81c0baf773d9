"""transformers' MusicGen format, both ways (musicgen_trainer/sharing/): the same logits and the
same greedy codes from audiocraft's model and transformers' one, the round trip keeps the LM
bit-identical, and what cannot be read or written is refused in one line."""
import json
import os
import shutil

import pytest
import torch

from musicgen_trainer.models import ModelUnavailableError, load_model
from musicgen_trainer.sharing.transformers_format import RECORD_FILE, export_transformers

CAPTIONS = ["rock song", "jazz tune"]  # equal byte lengths: no padding (audiocraft attends to padding)
TOLERANCE = 1e-4
NAMES = ["tiny", "tiny-stereo", "tiny-melody"]


def _hf_class(name):
    from transformers import MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration
    return MusicgenMelodyForConditionalGeneration if "melody" in name else MusicgenForConditionalGeneration


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (audiocraft model, its transformers export folder); built once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            model = load_model(name, device="cpu")
            out = tmp_path_factory.mktemp("hf") / name
            export_transformers(model, out)
            cache[name] = (model, out)
        return cache[name]
    return get


def _codes(model, frames=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.lm.card, (len(CAPTIONS), model.lm.n_q, frames), generator=gen)


def _audiocraft_logits(model, codes):
    """LM logits ``[B, K, S, card]`` on the delay-pattern sequence of ``codes`` (``[B, K, T]``),
    and that sequence ``[B, K, S]``."""
    lm = model.lm
    attributes, _ = model._prepare_tokens_and_attributes(CAPTIONS, None)
    pattern = lm.pattern_provider.get_pattern(codes.shape[-1])
    sequence, _, _ = pattern.build_pattern_sequence(codes, lm.special_token_id)
    with torch.no_grad():
        tensors = lm.condition_provider(lm.condition_provider.tokenize(attributes))
        return lm(sequence, [], tensors), sequence


def _transformers_logits(hf, folder, sequence, melody, chroma=None):
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(folder)
    inputs = processor(text=CAPTIONS, padding=True, return_tensors="pt")
    batch, k, steps = sequence.shape
    kwargs = {}
    if melody and chroma is not None:
        kwargs["input_features"] = chroma
    elif melody:  # no melody given: audiocraft's null chroma is a one-hot on pitch class 0 in every frame
        features = torch.zeros(batch, hf.config.chroma_length, hf.config.num_chroma)
        features[:, :, 0] = 1
        kwargs["input_features"] = features
    with torch.no_grad():
        out = hf(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask,
                 decoder_input_ids=sequence.reshape(batch * k, steps), **kwargs)
    return out.logits.reshape(batch, k, -1, out.logits.shape[-1])[:, :, -steps:]


@pytest.mark.parametrize("name", NAMES)
def test_logits_equal_audiocraft_to_transformers(exported, name):
    model, folder = exported(name)
    hf = _hf_class(name).from_pretrained(folder).eval()
    ours, sequence = _audiocraft_logits(model, _codes(model))
    theirs = _transformers_logits(hf, folder, sequence, "melody" in name)
    assert theirs.shape == ours.shape and ours.std().item() > 0.1  # logits that say something
    assert (theirs - ours).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("name", NAMES)
def test_logits_equal_transformers_to_audiocraft(exported, name):
    """The reverse: audiocraft's model converted from the transformers folder scores as transformers does."""
    _, folder = exported(name)
    hf = _hf_class(name).from_pretrained(folder).eval()
    converted = load_model(str(folder), device="cpu")
    assert int(converted.audio_channels) == (2 if "stereo" in name else 1)
    ours, sequence = _audiocraft_logits(converted, _codes(converted, seed=1))
    theirs = _transformers_logits(hf, folder, sequence, "melody" in name)
    assert (theirs - ours).abs().max().item() < TOLERANCE


def test_melody_logits_equal_with_a_real_melody(exported, monkeypatch):
    """The null melody is a one-hot on pitch class 0, which exercises one column of the chroma
    projection only: feed the same random chroma ``[B, chroma_len, 12]`` to audiocraft's
    conditioner and to transformers (both directions) and compare the logits."""
    model, folder = exported("tiny-melody")
    hf = _hf_class("tiny-melody").from_pretrained(folder).eval()
    converted = load_model(str(folder), device="cpu")
    chroma = torch.rand(len(CAPTIONS), hf.config.chroma_length, hf.config.num_chroma,
                        generator=torch.Generator().manual_seed(0))
    chroma = chroma / chroma.sum(-1, keepdim=True)
    for ours_model in (model, converted):
        codes = _codes(ours_model)
        null, _ = _audiocraft_logits(ours_model, codes)
        conditioner = ours_model.lm.condition_provider.conditioners["self_wav"]
        monkeypatch.setattr(conditioner, "_get_wav_embedding", lambda x: chroma)
        ours, sequence = _audiocraft_logits(ours_model, codes)
        monkeypatch.undo()
        theirs = _transformers_logits(hf, folder, sequence, True, chroma=chroma)
        assert (ours - null).abs().max().item() > 1e-2  # the melody does change the logits
        assert (theirs - ours).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_keeps_lm_and_codec_bit_identical(exported, name):
    model, folder = exported(name)
    back = load_model(str(folder), device="cpu")
    ours, theirs = model.lm.state_dict(), back.lm.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    codec, codec_back = model.compression_model.state_dict(), back.compression_model.state_dict()
    assert codec.keys() == codec_back.keys() and all(torch.equal(codec[k], codec_back[k]) for k in codec)
    t5 = model.lm.condition_provider.conditioners["description"].__dict__["t5"].state_dict()
    t5_back = back.lm.condition_provider.conditioners["description"].__dict__["t5"].state_dict()
    assert all(torch.equal(t5[k], t5_back[k]) for k in t5)


@pytest.mark.parametrize("name", ["tiny", "tiny-stereo"])
def test_codec_decodes_and_encodes_the_same(exported, name):
    """The exported EnCodec (with the zero LSTM that stands for the tiny codec's none) decodes
    codes to the same audio and encodes audio to the same codes as audiocraft's."""
    model, folder = exported(name)
    hf = _hf_class(name).from_pretrained(folder).eval()
    codec = getattr(model.compression_model, "model", model.compression_model)  # stereo: the mono codec inside
    codes = torch.randint(0, model.lm.card, (2, codec.num_codebooks, 25), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = codec.decode(codes)
        theirs = hf.audio_encoder.decode(codes[None], [None]).audio_values
        assert theirs.shape == ours.shape
        assert (theirs - ours).abs().max().item() < TOLERANCE
        wav = torch.randn(2, 1, 16000, generator=torch.Generator().manual_seed(3)) * 0.1
        ours_codes, _ = codec.encode(wav)
        theirs_codes = hf.audio_encoder.encode(wav, bandwidth=hf.config.audio_encoder.target_bandwidths[-1])
        assert torch.equal(theirs_codes.audio_codes[0], ours_codes)


def _capture_codes(hf):
    """Wrap ``audio_encoder.decode`` (transformers' generate returns audio) to keep the codes."""
    seen = []
    decode = hf.audio_encoder.decode

    def wrapped(audio_codes, *args, **kwargs):
        seen.append(audio_codes)
        return decode(audio_codes, *args, **kwargs)
    hf.audio_encoder.decode = wrapped
    return seen


@pytest.mark.parametrize("name", NAMES)
def test_greedy_generation_gives_identical_codes(exported, name):
    from transformers import AutoProcessor
    model, folder = exported(name)
    frames = int(2 * model.frame_rate)
    model.set_generation_params(duration=2.0, use_sampling=True, top_k=1, cfg_coef=3.0)
    torch.manual_seed(0)
    _, tokens = model.generate(CAPTIONS, return_tokens=True)  # [B, K, 100]
    hf = _hf_class(name).from_pretrained(folder).eval()
    seen = _capture_codes(hf)
    inputs = AutoProcessor.from_pretrained(folder)(text=CAPTIONS, padding=True, return_tensors="pt")
    channel_codebooks = model.lm.n_q // int(model.audio_channels)
    audio = hf.generate(**inputs, do_sample=False, guidance_scale=3.0, max_new_tokens=frames + channel_codebooks - 1)
    if len(seen) == 2:  # stereo: decoded left then right; interleave back to L1 R1 L2 R2...
        left, right = seen[0][0], seen[1][0]
        theirs = torch.stack([left, right], dim=2).reshape(left.shape[0], -1, left.shape[-1])
    else:
        theirs = seen[0][0]  # [1 chunk, B, K, T] -> [B, K, T]
    assert theirs.shape == tokens.shape
    assert tokens.unique().numel() > 20  # not a degenerate constant output
    assert torch.equal(theirs, tokens)
    assert audio.shape[-1] == 2 * int(model.sample_rate)


def test_pipeline_generates_requested_length(exported):
    from transformers import pipeline
    model, folder = exported("tiny")
    pipe = pipeline("text-to-audio", model=str(folder), device="cpu")
    out = pipe("rock song", forward_params={"max_new_tokens": 50 + 3, "do_sample": False})
    assert out["sampling_rate"] == 32000
    assert out["audio"].shape[-1] == 32000  # 1 s: 50 frames


def test_export_refuses_foreign_folder_and_keeps_it(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an export of ours") as err:
        export_transformers("tiny", out)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_overwrite_replaces_only_our_files(exported, tmp_path):
    model, _ = exported("tiny")
    out = tmp_path / "hf"
    export_transformers(model, out)
    (out / "README.md").write_text("a card written by someone else")
    with pytest.raises(ValueError, match="--overwrite"):
        export_transformers(model, out)
    export_transformers(model, out, overwrite=True, dtype="fp16")
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["dtype"] == "fp16" and (out / "README.md").read_text() == "a card written by someone else"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_same_width_text_encoder_is_refused_in_one_line(tmp_path):
    from musicgen_trainer.sharing.transformers_weights import NotExpressible
    from musicgen_trainer.tiny import TinyConfig, build_tiny_musicgen
    model = build_tiny_musicgen(TinyConfig(lm_dim=512, lm_heads=4))  # T5 512 wide too
    with pytest.raises(NotExpressible, match="same width") as err:
        export_transformers(model, tmp_path / "out")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


@pytest.mark.skipif(not os.environ.get("MUSICGEN_SLOW_TESTS"), reason="slow: set MUSICGEN_SLOW_TESTS=1")
def test_random_small_shapes_logits_equal(tmp_path):
    """musicgen-small's shapes (random weights): the export scores as our model does."""
    model = load_model("random:small", device="cpu")
    folder = export_transformers(model, tmp_path / "small")
    hf = _hf_class("small").from_pretrained(folder).eval()
    ours, sequence = _audiocraft_logits(model, _codes(model, frames=6))
    theirs = _transformers_logits(hf, folder, sequence, False)
    assert (theirs - ours).abs().max().item() < TOLERANCE


def test_cli_export_writes_and_refuses_in_one_line(tmp_path, capsys):
    from musicgen_trainer.__main__ import main
    out = tmp_path / "tiny-hf"
    assert main(["export", "tiny", "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not list(out.glob("*.bin"))  # safetensors only
    # Every export gets its model card, here with one clip generated now (no run, no training samples).
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and "samples/sample_01.wav" in card
    assert (out / "samples" / "sample_01.wav").is_file()
    capsys.readouterr()
    assert main(["export", "tiny", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--overwrite" in err and "\n" not in err
    assert main(["export", "tiny", "--out", str(out), "--overwrite", "--samples", "0"]) == 0  # card rewritten
    assert "sample_01.wav" not in (out / "README.md").read_text()


def test_run_and_adapter_folders_export_their_export(exported, tmp_path):
    """A run folder stands for its export/ and a LoRA run's adapter/ for the run's export (merged
    weights); an audiocraft-format export of a transformers folder loads back with the same LM."""
    from musicgen_trainer.sharing.export_config import ExportConfig, run_export
    from musicgen_trainer.sharing.transformers_format import source_folder
    model, folder = exported("tiny")
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "adapter" / "musicgen_lora.json").write_text("{}")
    run_export(ExportConfig(source=str(folder), out=str(run / "export"), format="audiocraft"), log=lambda _: None)
    assert source_folder(str(run)) == str(run / "export")
    assert source_folder(str(run / "adapter")) == str(run / "export")
    assert source_folder("tiny") == "tiny" and source_folder(str(folder)) == str(folder)
    back = load_model(str(run / "export"), device="cpu")
    ours, theirs = model.lm.state_dict(), back.lm.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_train_from_a_transformers_folder_then_export_it_back(exported, tmp_path):
    """train.py --model DIR: a transformers base trains (its T5 weights and tokenizer come from the
    folder), and the run exports to transformers again."""
    import numpy as np
    import soundfile as sf
    from musicgen_trainer.finetune import train
    from musicgen_trainer.train_config import TrainConfig
    model, folder = exported("tiny")
    data = tmp_path / "data" / "rock"
    data.mkdir(parents=True)
    tone = (0.3 * np.sin(2 * np.pi * 330.0 * np.arange(44100) / 44100)).astype(np.float32)
    for i in range(2):
        sf.write(data / f"take_{i}.wav", tone, 44100)
        (data / f"take_{i}.txt").write_text("rock song")
    run = tmp_path / "run"
    train(TrainConfig(data=str(tmp_path / "data"), model=str(folder), out=str(run), cache_dir=str(tmp_path / "cache"),
                      batch_size=2, segment_seconds=1.0, steps=2, lr=1e-2, warmup_steps=1, sample_every=0,
                      valid_every=0, save_every=1000, progress=False, device="cpu", export_dtype="fp32"))
    out = export_transformers(str(run), tmp_path / "run-hf")
    tuned = load_model(str(out), device="cpu").lm.state_dict()
    base = model.lm.state_dict()
    assert any(not torch.equal(base[k], tuned[k]) for k in base)  # it trained, and the export holds that


def test_app_lists_transformers_folders(tmp_path):
    """The app's model list (read without opening weights) includes transformers folders."""
    from musicgen_trainer.app.backend import list_models
    (tmp_path / "run" / "export-hf").mkdir(parents=True)
    (tmp_path / "run" / "export-hf" / "config.json").write_text(json.dumps({"model_type": "musicgen"}))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    keys = [c.key for c in list_models(tmp_path, []) if c.export]
    assert keys == ["export:run/export-hf"]


@pytest.fixture(scope="module")
def sentencepiece_tokenizer(tmp_path_factory):
    """A T5 (sentencepiece) tokenizer trained here on a few lines: the released models' kind of
    tokenizer, which cannot be downloaded in the tests."""
    import sentencepiece as spm
    from transformers import T5Tokenizer
    root = tmp_path_factory.mktemp("spm")
    (root / "text.txt").write_text("\n".join(["rock song with loud guitars", "jazz tune on a piano",
                                              "calm ambient pads", "fast drums and bass"] * 20))
    spm.SentencePieceTrainer.train(input=str(root / "text.txt"), model_prefix=str(root / "spiece"), vocab_size=30,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   minloglevel=2)
    return T5Tokenizer(vocab_file=str(root / "spiece.model"), extra_ids=10)


def test_sentencepiece_tokenizer_travels_with_the_folder(sentencepiece_tokenizer, tmp_path):
    """A model with a T5 sentencepiece tokenizer (as the released ones): the transformers folder
    carries it, the converted model uses the folder's (the same token ids), and an audiocraft
    export of the converted model (``export --format audiocraft``) carries a copy under the
    relative name ``tokenizer``: no path of this machine in any of its files, and it loads with the
    same token ids once the transformers folder is gone and the export has moved."""
    from omegaconf import OmegaConf

    from musicgen_trainer.__main__ import main
    from musicgen_trainer.exports import LM_FILE
    model = load_model("tiny", device="cpu")
    model.lm.condition_provider.conditioners["description"].t5_tokenizer = sentencepiece_tokenizer
    folder = export_transformers(model, tmp_path / "hf")
    back = load_model(str(folder), device="cpu")
    tokenizer = back.lm.condition_provider.conditioners["description"].t5_tokenizer
    assert "ByT5" not in type(tokenizer).__name__
    assert tokenizer(CAPTIONS).input_ids == sentencepiece_tokenizer(CAPTIONS).input_ids
    export = tmp_path / "ac"
    assert main(["export", str(folder), "--format", "audiocraft", "--out", str(export), "--samples", "0"]) == 0
    package = torch.load(export / LM_FILE, map_location="cpu", weights_only=True)
    assert OmegaConf.create(package["xp.cfg"]).musicgen_trainer.tokenizer_folder == "tokenizer"
    assert (export / "tokenizer" / "tokenizer_config.json").is_file()
    from pathlib import Path

    from musicgen_trainer.sharing.push import files_to_push
    assert Path("tokenizer/tokenizer_config.json") in files_to_push(export)  # a push uploads it
    for path in export.rglob("*"):  # the user's folders appear nowhere (the pushed files included)
        if path.is_file():
            assert str(tmp_path).encode() not in path.read_bytes(), path
    shutil.rmtree(folder)
    moved = shutil.move(str(export), str(tmp_path / "elsewhere" / "ac"))  # e.g. downloaded on another machine
    again = load_model(moved, device="cpu")
    assert again.lm.condition_provider.conditioners["description"].t5_tokenizer(CAPTIONS).input_ids == \
        sentencepiece_tokenizer(CAPTIONS).input_ids


def test_melody_folder_from_elsewhere_uses_htdemucs(exported, tmp_path, monkeypatch):
    """A melody folder we did not write (no record of our tiny separator) separates stems with
    htdemucs as audiocraft's melody models do: one line when it is not cached, else the same
    logits as transformers, and an audiocraft export of it that loads back."""
    import demucs.pretrained
    import dataset_tools.separation.model as separation
    from musicgen_trainer.exports import export_model
    from musicgen_trainer.tiny import TINY_DEMUCS, tiny_demucs
    model, ours = exported("tiny-melody")
    folder = tmp_path / "hub-melody"
    shutil.copytree(ours, folder)
    (folder / RECORD_FILE).unlink()
    config = json.loads((folder / "config.json").read_text())
    for default in ("kernel_size", "last_kernel_size", "num_residual_layers", "compress"):  # EncodecConfig's
        del config["audio_encoder"][default]  # defaults: a config saved elsewhere may leave them out
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelUnavailableError, match="htdemucs") as err:
        load_model(str(folder), device="cpu")
    assert "\n" not in str(err.value)
    calls = []
    monkeypatch.setattr(separation, "check_pretrained_cache", lambda name: calls.append(name))
    monkeypatch.setattr(demucs.pretrained, "get_model", lambda name: tiny_demucs(dict(TINY_DEMUCS), 7))
    converted = load_model(str(folder), device="cpu")
    assert calls == ["htdemucs"]
    hf = _hf_class("tiny-melody").from_pretrained(folder).eval()
    ours_logits, sequence = _audiocraft_logits(converted, _codes(converted))
    assert (_transformers_logits(hf, folder, sequence, True) - ours_logits).abs().max().item() < TOLERANCE
    converted.set_generation_params(duration=0.1)
    melody = torch.randn(1, 1, 32000, generator=torch.Generator().manual_seed(4)) * 0.1
    assert converted.generate_with_chroma(["rock song"], melody, 32000).shape == (1, 1, 3200)  # separated
    export_model(converted, tmp_path / "ac", dtype="fp32")  # no separator weights: htdemucs again on load
    back = load_model(str(tmp_path / "ac"), device="cpu")
    assert calls == ["htdemucs", "htdemucs"]
    assert all(torch.equal(v, back.lm.state_dict()[k]) for k, v in converted.lm.state_dict().items())


def test_a_folders_guidance_scale_is_the_default_guidance(exported, tmp_path):
    """generation_config.json's guidance_scale is the converted model's own guidance: generating
    without a coefficient uses it (the same codes as asking for it), an explicit one wins, and
    generate.py records the coefficient used."""
    import dataclasses

    from musicgen_trainer.cli_generate import main as generate_main
    from musicgen_trainer.generation import GenerationConfig, generate
    folder = tmp_path / "hf"
    shutil.copytree(exported("tiny")[1], folder)
    settings = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**settings, "guidance_scale": 5.0}))
    converted = load_model(str(folder), device="cpu")
    config = GenerationConfig(duration=0.3, seed=3, top_k=50)

    def codes(cfg):
        return generate(converted, ["rock song"], cfg, return_tokens=True)[1]
    own = codes(config)
    assert torch.equal(own, codes(dataclasses.replace(config, cfg_coef=5.0)))
    assert not torch.equal(own, codes(dataclasses.replace(config, cfg_coef=1.0)))
    for extra, used in (([], 5.0), (["--cfg-coef", "2"], 2.0)):
        out = tmp_path / f"clips{used:g}"
        assert generate_main(["--model", str(folder), "--prompt", "rock song", "--duration", "0.2", "--seed", "1",
                              "--out", str(out), *extra]) == 0
        assert [json.loads(p.read_text())["cfg_coef"] for p in out.glob("*.json")] == [used]


@pytest.mark.parametrize("value", [float("nan"), -50, 1e30, "abc", True])
def test_a_guidance_scale_outside_0_to_100_is_refused_in_one_line(exported, tmp_path, value):
    """A folder's guidance_scale must be a finite number in cfg_coef's range [0, 100]: anything else
    (NaN crashed generation, -50 or 1e30 were used as given) is refused at load in one line; null is
    transformers' "not set": the model's default stays. A model whose own coefficient is out of range
    (an export's config) stops generation in one line too, unless the request gives one."""
    from musicgen_trainer.generation import GenerationConfig, guidance_coef
    from musicgen_trainer.models import ModelUnavailableError
    folder = tmp_path / "hf"
    shutil.copytree(exported("tiny")[1], folder)
    settings = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**settings, "guidance_scale": value}))
    with pytest.raises(ModelUnavailableError, match="guidance_scale") as err:
        load_model(str(folder), device="cpu")
    assert "\n" not in str(err.value)
    (folder / "generation_config.json").write_text(json.dumps({**settings, "guidance_scale": None}))
    model = load_model(str(folder), device="cpu")
    assert guidance_coef(model, GenerationConfig()) == pytest.approx(3.0)
    model.lm.cfg_coef = value
    with pytest.raises(ValueError, match="cfg_coef"):
        guidance_coef(model, GenerationConfig())
    assert guidance_coef(model, GenerationConfig(cfg_coef=2.0)) == 2.0


def test_train_from_a_sentencepiece_folder_exports_its_tokenizer(sentencepiece_tokenizer, tmp_path):
    """train.py --model DIR (a sentencepiece tokenizer): export/ and export-best/ carry the tokenizer
    (the writer of `export --format audiocraft`), a resume accepts export-best/tokenizer/ as the run's
    own, and --overwrite removes it with the run's other files."""
    import numpy as np
    import soundfile as sf
    from musicgen_trainer.finetune import train
    from musicgen_trainer.train_config import TrainConfig
    model = load_model("tiny", device="cpu")
    model.lm.condition_provider.conditioners["description"].t5_tokenizer = sentencepiece_tokenizer
    folder = export_transformers(model, tmp_path / "hf")
    for genre in ("rock", "jazz"):
        (tmp_path / "data" / genre).mkdir(parents=True)
        for i in range(3):
            tone = (0.3 * np.sin(2 * np.pi * (220.0 + 110 * i) * np.arange(44100) / 44100)).astype(np.float32)
            sf.write(tmp_path / "data" / genre / f"take_{i}.wav", tone, 44100)
            (tmp_path / "data" / genre / f"take_{i}.txt").write_text(f"{genre} song")
    run = tmp_path / "run"

    def config(steps, **kw):
        return TrainConfig(data=str(tmp_path / "data"), model=str(folder), out=str(run), valid_fraction=0.34,
                           cache_dir=str(tmp_path / "cache"), batch_size=2, segment_seconds=1.0, steps=steps,
                           warmup_steps=1, sample_every=0, eval_every=1, eval_classifier="none", save_every=1,
                           progress=False, device="cpu", export_dtype="fp32", **kw)
    train(config(1))
    shutil.move(str(folder), str(tmp_path / "aside"))  # the exports need nothing from the base folder
    for export in ("export", "export-best"):
        tokenizer = load_model(str(run / export), device="cpu").lm.condition_provider.conditioners["description"]
        assert tokenizer.t5_tokenizer(CAPTIONS).input_ids == sentencepiece_tokenizer(CAPTIONS).input_ids
    shutil.move(str(tmp_path / "aside"), str(folder))
    train(config(2, resume="auto"))  # export-best/tokenizer/ is the run's own
    assert (run / "export-best" / "tokenizer").is_dir()
    (run / "export-best" / "tokenizer" / "mine.txt").write_text("a user's file")
    with pytest.raises(Exception, match="mine.txt"):
        train(config(3, resume="auto"))
    (run / "export-best" / "tokenizer" / "mine.txt").unlink()
    from musicgen_trainer.run_folder import remove_run_outputs
    remove_run_outputs(run, json.loads((run / "run.json").read_text()))  # what --overwrite deletes
    assert not (run / "export").exists() and not (run / "export-best").exists()
