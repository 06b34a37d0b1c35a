"""The whole pipeline, both ways, on the bundled sample: `dvc repro` in a copy of the repo, and the compiled
DAG under kfp.local. Small settings keep each run to about a minute on two cores."""

import compileall
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from chromify.config import params_from_dict

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow

SMALL = {
    "preprocess": {"size": 64, "workers": 1},
    "model": {"base_width": 8, "depth": 3},
    "train": {"max_steps": 15, "max_minutes": 0, "crop": 48, "resolution": 0, "batch_size": 8, "checkpoint_every": 0,
              "warmup_steps": 5},
    # Both gate branches are exercised by the thresholds, not by hoping training goes one way.
    "gate": {"min_psnr_gain_db": -100.0, "max_delta_cf": 1000.0},
}


def small_params(**overrides) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in {**SMALL, **overrides}.items():
        raw[section] = {**raw[section], **values}
    for section, values in overrides.items():
        raw[section] = {**raw[section], **values}
    return raw


def run(cmd, cwd, **kw):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture
def repo_copy(tmp_path):
    """A fresh git repo with the project's pipeline files, as a user's clone would have them."""
    dest = tmp_path / "repo"
    dest.mkdir()
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, dest / name)
    shutil.copytree(ROOT / ".dvc", dest / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp", "config.local"))
    shutil.copytree(ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "params.yaml").write_text(yaml.safe_dump(small_params(), sort_keys=False))
    shutil.copy(ROOT / ".gitignore", dest / ".gitignore")
    run(["git", "init", "-q"], dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], dest)
    return dest


def test_dvc_repro_end_to_end_then_unchanged_then_params_flow(repo_copy):
    out = run(["dvc", "repro"], repo_copy)
    for stage in ("ingest", "preprocess", "train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in out

    metrics = json.loads((repo_copy / "reports/metrics.json").read_text())
    gate = json.loads((repo_copy / "reports/gate.json").read_text())
    ingest = json.loads((repo_copy / "reports/ingest.json").read_text())
    assert ingest["accepted"] == 11 and ingest["rejected_grayscale"] == 1
    assert metrics["images"] == 2
    assert 15.0 < metrics["gray"]["psnr"] < 40.0 and metrics["gray"]["colourfulness"] < 1.0
    assert metrics["candidate"]["colourfulness"] > 1.0  # the model adds colour where gray has none
    assert metrics["psnr_gain_db"] == pytest.approx(metrics["candidate"]["psnr"] - metrics["gray"]["psnr"])
    assert gate["passed"] is True and gate["champion_id"] is None
    assert "<img src=\"data:image/png;base64," in (repo_copy / "reports/gallery.html").read_text()
    registry = repo_copy / "models/registry/chromify-colorizer"
    assert json.loads((registry / "aliases.json").read_text()) == {"champion": 1}
    record = json.loads((registry / "v0001/record.json").read_text())
    assert record["metrics"]["candidate"]["psnr"] == metrics["candidate"]["psnr"]
    assert len(record["data_manifest_sha256"]) == 64 and record["params"]["train"]["max_steps"] == 15

    # Python's bytecode beside the code (not written here: the tests' environment may forbid it) is not the code:
    # folders of code are stage deps, and their .pyc files changed the deps' hashes on any touch of a source file.
    compileall.compile_dir(str(repo_copy / "src"), quiet=1)
    assert list((repo_copy / "src/chromify/models/__pycache__").glob("*.pyc"))
    # nor are an editor's swap and backup files (a vim session open on a module re-ran train, evaluate, register)
    models = repo_copy / "src/chromify/models"
    (models / ".unet.py.swp").write_bytes(b"vim swap")
    (models / "unet.py~").write_bytes((models / "unet.py").read_bytes() + b"# an edit being made\n")
    t0 = time.monotonic()
    again = run(["dvc", "repro"], repo_copy)
    unchanged_s = time.monotonic() - t0
    # ingest re-lists its source (always_changed); nothing in it changed, so every other stage is skipped
    assert "Running stage 'ingest'" in again and again.count("Running stage") == 1
    for stage in ("preprocess", "train", "evaluate", "register"):
        assert f"Stage '{stage}' didn't change, skipping" in again
    print(f"second dvc repro: {unchanged_s:.1f} s")

    # A params change reruns train and what follows, not preprocess (ingest re-lists, finding nothing new); the
    # new model is gated against the first one (the champion) and, passing, becomes version 2.
    exp = run(["dvc", "exp", "run", "-S", "train.epochs=2"], repo_copy)
    assert "Running stage 'train'" in exp and "Running stage 'evaluate'" in exp
    assert "Running stage 'preprocess'" not in exp
    gate2 = json.loads((repo_copy / "reports/gate.json").read_text())
    assert gate2["champion_id"] == record["model_id"]
    assert {c["name"] for c in gate2["checks"]} >= {"psnr_vs_champion", "delta_cf_vs_champion"}
    listing = run(["chromify", "models", "list"], repo_copy)
    assert "v1" in listing and (("v2" in listing) == gate2["passed"])
    # each experiment keeps its own scores for `dvc exp show` (reports/ is not in git: DVC's cache holds them)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo_copy))
    exp = [e["revs"][0]["data"] for e in shown[1]["experiments"]][0]  # the one experiment, under the baseline
    latest = json.loads((repo_copy / "reports/metrics.json").read_text())
    assert exp["metrics"]["reports/metrics.json"]["data"]["candidate"]["psnr"] == latest["candidate"]["psnr"]
    assert exp["metrics"]["reports/ingest.json"]["data"]["accepted"] == 11


def test_an_interrupted_dvc_repro_resumes_training(repo_copy):
    # SIGTERM mid-training (a cancelled job, a closed laptop): the next `dvc repro` carries on from the checkpoint,
    # because dvc.yaml keeps the model folder (persist) where DVC would otherwise delete it before the rerun.
    import signal

    from chromify.train.checkpoint import load_checkpoint

    # The first checkpoint comes early (step 2), so that the kill lands mid-training even on a loaded machine
    # (a slow one reaches fewer than 20 steps in the 15 s budget, and then its first checkpoint is the final one).
    train = {"max_steps": 0, "max_minutes": 0.25, "checkpoint_every": 2, "val_every_steps": 10**6, "log_every": 1}
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(small_params(train=train), sort_keys=False))
    run(["dvc", "repro", "preprocess"], repo_copy)
    proc = subprocess.Popen(["dvc", "repro", "train"], cwd=repo_copy, env={**os.environ, "PATH": f"{BIN}:"
                            f"{os.environ['PATH']}"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    model = repo_copy / "models" / "candidate"
    deadline = time.monotonic() + 120
    while not (model / "checkpoint.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)  # dvc and the training under it, as a terminal's job control would
    out = proc.communicate(timeout=60)[0]
    assert "stopped by SIGTERM at step" in out, out[-3000:]
    stopped = load_checkpoint(model)["schedule"]["step"]
    again = run(["dvc", "repro", "train"], repo_copy)
    assert f"resuming at step {stopped} from models/candidate/checkpoint.pt" in again
    assert load_checkpoint(model)["schedule"]["step"] > stopped
    # the curves span the resume: DVC kept them (persist), from the first logged step on
    rows = (repo_copy / "dvclive/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]
    logged = [int(r.split("\t")[0]) for r in rows]
    assert logged[0] <= stopped < logged[-1] and logged == sorted(set(logged))


def test_dvc_repro_sees_photos_added_to_the_source_folder(repo_copy, tmp_path):
    # No dep can tell DVC that a folder (or bucket) gained photos: before always_changed, `dvc repro` skipped
    # ingest and trained on the old manifest.
    from skimage import data

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "chelsea", "coffee"):
        Image.fromarray(getattr(data, name)()[..., :3]).save(photos / f"{name}.png")
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(small_params(ingest={"source": str(photos)}),
                                                          sort_keys=False))
    run(["dvc", "repro", "ingest"], repo_copy)
    assert json.loads((repo_copy / "reports/ingest.json").read_text())["accepted"] == 3
    Image.fromarray(data.rocket()).save(photos / "rocket.png")
    run(["dvc", "repro", "ingest"], repo_copy)
    assert json.loads((repo_copy / "reports/ingest.json").read_text())["accepted"] == 4


def test_dvc_stages_use_the_folders_params_yaml_names(repo_copy):
    # ingest.out_dir is where ingest writes and where preprocess (and register's lineage) read, under dvc too
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(small_params(ingest={"out_dir": "photos_in"}),
                                                          sort_keys=False))
    out = run(["dvc", "repro", "preprocess"], repo_copy)
    assert "Running stage 'ingest'" in out and "Running stage 'preprocess'" in out
    assert (repo_copy / "photos_in" / "manifest.parquet").is_file() and not (repo_copy / "data" / "raw").exists()
    from chromify.loader import ShardSet

    assert sum(len(ShardSet(repo_copy / "data/processed" / s)) for s in ("train", "val", "test")) == 11


def test_a_changed_preprocess_param_rebuilds_the_shards_under_dvc(repo_copy):
    # DVC's run cache (3.x) restores a stage whose params are a whole section by the first result it stored: the
    # 64 px shards came back for size 32 while dvc.lock said 32, and nothing ever rebuilt them.
    from chromify.loader import ShardSet

    def shards_at(size: int) -> str:
        (repo_copy / "params.yaml").write_text(yaml.safe_dump(small_params(preprocess={"size": size, "workers": 1}),
                                                              sort_keys=False))
        out = run(["dvc", "repro", "preprocess"], repo_copy)
        train = ShardSet(repo_copy / "data/processed/train")  # checks each shard against the index
        assert train.size == size and len(train) == 8, out
        return out

    shards_at(64)
    shards_at(32)
    back = shards_at(64)
    assert "Running stage 'preprocess'" in back


def test_kfp_local_dag_registers_only_when_the_gate_passes(tmp_path, monkeypatch):
    from pipelines.run import run_local

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{BIN}:{os.environ['PATH']}")
    registry = tmp_path / "registry"
    p = params_from_dict(small_params(register={"registry_dir": str(registry)}))
    first = run_local(p, tmp_path / "run1")
    assert (first["gate"], first["registered"]) == ("passed", 1)  # said, not left to kfp's log
    assert Path(first["run"]).parent == tmp_path / "run1"
    reg = registry / "chromify-colorizer"
    assert json.loads((reg / "aliases.json").read_text()) == {"champion": 1}
    record = json.loads((reg / "v0001/record.json").read_text())
    assert record["gate"]["passed"] is True
    evaluated = json.loads(next((tmp_path / "run1").glob("*/evaluate/executor_output.json")).read_text())
    logged = evaluated["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert logged["candidate_psnr"] == pytest.approx(record["metrics"]["candidate"]["psnr"])
    assert logged["psnr_gain_db"] == pytest.approx(logged["candidate_psnr"] - logged["gray_psnr"])
    assert evaluated["parameterValues"]["Output"] is True
    registered = json.loads(next((tmp_path / "run1").glob("*/register/executor_output.json")).read_text())
    assert registered["parameterValues"]["Output"] == 1
    gallery = next((tmp_path / "run1").glob("*/evaluate/gallery")).read_text()
    assert gallery.count("data:image/png;base64,") >= 6
    # the training reports travel with the model, and evaluate draws the curves from them, as under dvc repro
    trained = next((tmp_path / "run1").glob("*/train/model"))
    history = json.loads((trained / "reports" / "train_history.json").read_text())
    assert history["steps"][-1]["step"] == record["params"]["train"]["max_steps"]
    assert (trained / "reports" / "decode_search.json").is_file()
    assert next((tmp_path / "run1").glob("*/evaluate/reports/figures/training_curves.png")).stat().st_size > 0

    # Second run: another seed (so another model) and a bar no model can clear → gated out, not registered.
    strict = dataclasses.replace(p, base=dataclasses.replace(p.base, seed=7),
                                 gate=dataclasses.replace(p.gate, min_psnr_gain_db=50.0))
    second = run_local(strict, tmp_path / "run2")
    assert second["gate"].startswith("failed: PSNR gain over gray") and second["registered"] is None
    assert sorted(d.name for d in reg.glob("v*")) == ["v0001"]
    assert json.loads((reg / "aliases.json").read_text()) == {"champion": 1}
    gate_files = list((tmp_path / "run2").glob("*/evaluate/gate"))
    gate = json.loads(gate_files[0].read_text())
    assert gate["passed"] is False and gate["champion_id"] == record["model_id"]
    assert any("PSNR gain over gray" in r for r in gate["reasons"])
    assert not list((tmp_path / "run2").glob("*/register"))
