"""The studio's two foundations: nothing outside its roots is reachable from the page
(``app.paths``), and long work runs as a background job that outlives the page (``app.jobs``)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from musicgen_trainer.app import jobs
from musicgen_trainer.app.paths import (OutsideRootError, confined, is_regular_file, list_folders, public,
                                        read_json_record, read_regular_file)


@pytest.fixture
def root(tmp_path):
    (tmp_path / "root" / "mine" / "jazz").mkdir(parents=True)
    (tmp_path / "root" / "mine-prepared").mkdir()
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "passwords.txt").write_text("x")
    os.symlink(tmp_path / "secret", tmp_path / "root" / "link-out")
    os.symlink(tmp_path / "root" / "mine", tmp_path / "root" / "link-in")
    return tmp_path / "root"


@pytest.mark.parametrize("bad", ["..", "../secret", "mine/../../secret", "/etc", "/", "~/x", "C:/x",
                                 "mine\\..\\..", "link-out", "link-out/passwords.txt", "mine/\x00x",
                                 "a" * 500])
def test_paths_outside_the_root_are_refused_with_one_line(root, bad):
    with pytest.raises(OutsideRootError) as err:
        confined(root, bad)
    assert "\n" not in str(err.value)


def test_paths_inside_the_root_resolve_and_are_named_relative_to_it(root):
    assert confined(root, "") == confined(root, ".") == root.resolve()
    assert confined(root, "mine/jazz", must_exist=True) == (root / "mine" / "jazz").resolve()
    assert confined(root, "new-folder/sub") == (root / "new-folder" / "sub").resolve()  # not there yet: fine
    assert confined(root, "link-in") == (root / "mine").resolve()  # a link that stays inside
    assert public(root, root / "mine" / "jazz") == "mine/jazz"
    with pytest.raises(OutsideRootError, match="does not exist"):
        confined(root, "missing", must_exist=True)


def test_listing_never_shows_links_out_or_hidden_folders(root):
    (root / ".hidden").mkdir()
    assert list_folders(root) == ["mine", "mine-prepared"]  # link-in resolves to mine: listed once
    assert list_folders(root, depth=2) == ["mine", "mine-prepared", "mine/jazz"]
    with pytest.raises(OutsideRootError):
        list_folders(root, "link-out")


def _python(code):
    return [sys.executable, "-c", code]


def test_a_job_runs_in_its_own_session_and_one_folder_runs_one_job(tmp_path):
    folder = tmp_path / "run"
    info = jobs.start_job("sleep", _python("import time; print('sta' + 'rted', flush=True); time.sleep(60)"), folder)
    try:
        assert jobs.job_status(folder).running
        deadline = time.monotonic() + 30
        while "\nstarted" not in jobs.read_log(folder) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "\nstarted" in jobs.read_log(folder)  # its output, live (the log's first line is the command)
        status = jobs.job_status(folder)
        assert status.pid == info.pid and os.getsid(status.pid) != os.getsid(0)  # survives the page's session
        with pytest.raises(jobs.JobBusyError, match="already running"):
            jobs.start_job("sleep", _python("pass"), folder)
        assert jobs.stop_job(folder)
        done = jobs.wait_job(folder, timeout=30)
        assert not done.running and done.state == "stopped"  # Ctrl-C, recorded by the wrapper
    finally:
        jobs.stop_job(folder, force=True)
    again = jobs.start_job("quick", _python("print('second')"), folder)  # the folder is free again
    assert jobs.wait_job(folder, timeout=30).state == "done" and again.kind == "quick"
    assert "\nsecond" in jobs.read_log(folder) and "started" not in jobs.read_log(folder)  # the latest job's part
    assert "\nstarted" in (folder / jobs.LOG_FILE).read_text()  # earlier jobs' output is kept in the file


def test_exit_status_failure_and_a_killed_job(tmp_path):
    jobs.start_job("fails", _python("import sys; sys.exit(3)"), tmp_path / "a")
    assert jobs.wait_job(tmp_path / "a", timeout=30).state == "failed"
    jobs.start_job("killed", _python("import time; time.sleep(60)"), tmp_path / "b")
    deadline = time.monotonic() + 30
    while jobs.job_status(tmp_path / "b").pid <= 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert jobs.stop_job(tmp_path / "b", force=True)  # the wrapper dies too: nobody records a status
    assert jobs.wait_job(tmp_path / "b", timeout=30).state == "lost"
    assert jobs.job_status(tmp_path / "never") is None


def test_progress_is_read_from_the_jobs_progress_bar(tmp_path):
    code = ("from tqdm import tqdm\nimport time\n"
            "for _ in tqdm(range(7), desc='prepare', mininterval=0):\n    time.sleep(0.01)\n")
    jobs.start_job("bar", _python(code), tmp_path / "p")
    assert jobs.wait_job(tmp_path / "p", timeout=60).state == "done"
    assert jobs.progress_of(jobs.read_log(tmp_path / "p")) == (7, 7, "prepare")
    assert jobs.progress_of("no bar here") is None


def test_a_stop_right_after_the_start_is_not_lost(tmp_path):
    """Stop clicked at once: before the wrapper wrote its pid, or before the command exists."""
    jobs.start_job("sleep", _python("import time; time.sleep(60)"), tmp_path / "s")
    try:
        assert jobs.stop_job(tmp_path / "s")
        assert jobs.wait_job(tmp_path / "s", timeout=30).state == "stopped"
    finally:
        jobs.stop_job(tmp_path / "s", force=True)


def test_records_are_read_only_from_small_regular_files(root, tmp_path):
    folder = root / "mine"
    (folder / "ok.json").write_text('{"a": 1}')
    (folder / "list.json").write_text("[1]")
    (folder / "big.json").write_text("{" + " " * (2 << 20) + "}")
    os.symlink(tmp_path / "secret" / "passwords.txt", folder / "link.json")
    os.symlink("/dev/zero", folder / "zero.json")
    os.mkfifo(folder / "fifo.json")
    assert read_json_record(folder / "ok.json") == {"a": 1}
    for name in ("list.json", "big.json", "link.json", "zero.json", "fifo.json", "missing.json"):
        assert read_json_record(folder / name) is None  # quickly: no hang on the FIFO, no read of /dev/zero
    with pytest.raises(OSError, match="cannot be read"):
        read_regular_file(folder / "link.json")  # a link, even to a readable file
    assert is_regular_file(folder / "ok.json") and not is_regular_file(folder / "link.json")


def test_a_linked_log_or_lock_is_never_followed(tmp_path):
    """studio_job.log / .studio_job.lock have fixed names in a folder anyone may copy in: a link there
    is neither shown (a secret elsewhere), nor appended to, nor locked."""
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2\n")
    folder = tmp_path / "run"
    folder.mkdir()
    os.symlink(secret, folder / jobs.LOG_FILE)
    assert jobs.read_log(folder) == ""
    with pytest.raises(ValueError, match="job log"):
        jobs.start_job("x", _python("print('appended')"), folder)
    assert secret.read_text() == "password=hunter2\n"
    assert not (folder / jobs.JOB_FILE).exists()  # refused before anything was recorded
    os.unlink(folder / jobs.LOG_FILE)
    os.unlink(folder / jobs.LOCK_FILE)
    os.symlink(secret, folder / jobs.LOCK_FILE)
    with pytest.raises(ValueError, match="cannot use this folder"):
        jobs.start_job("x", _python("pass"), folder)
    assert secret.read_text() == "password=hunter2\n" and not (folder / jobs.LOG_FILE).exists()


def test_job_records_from_dev_zero_or_a_fifo_are_no_job(tmp_path):
    (tmp_path / "zero").mkdir()
    os.symlink("/dev/zero", tmp_path / "zero" / jobs.JOB_FILE)
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / jobs.JOB_FILE)
    (tmp_path / "fifo" / jobs.LOG_FILE).unlink(missing_ok=True)
    os.mkfifo(tmp_path / "fifo" / jobs.LOG_FILE)
    for name in ("zero", "fifo"):  # returns at once: no MemoryError, no hang
        assert jobs.job_status(tmp_path / name) is None and jobs.read_log(tmp_path / name) == ""


def test_a_crafted_lock_link_and_pid_never_signal_another_group(tmp_path):
    """A lock that is a link to a file someone holds locked must not make stop_job trust the record's pid."""
    import fcntl
    victim = subprocess.Popen(_python("import time; time.sleep(60)"), start_new_session=True)
    held = open(tmp_path / "held.lock", "w")
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        folder = tmp_path / "run"
        folder.mkdir()
        os.symlink(tmp_path / "held.lock", folder / jobs.LOCK_FILE)
        (folder / jobs.JOB_FILE).write_text(json.dumps({"format": jobs.JOB_FORMAT, "kind": "train", "argv": [],
                                                        "started": 1.0, "pid": victim.pid, "id": "x"}))
        assert not jobs.job_status(folder).running
        assert not jobs.stop_job(folder, force=True)
        assert victim.poll() is None  # still alive
    finally:
        held.close()
        victim.kill()
        victim.wait()


def test_a_second_stop_click_sends_no_second_sigint(tmp_path):
    """A second SIGINT makes train.py abandon the save it is doing: Stop is recorded and sent once;
    force stays a kill."""
    count = tmp_path / "sigints"
    code = ("import signal, time, pathlib\np = pathlib.Path(%r)\n"
            "def on(*_):\n    p.write_text(p.read_text() + 'x' if p.exists() else 'x')\n"
            "signal.signal(signal.SIGINT, on)\nprint('ready', flush=True)\n"
            "while not p.exists(): time.sleep(0.05)\ntime.sleep(1.5)\n" % str(count))
    folder = tmp_path / "s"
    jobs.start_job("save", _python(code), folder)
    try:
        deadline = time.monotonic() + 30
        while "\nready" not in jobs.read_log(folder) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert jobs.stop_job(folder)
        assert jobs.job_status(folder).stop_asked  # recorded: the page shows "stopping"
        assert jobs.stop_job(folder)  # the second click: nothing sent
        done = jobs.wait_job(folder, timeout=30)
        assert count.read_text() == "x" and done.stop_asked
    finally:
        jobs.stop_job(folder, force=True)


def test_the_command_keeps_the_lock_when_the_wrapper_dies(tmp_path):
    folder = tmp_path / "w"
    info = jobs.start_job("sleep", _python("print('up', flush=True); import time; time.sleep(60)"), folder)
    try:
        deadline = time.monotonic() + 30
        while "\nup" not in jobs.read_log(folder) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(info.pid, signal.SIGKILL)  # the wrapper alone
        jobs.wait_job(folder, timeout=2)  # reaps it
        assert jobs.job_status(folder).running  # the command still runs and holds the lock
        with pytest.raises(jobs.JobBusyError):
            jobs.start_job("second", _python("pass"), folder)
    finally:
        os.killpg(info.pid, signal.SIGKILL)  # the group: the command too
    assert jobs.wait_job(folder, timeout=30).state == "lost"


def test_finished_wrappers_are_reaped_by_status_polls_and_the_log_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "LOG_MAX_BYTES", 10)
    folder = tmp_path / "q"
    jobs.start_job("quick", _python("print('first job output')"), folder)
    deadline = time.monotonic() + 30
    while jobs.job_status(folder).running and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    jobs.job_status(folder)  # a poll, as the page's timer does
    assert jobs._children == []  # no zombie left for the next start to collect
    jobs.start_job("quick", _python("print('second')"), folder)
    jobs.wait_job(folder, timeout=30)
    assert "first job output" in (folder / (jobs.LOG_FILE + ".1")).read_text()
    assert "first job output" not in (folder / jobs.LOG_FILE).read_text()


def test_the_job_wrapper_does_not_load_torch_or_gradio():
    code = "import sys, musicgen_trainer.app.jobs; print(sorted({'torch', 'gradio'} & set(sys.modules)))"
    out = subprocess.run(_python(code), capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
