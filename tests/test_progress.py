"""Progress (promptbias.progress): a bar on a terminal, plain periodic lines in a log; results unchanged."""

from __future__ import annotations

import io
import re

import pytest

from promptbias.data.download import download_file
from promptbias.errors import UserError
from promptbias.progress import log_interval, track
from tests.workspace import Workspace

ANSI = re.compile(r"\x1b\[")
# tqdm's meter without the bar: "<desc>: <pct>% <n>/<total> [<elapsed><<remaining>, <rate>]"
METER = re.compile(
    r"^(?P<desc>.+): +\d+% (?P<n>\S+)/(?P<total>\S+) \[\d\d:\d\d<[^,]+, +(?P<rate>[^\s,\]]+/[^\s,\]]+)[,\]]"
)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _rate_in(rate: str, unit: str) -> bool:
    """A meter's rate names ``unit``: tqdm writes ``<n><unit>/s``, or ``<n>s/<unit>`` once a step takes over a
    second (a slow or loaded machine), so a test asserting the unit must accept both forms."""
    return rate.endswith(f"{unit}/s") or rate.endswith(f"s/{unit}")


def _plain_lines(text: str) -> list[str]:
    """The lines of a log stream; fails on anything a terminal would interpret."""
    assert "\r" not in text and not ANSI.search(text), repr(text)
    assert text.endswith("\n"), repr(text)
    return text[:-1].split("\n")


def test_a_log_stream_gets_plain_lines_and_a_final_summary():
    log = io.StringIO()
    seen = list(track(range(5), desc="decode demo", unit="img", interval=0, file=log))
    assert seen == [0, 1, 2, 3, 4]  # the items, in order
    lines = _plain_lines(log.getvalue())
    assert len(lines) >= 2  # interval 0: periodic lines, then the final one
    meters = [METER.match(line) for line in lines]
    assert all(meters), lines
    assert all(m["desc"] == "decode demo" for m in meters)
    final = meters[-1]
    assert (final["n"], final["total"]) == ("5", "5") and _rate_in(final["rate"], "img")


def test_the_interval_bounds_the_lines_to_the_final_one():
    log = io.StringIO()
    bar = track(range(50), desc="probe", unit="probe", interval=1e9, file=log)
    for _ in bar:
        bar.set_postfix(loss=0.5)  # a refresh per step: still no line before the interval is up
    lines = _plain_lines(log.getvalue())
    assert len(lines) == 1 and METER.match(lines[0])["n"] == "50", lines


def test_an_unknown_total_counts_items():
    log = io.StringIO()
    list(track(iter(range(3)), desc="fetch", interval=1e9, file=log))
    assert len(_plain_lines(log.getvalue())) == 1
    assert re.match(r"^fetch: 3it \[\d\d:\d\d, .+/s\]$", log.getvalue().strip()), log.getvalue()


def test_a_download_shows_unit_scaled_bytes_per_attempt(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PROMPTBIAS_PROGRESS_INTERVAL", "1e9")  # the final line of each attempt only
    body = bytes(range(256)) * 12_000  # 3.07 MB
    server.cut.add("/f.bin")  # the first attempt stops half-way; the second resumes with a Range request
    out = download_file([server.add("/f.bin", body)], tmp_path / "f.bin", backoff=0)
    assert out.read_bytes() == body
    cut, resumed = (METER.match(line) for line in _plain_lines(capsys.readouterr().out))
    assert (cut["desc"], cut["total"]) == ("f.bin", "3.07M") and cut["n"] != cut["total"]  # how much: timing
    assert (resumed["desc"], resumed["n"], resumed["total"]) == ("f.bin", "3.07M", "3.07M")
    assert _rate_in(resumed["rate"], "B")


def test_a_terminal_gets_a_bar():
    tty = _Terminal()
    list(track(range(5), desc="decode demo", unit="img", file=tty))
    out = tty.getvalue()
    assert "\r" in out and "decode demo:" in out and "|" in out and "0/5" in out
    assert "\n" not in out  # redrawn in place, then erased (leave=False)


def test_disabled_progress_writes_nothing(monkeypatch):
    log = io.StringIO()
    assert list(track(range(3), desc="x", enabled=False, interval=0, file=log)) == [0, 1, 2]
    monkeypatch.setenv("PROMPTBIAS_PROGRESS", "0")
    assert list(track(range(3), desc="x", interval=0, file=log)) == [0, 1, 2]
    assert log.getvalue() == ""


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("PROMPTBIAS_PROGRESS_INTERVAL", "0")
    assert log_interval() == 0.0
    monkeypatch.setenv("PROMPTBIAS_PROGRESS_INTERVAL", "soon")
    with pytest.raises(UserError, match="PROMPTBIAS_PROGRESS_INTERVAL"):
        log_interval()


class _Clock:
    """A stand-in for tqdm's clock: time moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("seconds_per_step", "rate"), [(0.25, r"4\.00step/s"), (2.5, r"2\.50s/step")])
def test_lines_follow_the_clock_not_the_speed_of_the_machine(monkeypatch, seconds_per_step, rate):
    """The periodic lines and the final rate depend on the clock only: a fast and a slow machine (or a loaded
    one, where one step takes seconds and tqdm writes ``s/step``) give the same lines for the same clock."""
    import tqdm.std

    clock = _Clock()
    monkeypatch.setattr(tqdm.std, "time", clock)
    log = io.StringIO()
    bar = track(range(8), desc="train", unit="step", interval=4 * seconds_per_step, file=log)
    for _ in bar:
        clock.now += seconds_per_step
    lines = _plain_lines(log.getvalue())
    meters = [METER.match(line) for line in lines]
    assert all(meters), lines
    # a line when 4 steps' time has passed since the last (steps 4 and 8 are reached only after the body
    # of step 4/8 ran, so the counts are the ones seen at the next update), then the final line
    assert [m["n"] for m in meters] == ["4", "8", "8"], lines
    assert re.fullmatch(rate, meters[-1]["rate"]) and _rate_in(meters[-1]["rate"], "step"), lines


# ------------------------------------------------------------------------------- real commands


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return Workspace.create(tmp_path_factory.mktemp("ws") / "base", datasets=["demo_shapes"])


def _progress_lines(stdout: str, desc: str) -> list[str]:
    lines = _plain_lines(stdout)
    return [line for line in lines if line.startswith(f"{desc}:") and METER.match(line)]


def test_cache_prints_progress_lines_to_stdout_and_writes_the_same_bytes(workspace, tmp_path):
    ws = workspace.copy(tmp_path / "cache")
    cache = ws.path / "data" / "cache" / "demo_shapes"
    quiet = ws.run("cache", "demo_shapes", env_extra={"PROMPTBIAS_PROGRESS": "0"})
    assert quiet.returncode == 0 and quiet.stdout.startswith("ok: ") and quiet.stderr == "", quiet.stderr
    before = {p.name: p.read_bytes() for p in sorted(cache.iterdir())}
    res = ws.run("cache", "demo_shapes", env_extra={"PROMPTBIAS_PROGRESS_INTERVAL": "0"})
    assert res.returncode == 0, res.stderr
    lines = _progress_lines(res.stdout, "decode demo_shapes")
    assert len(lines) >= 2 and lines == _plain_lines(res.stdout)[:-1], res.stdout  # stdout: progress, then ok
    final = METER.match(lines[-1])
    assert final["n"] == final["total"] and int(final["n"]) > 0
    assert _plain_lines(res.stdout)[-1].startswith("ok: ") and res.stderr == ""  # stderr: nothing on success
    assert {p.name: p.read_bytes() for p in sorted(cache.iterdir())} == before


def test_evaluate_prints_progress_lines_and_the_same_metrics(workspace, tmp_path):
    args = ("evaluate", "--dataset", "demo_shapes", "--method", "zeroshot", "--seed", "1")
    quiet_ws, shown_ws = workspace.copy(tmp_path / "quiet"), workspace.copy(tmp_path / "shown")
    quiet = quiet_ws.run(*args, env_extra={"PROMPTBIAS_PROGRESS": "0"})
    shown = shown_ws.run(*args, env_extra={"PROMPTBIAS_PROGRESS_INTERVAL": "0"})
    assert quiet.returncode == shown.returncode == 0, quiet.stderr + shown.stderr
    for split in ("test", "val"):
        lines = _progress_lines(shown.stdout, f"demo_shapes/zeroshot/seed1 {split}")
        assert lines and METER.match(lines[-1])["n"] == METER.match(lines[-1])["total"], shown.stdout
    assert shown.stdout.splitlines()[-1] == quiet.stdout.strip()  # the result line, after the progress
    metrics = "metrics/demo_shapes/zeroshot/seed1.json"
    assert (shown_ws.path / metrics).read_bytes() == (quiet_ws.path / metrics).read_bytes()


def test_probe_prints_progress_lines_to_stdout(workspace, tmp_path):
    ws = workspace.copy(tmp_path / "probe")
    res = ws.run(
        "probe", "attention_stats", "--dataset", "demo_shapes", "--method", "zeroshot", "--seed", "1",
        env_extra={"PROMPTBIAS_PROGRESS_INTERVAL": "1e9"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    (line,) = _progress_lines(res.stdout, "probe demo_shapes/zeroshot/seed1")
    meter = METER.match(line)
    assert (meter["n"], meter["total"]) == ("1", "1") and _rate_in(meter["rate"], "probe"), line


def test_pretraining_prints_progress_lines_and_learns_the_same(capsys, monkeypatch):
    import torch
    import yaml

    from promptbias.config import deep_merge
    from promptbias.demo.pretrain import demo_settings, pretrain
    from tests.workspace import REPO

    demo = {"pretrain_steps": 3, "batch_size": 8, "warmup_steps": 1, "pretrain_threads": 1}
    settings = demo_settings(deep_merge(yaml.safe_load((REPO / "params.yaml").read_text()), {"demo": demo}))
    monkeypatch.setenv("PROMPTBIAS_PROGRESS_INTERVAL", "0")
    threads = torch.get_num_threads()
    try:
        quiet_model, quiet = pretrain(settings, show_progress=False)
        assert capsys.readouterr().out == ""
        model, record = pretrain(settings)
    finally:
        torch.set_num_threads(threads)
    lines = _progress_lines(capsys.readouterr().out, "pretrain demo CLIP")
    assert METER.match(lines[-1])["n"] == "3" and "loss=" in lines[-1], lines
    assert record["loss"] == quiet["loss"]  # the same batches, augmentations and steps
    state, quiet_state = model.state_dict(), quiet_model.state_dict()
    assert all(torch.equal(state[k], quiet_state[k]) for k in state)


def test_extracting_an_archive_and_hashing_a_whole_dataset_show_progress(tmp_path, capsys):
    import tarfile

    from promptbias.data.archive import safe_extract
    from promptbias.identity import sha256_files

    names = [f"images/{i:04d}.txt" for i in range(1000)]
    src = tmp_path / "src"
    for name in names:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(name)
    with tarfile.open(tmp_path / "data.tar", "w") as tar:
        tar.add(src / "images", arcname="images")
    capsys.readouterr()
    safe_extract(tmp_path / "data.tar", tmp_path / "out")
    digests = sha256_files(tmp_path / "out", names)
    lines = _plain_lines(capsys.readouterr().out)  # pytest's capture is not a terminal: log lines
    meters = {METER.match(line)["desc"]: METER.match(line)["total"] for line in lines}
    assert meters == {"extract data.tar": "1001", "sha256 out": "1000"}, lines  # (the folder is a member)
    assert sha256_files(tmp_path / "out", names[:999]) == digests[:999]
    assert capsys.readouterr().out == ""  # a few-shot set's images (under 1000 files): no progress line
