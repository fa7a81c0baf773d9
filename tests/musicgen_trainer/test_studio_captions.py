"""The studio's Captions tab: list, filter and page a prepared dataset's segments; edit one caption
or find-and-replace in a genre, saved to the .txt and the .json so the trainer reads the new
caption; only the dataset's own segment files are ever written; the same through the page's API."""
import json
import os

import pytest
from studio_helpers import prepared

from musicgen_trainer.app import studio_captions as sc
from musicgen_trainer.app.paths import OutsideRootError
from musicgen_trainer.data import find_clips


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A prepared dataset, made once; each test works on its own copy."""
    base = tmp_path_factory.mktemp("captions")
    prepared(base / "data")
    return base / "data"


@pytest.fixture
def root(pristine, tmp_path):
    import shutil
    shutil.copytree(pristine, tmp_path / "data", symlinks=True)
    (tmp_path / "outside").mkdir()
    return tmp_path / "data"


def _caption_files(root, segment):
    wav = root / "lib-prepared" / segment
    return wav.with_suffix(".txt").read_text(), json.loads(wav.with_suffix(".json").read_text())


def test_segments_are_listed_filtered_and_paged(root):
    folder = sc.dataset_folder(root, "lib-prepared")
    (folder / "drone" / "drone 1.txt").write_text("")  # a segment without a caption
    meta = json.loads((folder / "drone" / "drone 1.json").read_text())
    (folder / "drone" / "drone 1.json").write_text(json.dumps({**meta, "description": ""}))
    segments = sc.load_segments(folder)
    assert [s.path for s in segments][:2] == ["beats/beats 0.wav", "beats/beats 1.wav"] and len(segments) == 8
    assert segments[0].row() == ["beats/beats 0.wav", "beats", "Beats music, beats 0", 4.0]
    assert sc.genres_of(segments) == ["beats", "drone", sc.UNLABELLED]
    assert [s.path for s in sc.filter_segments(segments, "no caption")] == ["drone/drone 1.wav"]
    assert [s.path for s in sc.filter_segments(segments, "unknown")] == ["unknown/mystery 0.wav",
                                                                          "unknown/mystery 1.wav"]
    assert len(sc.filter_segments(segments, "all", "drone")) == 3
    assert [s.path for s in sc.filter_segments(segments, search="BEATS 2")] == ["beats/beats 2.wav"]
    rows, page, pages = sc.page_of(segments, 7, rows=3)  # clamped to the last page
    assert (page, pages, [s.path for s in rows]) == (3, 3, ["unknown/mystery 0.wav", "unknown/mystery 1.wav"])
    with pytest.raises(ValueError, match="filter must be one of"):
        sc.filter_segments(segments, "everything")


def test_an_edited_caption_is_saved_to_both_files_and_the_trainer_reads_it(root):
    saved = sc.set_caption(root, "lib-prepared", "beats/beats 0.wav", "  Beats music,\n crisp   claps ")
    assert saved == "Beats music, crisp claps"  # one line, spaces collapsed
    txt, meta = _caption_files(root, "beats/beats 0.wav")
    assert txt == saved and meta["description"] == saved
    assert meta["title"] == "beats 0"  # the rest of the metadata is kept
    clip = next(c for c in find_clips(root / "lib-prepared") if c.path.name == "beats 0.wav")
    assert clip.caption == saved
    assert not list((root / "lib-prepared" / "beats").glob("*.part"))  # atomic: no temporary files left


def test_find_and_replace_changes_one_genre_only_and_checks_every_caption_first(root):
    assert sc.replace_in_genre(root, "lib-prepared", "drone", "music", "soundscape") == 3
    assert _caption_files(root, "drone/drone 2.wav")[1]["description"] == "Drone soundscape, drone 2"
    assert _caption_files(root, "beats/beats 2.wav")[0] == "Beats music, beats 2"  # another genre: unchanged
    clips = {c.path.name: c.caption for c in find_clips(root / "lib-prepared")}
    assert clips["drone 0.wav"] == "Drone soundscape, drone 0" and clips["beats 0.wav"] == "Beats music, beats 0"
    sc.set_caption(root, "lib-prepared", "beats/beats 2.wav", "Beats music, " + "x" * 487)  # 500 characters: the most
    before = [_caption_files(root, f"beats/beats {i}.wav") for i in range(3)]
    with pytest.raises(ValueError, match="at most 500 characters"):  # beats 2 would get 502
        sc.replace_in_genre(root, "lib-prepared", "beats", "music", "musical")
    assert [_caption_files(root, f"beats/beats {i}.wav") for i in range(3)] == before  # none written, not even 0, 1
    with pytest.raises(ValueError, match="not a genre of this dataset"):
        sc.replace_in_genre(root, "lib-prepared", "jazz", "a", "b")


@pytest.mark.parametrize("segment, message", [
    ("../lib/beats/beats 0.wav", "not a segment"), ("/etc/passwd", "not a segment"),
    ("beats/beats 0.txt", "not a segment"), ("beats/mine.wav", "not a segment"), ("", "not a segment"),
    ("link-out/theirs.wav", "not a segment"),
])
def test_only_the_datasets_own_segments_are_ever_written(root, segment, message):
    folder = root / "lib-prepared"
    (folder / "beats" / "mine.wav").write_bytes((folder / "beats" / "beats 0.wav").read_bytes())  # the user's
    (root.parent / "outside" / "theirs.wav").write_bytes(b"RIFF")
    os.symlink(root.parent / "outside", folder / "link-out")
    before = {p: p.read_bytes() for p in list(folder.rglob("*")) + list(root.parent.joinpath("outside").rglob("*"))
              if p.is_file()}
    with pytest.raises(ValueError, match=message):
        sc.set_caption(root, "lib-prepared", segment, "hacked")
    after = {p: p.read_bytes() for p in before}
    assert after == before and not (folder / "beats" / "mine.txt").exists()


def test_a_linked_sidecar_a_dataset_outside_the_root_and_a_running_prepare_are_refused(root):
    folder = root / "lib-prepared"
    target = root.parent / "outside" / "victim.txt"
    target.write_text("keep me")
    (folder / "beats" / "beats 1.txt").unlink()
    os.symlink(target, folder / "beats" / "beats 1.txt")
    with pytest.raises(ValueError, match="not a plain file"):
        sc.set_caption(root, "lib-prepared", "beats/beats 1.wav", "x")
    assert target.read_text() == "keep me"
    import shutil
    shutil.copytree(folder, root.parent / "outside" / "theirs-prepared")  # a dataset outside the root...
    os.symlink(root.parent / "outside" / "theirs-prepared", root / "link-out")  # ...and a link to it inside
    for dataset in ("../outside/theirs-prepared", "link-out", "/tmp", str(folder)):
        with pytest.raises(OutsideRootError):
            sc.set_caption(root, dataset, "beats/beats 0.wav", "x")
    with pytest.raises(ValueError, match="at most 500 characters"):
        sc.set_caption(root, "lib-prepared", "beats/beats 0.wav", "x" * 501)
    (folder / ".prepare.lock").write_text(str(os.getpid()))
    with pytest.raises(ValueError, match="prepare is running"):
        sc.set_caption(root, "lib-prepared", "beats/beats 0.wav", "x")
    assert _caption_files(root, "beats/beats 0.wav")[0] == "Beats music, beats 0"
    theirs = root.parent / "outside" / "theirs-prepared" / "beats" / "beats 0.txt"
    assert theirs.read_text() == "Beats music, beats 0"


@pytest.fixture
def client(root, tmp_path):
    from gradio_client import Client

    from musicgen_trainer.app.page import App, serve_in_background
    app = App(checkpoints=str(tmp_path / "checkpoints"), out=str(tmp_path / "out"), pretrained=[],
              midi_default=False, data_root=str(root))
    demo, url = serve_in_background(app)
    try:
        yield Client(url, verbose=False)
    finally:
        demo.close()


def test_the_captions_tabs_api(client, root):
    from gradio_client.exceptions import AppError
    assert client.predict(api_name="/captions_datasets")["choices"] == [["lib-prepared", "lib-prepared"]]
    table, line, genre, replace_genre, page = client.predict("lib-prepared", "unknown", "all genres", "", 1,
                                                             api_name="/captions_list")
    assert [row[0] for row in table["data"]] == ["unknown/mystery 0.wav", "unknown/mystery 1.wav"]
    assert line == "2 of 8 segments; page 1 of 1" and page == 1
    caption, audio = client.predict("lib-prepared", "beats/beats 1.wav", api_name="/caption_select")
    assert caption == "Beats music, beats 1" and os.path.getsize(audio) > 1000
    note, saved, table, *_ = client.predict("lib-prepared", "beats/beats 1.wav", "Beats music, shakers",
                                            "all", "beats", "", 1, api_name="/caption_save")
    assert saved == "Beats music, shakers" and ["beats/beats 1.wav", "beats", saved, 4.0] in table["data"]
    assert _caption_files(root, "beats/beats 1.wav")[1]["description"] == saved
    note, table, *_ = client.predict("lib-prepared", "beats", "shakers", "congas", "all", "all genres", "", 1,
                                     api_name="/caption_replace")
    assert note == "Changed 1 caption(s) in beats." and _caption_files(root, "beats/beats 1.wav")[0] == \
        "Beats music, congas"
    for args, api in ((("../outside", "all", "all genres", "", 1), "/captions_list"),
                      (("lib-prepared", "../lib/beats/beats 0.wav"), "/caption_select"),
                      (("lib-prepared", "/etc/passwd", "x", "all", "all genres", "", 1), "/caption_save")):
        with pytest.raises(AppError) as err:
            client.predict(*args, api_name=api)
        assert "\n" not in str(err.value) and str(root) not in str(err.value)
