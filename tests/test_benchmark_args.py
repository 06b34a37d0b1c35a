"""The benchmark scripts refuse bad arguments in one line (`prog: error: …`, exit 2) before any work, never with a
traceback, an endless loop or a silent fallback."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def run_script(script: Path, *args: str, cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def last_error(proc: subprocess.CompletedProcess) -> str:
    """The one error line, after argparse's usage lines when there are any; no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr.strip().splitlines()[-1]


@pytest.fixture
def without_shared(tmp_path: Path) -> Path:
    """A copy of benchmarks/ in a checkout whose ../shared is not there (the scripts' default photo folder)."""
    shutil.copytree(BENCHMARKS, tmp_path / "repo" / "benchmarks", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path / "repo" / "benchmarks"


# quality.py: "--methods none" would be refused too, after the argument under test (before any training)
QUALITY = ["--photos", "{tmp}", "--methods", "none"]


@pytest.mark.parametrize(("script", "args", "error"), [
    ("quality.py", [*QUALITY, "--decodes", "0.38:0.5,0:0"], "argument --decodes: 0:0: temperature must be > 0"),
    ("quality.py", [*QUALITY, "--decodes", "0.38:0:-1"], "argument --decodes: 0.38:0:-1: chroma gain must be > 0"),
    ("quality.py", [*QUALITY, "--floors", "0,inf"], "argument --floors: inf: must be a finite number"),
    ("quality.py", [*QUALITY, "--set", "train.crop=[1"],
     "--set 'train.crop=[1': the value is not valid YAML (while parsing a flow sequence)"),
    ("preprocess.py", ["{tmp}", "--sizes", "256,abc"], "argument --sizes: abc: not a valid positive int"),
    ("preprocess.py", ["{tmp}", "--sizes", "0"], "argument --sizes: 0: must be >= 1"),
    ("serve.py", ["--clients", "0"], "argument --clients: 0: must be >= 1"),
    ("serve.py", ["--params", "no-such-params.yaml"], "no-such-params.yaml: no such params file"),
    ("data_scaling.py", ["--fractions", "0.5,abc"], "argument --fractions: abc: not a number"),
    ("data_scaling.py", ["--fractions", "0"], "argument --fractions: 0: must be in (0, 1]"),
    ("data_scaling.py", ["--params", "no-such-params.yaml", "--data", "no-such-data"],
     "no-such-params.yaml: no such params file"),
    # refused before any work: a table of zero rates, a default silently kept, or a server started only to refuse
    ("loader.py", ["{tmp}", "--seconds", "0"], "argument --seconds: 0: must be > 0"),
    ("serve.py", ["--concurrency", "0"], "argument --concurrency: 0: must be >= 1"),
    ("serve.py", ["--render-size", "8"], "argument --render-size: 8: must be >= 16"),
    ("data_scaling.py", ["--minutes", "-1"], "argument --minutes: -1: must be > 0"),
    ("data_scaling.py", ["--max-steps", "-3"], "argument --max-steps: -3: must be >= 0"),
    ("train.py", ["--threads", "-1"], "argument --threads: -1: must be >= 0"),
    ("train.py", ["--base-width", "0"], "argument --base-width: 0: must be >= 1"),
    ("train.py", ["--warmup", "-2"], "argument --warmup: -2: must be >= 0"),
])
def test_bad_argument_is_one_line(tmp_path: Path, script: str, args: list[str], error: str) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert last_error(run_script(BENCHMARKS / script, *args, cwd=tmp_path)) == f"{script}: error: {error}"


@pytest.mark.parametrize("script", ["loader.py", "preprocess.py", "quality.py"])
def test_missing_default_photo_folder_is_named(without_shared: Path, script: str) -> None:
    photos = without_shared.parents[1] / "shared" / "data" / "photos"
    error = last_error(run_script(without_shared / script, *(["--methods", "none"] if script == "quality.py" else [])))
    assert error == (f"quality.py: error: no photo folder at {photos}: pass --photos DIR" if script == "quality.py"
                     else f"{script}: error: argument folder: {photos}: no such folder")


def test_loader_refuses_fewer_photos_than_a_batch(tmp_path: Path) -> None:
    from skimage import data

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "chelsea"):
        Image.fromarray(getattr(data, name)()).resize((96, 96)).save(photos / f"{name}.jpg")
    proc = run_script(BENCHMARKS / "loader.py", str(photos), "--batch", "4", "--size", "32", "--seconds", "0.1")
    assert last_error(proc) == (f"loader.py: error: 2 photos from {photos} in the train split, fewer than --batch 4: "
                                "pass a smaller --batch or a bigger folder")


def test_evaluate_speed_says_a_folder_has_no_photos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import evaluate_speed

    images, source = evaluate_speed.test_photos(1, tmp_path)
    assert len(images) == 1 and source.endswith(f"({tmp_path} has no .jpg, .jpeg or .png photos)")


def test_preprocess_cpu_time_is_not_in_clock_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):  # preprocess sets them on import: not for other tests
        monkeypatch.setenv(key, "1")
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import preprocess

    def spin() -> None:  # 2 ms of work, a fifth of the 10 ms tick os.times counts in
        end = time.perf_counter() + 0.002
        while time.perf_counter() < end:
            pass

    wall, cpu = preprocess.timed(spin)
    ticks = cpu / 0.01  # other threads of this process may add to cpu, but not in whole ticks
    assert wall >= 0.002 and cpu > 0 and abs(ticks - round(ticks)) > 1e-6


def test_argument_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from cli_args import comma_list, decode, positive_int

    assert comma_list(positive_int)("256, 128,") == [256, 128]
    assert comma_list(decode, empty_ok=True)("") == []
    assert decode("0.38:-0.5") == (0.38, -0.5) and decode("0.2:0.6:1.2") == (0.2, 0.6, 1.2)
    for bad in ("0:0.5", "0.38:nan", "0.38:0:0", "0.38", "1:2:3:4", "a:b"):
        with pytest.raises(argparse.ArgumentTypeError):
            decode(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        comma_list(positive_int)(",")
