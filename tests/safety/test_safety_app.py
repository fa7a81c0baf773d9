"""The web app's safety rules, shown the way a user or an outside caller meets them.

* Result folders: the app prunes only folders it made itself (each holds a marker file it
  writes), never anything else in ``--out``, whatever its name (``.git``, ``0-photos``...).
* Audio prompts: an upload's length is checked from its header before anything is decoded,
  and a file without one is decoded block by block and given up on once too long; at most
  the model's window from the end is ever held in memory.
* Text: a lone UTF-16 surrogate in a prompt is cleaned, not a codec error.
* Paths: the page (its config, its API description, its error messages) never receives the
  server's folders; fine-tunes are named relative to ``checkpoints/`` (``export:run/export``).
* Rescan: Gradio 6 runs any event by its number for any HTTP client (``api_visibility=
  "private"`` only hides it from the API page and from gradio_client), so the rescan
  handler cannot be made page-only; instead it is harmless: it returns only what the page
  already shows, and walks ``checkpoints/`` at most once per interval however often it is called.
"""
import json
import shutil
import subprocess
import tracemalloc
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from musicgen_trainer.generation import GenerationConfig
import soundfile as sf

from musicgen_trainer.app.backend import KEEP_RESULTS, RESULT_MARKER, AppRequest, _new_result_folder, open_audio_prompt, read_audio_tail, run_request

MB = 1 << 20


# --- helpers ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model():
    from musicgen_trainer.models import load_model
    return load_model("tiny", device="cpu")


class FakeClock:
    """A clock that moves only when told: the rescan interval without any real waiting."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _foreign_folders(out: Path):
    """What a user may keep in the folder given as --out (e.g. ``--out .``)."""
    (out / ".git").mkdir(parents=True)
    (out / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (out / "0-photos").mkdir()
    (out / "0-photos" / "cat.jpg").write_bytes(b"\xff\xd8\xff")
    (out / "plain").mkdir()
    (out / "plain" / "notes.txt").write_text("mine")
    # Named like a result folder, but not made by the app: kept too.
    (out / "20000101-000000-deadbeef").mkdir()
    return [".git", "0-photos", "plain", "20000101-000000-deadbeef"]


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model):
    """(app, client, url, root, clock): the page on a free local port; one fine-tune under
    checkpoints/, foreign folders in --out, and a fake clock for the rescan interval."""
    from gradio_client import Client

    from musicgen_trainer.app.page import App, serve_in_background
    from musicgen_trainer.exports import export_model
    root = tmp_path_factory.mktemp("safety-app")
    export_model(tiny_model, root / "checkpoints" / "jazzrun" / "export", extra={"genres": ["jazz"]})
    _foreign_folders(root / "out")
    clock = FakeClock()
    app = App(checkpoints=str(root / "checkpoints"), out=str(root / "out"), pretrained=[], midi_default=False,
              clock=clock)
    demo, url = serve_in_background(app)
    try:
        yield app, Client(url, verbose=False), url.rstrip("/"), root, clock
    finally:
        demo.close()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read().decode()


def _post(url: str, body: dict) -> dict:
    """POST ``body`` as ASCII JSON (lone surrogates travel as ``\\ud800`` escapes)."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def _sse_events(url: str):
    """``(event, data)`` pairs of a server-sent event stream."""
    with urllib.request.urlopen(url, timeout=300) as r:
        event = None
        for raw in r:
            line = raw.decode().rstrip("\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                yield event, line[5:].strip()


def _raw_call(base: str, api_name: str, data: list):
    """What any HTTP client can do without gradio_client: POST /gradio_api/call/<name>, then read
    the result stream. Returns ``("complete", outputs)`` or ``("error", message)``."""
    event_id = _post(f"{base}/gradio_api/call/{api_name}", {"data": data})["event_id"]
    for event, payload in _sse_events(f"{base}/gradio_api/call/{api_name}/{event_id}"):
        if event in ("complete", "error"):
            return event, json.loads(payload) if payload and payload != "null" else None
    return "closed", None


def _raw_queue_join(base: str, fn_index: int, data: list):
    """What the page's own JavaScript does: join the queue naming the event's number, then read
    the session's stream. Returns the final message (``msg == "process_completed"``)."""
    session = uuid.uuid4().hex
    _post(f"{base}/gradio_api/queue/join",
          {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None})
    for _, payload in _sse_events(f"{base}/gradio_api/queue/data?session_hash={session}"):
        msg = json.loads(payload)
        if msg.get("msg") == "process_completed":
            return msg
    raise AssertionError("the queue stream ended without a result")


def _results(out: Path):
    return sorted(p.name for p in out.iterdir() if not p.is_symlink() and (p / RESULT_MARKER).is_file())


class _NoModel:
    """A model cache that fails the test if a model is loaded (the request must stop before)."""

    def get(self, name):
        raise AssertionError("the model was loaded for a request that should have been refused")


def _write_silence(path: Path, seconds: float, rate: int = 44_100, channels: int = 1, fmt: str = "FLAC"):
    """Silence (tiny once compressed), written a minute at a time."""
    minute = np.zeros((rate * 60, channels), dtype=np.float32)
    left = int(seconds * rate)
    with sf.SoundFile(str(path), "w", rate, channels, format=fmt) as f:
        while left > 0:
            f.write(minute[:min(left, len(minute))])
            left -= len(minute)
    return path


def _vm_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class MemoryGrowth:
    """Peak memory while the block runs, two ways: Python + numpy allocations (tracemalloc,
    exact on any machine) and, where Linux lets the peak be reset, the process's resident peak."""

    def __enter__(self):
        self.rss_peak = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM := VmRSS
            self._rss0 = _vm_kb("VmRSS")
        except (OSError, KeyError):
            self._rss0 = None
        tracemalloc.start()
        return self

    def __exit__(self, *exc):
        self.traced_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        if self._rss0 is not None:
            self.rss_peak = (_vm_kb("VmHWM") - self._rss0) * 1024
        return False


# --- result folders ---------------------------------------------------------------------------

def test_pruning_removes_only_the_apps_own_result_folders(tmp_path):
    out = tmp_path / "out"
    foreign = _foreign_folders(out)
    outside = tmp_path / "elsewhere"
    (outside / "result-like").mkdir(parents=True)
    (outside / "result-like" / RESULT_MARKER).write_text("1\n")
    (out / "link").symlink_to(outside / "result-like", target_is_directory=True)

    made = [_new_result_folder(out) for _ in range(KEEP_RESULTS + 5)]

    assert all((f / RESULT_MARKER).is_file() for f in made[5:])
    assert _results(out) == sorted(f.name for f in made[5:])  # the 5 oldest went, newest 200 stay
    assert not any(f.exists() for f in made[:5])
    for name in foreign:
        assert (out / name).is_dir()
    assert (out / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert (out / "0-photos" / "cat.jpg").exists() and (out / "plain" / "notes.txt").read_text() == "mine"
    assert (out / "link").is_symlink() and (outside / "result-like" / RESULT_MARKER).exists()


def test_app_keeps_foreign_folders_in_out_after_205_results_and_a_real_request(served):
    app, client, _, _, _ = served
    out = Path(app.out)
    for _ in range(KEEP_RESULTS + 5):  # 205 requests' worth of result folders
        _new_result_folder(out)
    wav = client.predict("tiny", "piano", [], 0.5, None, 250, 0.0, 1.0, 3.0, 7, False, api_name="/generate")[0]
    assert sf.info(wav).duration == pytest.approx(0.5)
    assert len(_results(out)) == KEEP_RESULTS
    newest = max((p for p in out.iterdir() if (p / RESULT_MARKER).is_file()),
                 key=lambda p: int((p / RESULT_MARKER).read_text()))
    assert (newest / "musicgen_s7.wav").is_file()  # the real request's folder, marked like the rest
    for name in (".git", "0-photos", "plain", "20000101-000000-deadbeef"):
        assert (out / name).is_dir()
    assert (out / ".git" / "HEAD").exists() and (out / "0-photos" / "cat.jpg").exists()


# --- audio prompts ----------------------------------------------------------------------------

def test_hour_long_flac_prompt_is_refused_from_its_header(tmp_path):
    flac = _write_silence(tmp_path / "hour.flac", 3600)  # ~0.5 MB; 635 MB once decoded
    assert flac.stat().st_size < 2 * MB
    request = AppRequest(model="tiny", allowed_models=["tiny"], audio_prompt=str(flac), upload_roots=[str(tmp_path)])
    with MemoryGrowth() as grew, pytest.raises(ValueError) as err:
        run_request(request, _NoModel(), tmp_path / "out")
    message = str(err.value)
    assert message == "the audio prompt is longer than 10 minutes; upload at most that much"
    assert "\n" not in message
    assert grew.traced_peak < 50 * MB, grew.traced_peak
    if grew.rss_peak is not None:
        assert grew.rss_peak < 50 * MB, grew.rss_peak


def test_hour_long_flac_prompt_in_the_page_is_a_one_line_message(served, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    _, client, _, _, _ = served
    flac = _write_silence(tmp_path / "hour.flac", 3600)
    with pytest.raises(AppError) as err:
        client.predict("tiny", "", [], 0.5, handle_file(str(flac)), 250, 0.0, 1.0, 3.0, 1, False,
                       api_name="/generate")
    assert str(err.value).strip() == "the audio prompt is longer than 10 minutes; upload at most that much"


def test_long_prompt_within_the_limit_decodes_only_its_tail(tmp_path):
    flac = _write_silence(tmp_path / "nine-minutes.flac", 540, channels=2)  # 190 MB decoded whole
    with MemoryGrowth() as grew:
        audio, rate = read_audio_tail(open_audio_prompt(flac), 30.0)
    assert rate == 44_100 and audio.shape == (2, 30 * 44_100)
    assert grew.traced_peak < 20 * MB, grew.traced_peak


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg to make an AAC file")
def test_prompt_without_a_length_in_its_header_is_bounded_while_decoding(tmp_path):
    # ADTS AAC: no length in any header (ffprobe only guesses it), decoded by ffmpeg.
    aac = tmp_path / "two-minutes.aac"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=44100:cl=mono",
                    "-t", "120", "-c:a", "aac", str(aac)], check=True, timeout=300)
    assert open_audio_prompt(aac).use_ffmpeg  # not a libsndfile format: the bounded stream is used
    with MemoryGrowth() as grew, pytest.raises(ValueError) as err:
        open_audio_prompt(aac, max_seconds=5)  # 21 MB if decoded whole
    assert str(err.value) == "the audio prompt is longer than 5 seconds; upload at most that much"
    assert grew.traced_peak < 5 * MB, grew.traced_peak
    with MemoryGrowth() as grew:
        audio, rate = read_audio_tail(open_audio_prompt(aac), 2.0)
    assert audio.shape == (1, 2 * rate) and grew.traced_peak < 5 * MB


def test_unreadable_prompt_is_a_one_line_message(tmp_path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all\n" * 100)
    request = AppRequest(model="tiny", allowed_models=["tiny"], audio_prompt=str(junk), upload_roots=[str(tmp_path)])
    with pytest.raises(ValueError) as err:
        run_request(request, _NoModel(), tmp_path / "out")
    assert str(err.value).startswith("cannot read the audio prompt: ") and "\n" not in str(err.value)


# --- text -----------------------------------------------------------------------------------

def test_lone_surrogate_in_a_prompt_is_cleaned():
    request = AppRequest(model="tiny", allowed_models=["tiny"], prompt="lo-fi \ud800 piano",
                         genres=["jazz\udfff"])
    assert request.prompt == "lo-fi \ufffd piano" and request.genres == ["jazz\ufffd"]
    request.prompt.encode("utf-8")  # what the tokenizer and the result's JSON need
    # A surrogate pair sent as two escapes is one character, as meant.
    assert AppRequest(model="tiny", allowed_models=["tiny"], prompt="\ud83c\udfb5").prompt == "\U0001f3b5"


def test_lone_surrogate_sent_to_the_page_generates(served):
    _, _, base, _, _ = served
    event, outputs = _raw_call(base, "generate", ["tiny", "drums \ud800", [], 0.5, None, 250, 0.0, 1.0, 3.0, 2,
                                                  False, "none"])  # raw HTTP sends every input (adapter last)
    assert event == "complete", outputs
    assert "prompt: drums \ufffd" in outputs[-1]


# --- no server paths in the page -------------------------------------------------------------

def test_page_config_and_api_description_hold_no_server_paths(served):
    app, client, base, root, _ = served
    config = _get(f"{base}/config")
    info = _get(f"{base}/gradio_api/info")
    for text in (config, info):
        assert str(root) not in text and str(root.resolve()) not in text
    dropdown = next(c for c in json.loads(config)["components"] if c.get("props", {}).get("elem_id") == "model")
    assert dropdown["type"] == "dropdown"
    assert [value for _, value in dropdown["props"]["choices"]] == ["export:jazzrun/export", "tiny"]
    assert dropdown["props"]["value"] == "export:jazzrun/export"
    import musicgen_trainer.app
    assert not Path(musicgen_trainer.app.__file__).with_suffix(".pyi").exists()  # the page wrote nothing there
    # The key is mapped back on the server (and still checked against the list).
    assert app.value_of("export:jazzrun/export") == str(root / "checkpoints" / "jazzrun" / "export")
    summary = client.predict("export:jazzrun/export", "", ["jazz"], 0.5, None, 250, 0.0, 1.0, 3.0, 3, False,
                             api_name="/generate")[-1]
    assert "seed 3" in summary
    # Picking the fine-tune in the page offers its training genres (what the page's own call gets).
    # on_model sets genres, duration, note and the guidance slider
    event, (genres, _, note, *_) = _raw_call(base, "on_model", ["export:jazzrun/export"])
    assert event == "complete" and [v for _, v in genres["choices"]] == ["jazz"] and "jazz" in note


def test_refused_model_messages_hold_no_server_paths(served):
    from gradio_client.exceptions import AppError
    _, client, _, root, _ = served
    for model in ("/etc", "export:../../etc", "export:jazzrun"):
        with pytest.raises(AppError) as err:
            client.predict(model, "", [], 0.5, None, 250, 0.0, 1.0, 3.0, 1, False, api_name="/generate")
        assert "not in the list of choices" in str(err.value) and str(root) not in str(err.value)


def test_a_broken_fine_tunes_error_names_it_by_its_key(tmp_path, tiny_model):
    from musicgen_trainer.app.page import App
    from musicgen_trainer.models import ModelUnavailableError
    from musicgen_trainer.exports import export_model
    export = export_model(tiny_model, tmp_path / "checkpoints" / "run" / "export")
    app = App(checkpoints=str(tmp_path / "checkpoints"), out=str(tmp_path / "out"), pretrained=[])
    (Path(export) / "state_dict.bin").write_bytes(b"damaged")  # broken after it was listed
    request = AppRequest(model=app.value_of("export:run/export"), allowed_models=list(app.by_value),
                         generation=GenerationConfig(duration=0.5))
    with pytest.raises(ModelUnavailableError) as err:
        run_request(request, app.cache, app.out)
    shown = app.public_text(str(err.value))  # what the page shows
    assert str(tmp_path) not in shown and "export:run/export" in shown


# --- rescan -----------------------------------------------------------------------------------

def test_rescan_from_outside_is_refused_or_harmless(served, tiny_model):
    from gradio_client import Client

    from musicgen_trainer.exports import export_model
    app, _, base, root, clock = served
    config = json.loads(_get(f"{base}/config"))
    rescan_button = next(c["id"] for c in config["components"] if c.get("props", {}).get("value") ==
                         "Rescan checkpoints")
    # What an attacker reads off the page: the event's number and name.
    dep = next(d for d in config["dependencies"] if [rescan_button, "click"] in d["targets"])
    fn_index, api_name = dep["id"], dep["api_name"]

    # gradio_client refuses it outright (api_visibility="private").
    client = Client(base, verbose=False)
    assert f"/{api_name}" not in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    with pytest.raises(ValueError):
        client.predict("tiny", fn_index=fn_index)
    with pytest.raises(ValueError):
        client.predict("tiny", api_name=f"/{api_name}")

    # Raw HTTP is not refused by Gradio (the page itself calls it so), but it is harmless:
    # within the interval nothing is walked, and the answer is only what the page shows.
    scans = app.scans
    answers = [_raw_call(base, api_name, ["tiny"]) for _ in range(5)]
    answers += [_raw_queue_join(base, fn_index, ["tiny"]) for _ in range(5)]
    assert app.scans == scans
    for answer in answers:
        assert str(root) not in json.dumps(answer)

    # Once the interval has passed, a burst of calls walks checkpoints/ once, and a new
    # fine-tune shows up (by its key) for the page as it should.
    export_model(tiny_model, root / "checkpoints" / "bluesrun" / "export", extra={"genres": ["blues"]})
    clock.now += app.rescan_interval
    results = [_raw_queue_join(base, fn_index, ["tiny"]) for _ in range(5)]
    assert app.scans == scans + 1
    assert all(r.get("success") for r in results)
    update = results[0]["output"]["data"][0]
    assert [value for _, value in update["choices"]] == ["export:bluesrun/export", "export:jazzrun/export", "tiny"]
    assert str(root) not in json.dumps(results)
