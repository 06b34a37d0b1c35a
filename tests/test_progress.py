"""Progress in a log (Vertex AI, Kubeflow, CI, `2> log`): plain lines at most every LOG_EVERY_S, never silence;
on a terminal: the live bar."""

from __future__ import annotations

import io
import os
import re

import pytest
from PIL import Image

from chromify import progress
from chromify.config import IngestParams
from chromify.ingest import ingest
from chromify.progress import Progress
from chromify.train.report import TrainReport


def test_a_log_gets_a_plain_line_when_one_is_due_and_the_last_figure_at_the_end():
    log = io.StringIO()
    bar = Progress(1000, "ingest", stream=log)
    bar.update(10)  # the first half minute has not passed: nothing yet
    assert log.getvalue() == ""
    bar._clock._last -= progress.LOG_EVERY_S
    bar.update(240)
    bar.update(1)  # not due again so soon
    bar.update(749)
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in log.getvalue()
    assert re.fullmatch(r"chromify: ingest 250/1,000 img \(25 %\), [\d,.]+ img/s", lines[0])
    assert lines[1].startswith("chromify: ingest 1,000/1,000 img (100 %)")


def test_a_resumed_job_reports_the_rate_of_this_run():
    """900 of 1,000 done by an earlier run: 10 more in 10 s is 1 img/s, not 91."""
    log = io.StringIO()
    bar = Progress(1000, "preprocess 1/1", initial=900, stream=log)
    bar._clock.start -= 10.0
    bar._clock._last -= progress.LOG_EVERY_S
    bar.update(10)
    assert re.fullmatch(r"chromify: preprocess 1/1 910/1,000 img \(91 %\), 1\.0 img/s", log.getvalue().strip())


def test_a_short_job_in_a_log_prints_nothing():
    log = io.StringIO()
    bar = Progress(5, "colorize", stream=log)
    bar.update(5)
    bar.close()
    assert log.getvalue() == ""


def test_a_terminal_gets_the_live_bar():
    parent, child = os.openpty()
    with os.fdopen(child, "w") as tty:
        bar = Progress(4, "preprocess 1/1", initial=1, stream=tty)
        bar.update(3)
        bar.close()
    chunks = []
    while True:  # a pty hands its output over in pieces; once the other end is closed and drained: EIO
        try:
            chunk = os.read(parent, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(parent)
    shown = b"".join(chunks).decode()
    assert "preprocess 1/1" in shown and "4/4" in shown and "\r" in shown


def test_ingest_into_a_log_reports_its_progress(tmp_path, photos, monkeypatch, capsys):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)  # every update is due: the lines a long ingest gets
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, rgb in photos.items():
        Image.fromarray(rgb).save(folder / f"{name}.png")
    ingest(IngestParams(source=str(folder), out_dir=str(tmp_path / "raw")), tmp_path / "reports", workers=1,
           progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("chromify: ingest 1/3 img (33 %)")
    assert lines[-1].startswith("chromify: ingest 3/3 img (100 %)")


@pytest.mark.parametrize("due", [False, True])
def test_training_in_a_log_prints_a_step_line_when_due_and_every_validation(due, monkeypatch, capsys):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0 if due else 1e9)
    report = TrainReport(None, progress=True, live=False)
    for step in (1, 2):
        report("step", {"step": step, "loss": 0.5, "images_per_s": 80.0, "lr": 0.001})
    import numpy as np

    no_samples = {"lab_truth": np.zeros((0, 4, 4, 3)), "ab_pred": np.zeros((0, 4, 4, 2))}
    report("epoch", {"epoch": 1, "val_l1": 0.1, "val_psnr_ab": 30.0, "samples": no_samples})
    err = capsys.readouterr().err
    assert "\r" not in err
    steps = [line for line in err.splitlines() if line.startswith("chromify: train step")]
    assert len(steps) == (2 if due else 0)
    assert err.splitlines()[-1] == "epoch 1: val L1 0.1000, val PSNR(ab) 30.00 dB"
    report("step", {"step": 3, "loss": 0.25, "images_per_s": 90.0, "lr": 0.001})
    report("end", {"history": [], "samples": no_samples})
    # the last step is in the log whether or not a line was due: a short run shows its loss
    assert capsys.readouterr().err.splitlines()[-1] == "chromify: train step      3  loss 0.2500  90.0 img/s"
