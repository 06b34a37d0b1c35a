"""Lab shards: colour accuracy against skimage, index and checksums, partitions, and resuming after kill -9."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chromify import shards
from chromify.config import IngestParams
from chromify.decode import load_square
from chromify.errors import DataError
from chromify.ingest import ingest, read_manifest
from chromify.lab import dequantise_lab, quantise_lab, rgb_to_lab


def samples_by_sha(out_dir: Path) -> dict[str, np.ndarray]:
    """Every stored sample, keyed by its photo's sha256 (the sidecars list them in shard order)."""
    found = {}
    for split in shards.SPLITS:
        for s in shards.read_index(out_dir / split)["shards"]:
            npy = out_dir / split / s["file"]
            images = json.loads(npy.with_suffix(".json").read_text())["images"]
            found.update(zip(images, np.load(npy), strict=True))
    return found


def test_lab_table_matches_the_float_pipeline():
    rgb = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    diff = np.abs(shards.rgb_to_lab8(rgb).astype(int) - quantise_lab(rgb_to_lab(rgb)).transpose(2, 0, 1))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # only colours at a rounding tie may differ


def test_shards_lab_within_half_delta_e_of_skimage(tmp_path, photos):
    from skimage.color import rgb2lab

    src = tmp_path / "photos"
    src.mkdir()
    for name, rgb in photos.items():
        Image.fromarray(rgb).save(src / f"{name}.png")
    Image.fromarray(photos["chelsea"][:, ::-1]).save(src / "chelsea_flipped.jpg", quality=95)  # the JPEG path
    raw, out = tmp_path / "raw", tmp_path / "out"
    ingest(IngestParams(source=str(src), out_dir=str(raw), val_fraction=0, test_fraction=0), tmp_path / "rep")
    rows = read_manifest(raw)
    assert {r["decoder"] for r in rows} == {"pil", "jpeg-turbo"}
    shards.preprocess(rows, raw, out, 128, workers=1)
    shards.write_index(out, 128)
    stored = samples_by_sha(out)

    delta_e = []
    for r in rows:
        rgb = load_square((raw / r["path"]).read_bytes(), r["uri"], 128, r["decoder"], r["orientation"])
        lab = dequantise_lab(stored[r["sha256"]].transpose(1, 2, 0))
        delta_e.append(np.sqrt(((lab - rgb2lab(rgb)) ** 2).sum(-1)).ravel())
    delta_e = np.concatenate(delta_e)
    # Storing a and b in whole units and L in steps of 100/255 costs up to sqrt(0.5² + 0.5² + 0.196²) = 0.73 ΔE
    # on a pixel, about 0.36 on average; the conversion itself adds next to nothing.
    assert delta_e.mean() < 0.5
    assert np.percentile(delta_e, 99) < 0.7 and delta_e.max() < 0.75


def test_index_checksums_and_repair(tmp_path, derived_raw):
    rows = read_manifest(derived_raw)
    mb = 20 * 3 * 32 * 32 / 2**20
    first = shards.preprocess(rows, derived_raw, tmp_path, 32, mb, workers=2)
    indexes = shards.write_index(tmp_path, 32)
    assert first["shards_written"] == sum(len(i["shards"]) for i in indexes.values()) > 3
    train = indexes["train"]
    assert train["count"] == sum(r["split"] == "train" for r in rows)
    assert (train["shape"], train["dtype"], train["channels"]) == ([3, 32, 32], "uint8", ["L", "a", "b"])
    assert train["normalisation"]["L"]["scale"] == 2.55 and train["normalisation"]["a"]["offset"] == 128
    for split in shards.SPLITS:
        shards.verify_shards(tmp_path / split)

    victim = tmp_path / "train" / train["shards"][1]["file"]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(DataError, match="checksum"):
        shards.verify_shards(tmp_path / "train")
    again = shards.preprocess(rows, derived_raw, tmp_path, 32, mb, workers=2)
    assert (again["shards_written"], again["shards_skipped"]) == (1, first["shards_written"] - 1)
    assert shards.write_index(tmp_path, 32) == indexes  # the repaired shard is byte for byte the same


def test_partitions_cover_the_same_samples(tmp_path, derived_raw, small_shards):
    rows = read_manifest(derived_raw)
    mb = 10 * 3 * 32 * 32 / 2**20
    shards.preprocess(rows, derived_raw, tmp_path, 32, mb, workers=1, partition=shards.Partition(0, 2))
    assert shards.write_index(tmp_path, 32, partitions=2) == {}  # 1/2 not done: no index yet
    assert not (tmp_path / "train" / "index.json").exists()
    shards.preprocess(rows, derived_raw, tmp_path, 32, mb, workers=1, partition=shards.Partition(1, 2))
    indexes = shards.write_index(tmp_path, 32, partitions=2)
    assert sum(i["count"] for i in indexes.values()) == len(rows)

    mine, whole = samples_by_sha(tmp_path), samples_by_sha(small_shards)
    assert mine.keys() == whole.keys()
    assert all(np.array_equal(mine[k], whole[k]) for k in whole)
    # the same shards in the same order, so training reads the same samples in the same order as from one
    # partition (every n-th photo per partition once gave a KFP run another model than `dvc repro`'s)
    from chromify.loader import ShardSet

    for split, index in indexes.items():
        one = json.loads((small_shards / split / "index.json").read_text())["shards"]
        assert [(e["count"], e["sha256"]) for e in index["shards"]] == [(e["count"], e["sha256"]) for e in one]
    parted, single = ShardSet(tmp_path / "train"), ShardSet(small_shards / "train")
    assert len(parted.arrays) > 2
    for epoch in (0, 1):
        assert np.array_equal(parted.gather(parted.order(7, epoch)), single.gather(single.order(7, epoch)))


def test_partitions_cut_from_different_manifests_are_not_indexed_together(tmp_path, derived_raw):
    """An ingest between two partitions' runs: the index held some photos twice and left others out, silently."""
    import re

    rows = read_manifest(derived_raw)
    mb = 10 * 3 * 32 * 32 / 2**20
    shards.preprocess(rows, derived_raw, tmp_path, 32, mb, workers=1, partition=shards.Partition(0, 2))
    fewer = rows[:-3]  # the folder lost three photos, and ingest ran again
    shards.preprocess(fewer, derived_raw, tmp_path, 32, mb, workers=1, partition=shards.Partition(1, 2))
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}: partition 0/2 was preprocessed from another "
                                                  "manifest than the latest (ingest ran in between)")):
        shards.write_index(tmp_path, 32, partitions=2)
    assert not (tmp_path / "train" / "index.json").exists()
    shards.preprocess(fewer, derived_raw, tmp_path, 32, mb, workers=1, partition=shards.Partition(0, 2))
    indexes = shards.write_index(tmp_path, 32, partitions=2)
    assert sum(i["count"] for i in indexes.values()) == len(fewer)
    assert sorted(samples_by_sha(tmp_path)) == sorted(r["sha256"] for r in fewer)


def test_shards_do_not_depend_on_the_manifest_order(derived_raw):
    """Sorted by content hash: a shard is a random sample of its split, and a new file name moves no photo."""
    rows = read_manifest(derived_raw)
    plan = shards.plan_shards(rows, 32, 0.05, shards.Partition(0, 1))
    assert plan == shards.plan_shards(rows[::-1], 32, 0.05, shards.Partition(0, 1))
    for groups in plan.values():
        shas = [r["sha256"] for _, g in groups for r in g]
        assert shas == sorted(shas) and len(groups) > 1
        assert [n for n, _ in groups] == list(range(len(groups)))
    halves = [shards.plan_shards(rows, 32, 0.05, shards.Partition(i, 2)) for i in (0, 1)]
    for split, groups in plan.items():  # two partitions deal out the one partition's shards, whole
        assert sorted(halves[0][split] + halves[1][split], key=lambda ng: ng[0]) == groups


def test_a_photo_swapped_for_another_redoes_its_shard(tmp_path, derived_raw):
    """Same split, same count, another photo: the old shard must not pass for the new one."""
    rows = read_manifest(derived_raw)
    val = [r for r in rows if r["split"] == "val"]
    assert shards.preprocess(val, derived_raw, tmp_path, 16, 1, workers=1)["shards_written"] == 1
    newcomer = {**next(r for r in rows if r["split"] == "train"), "split": "val"}
    swapped = val[:-1] + [newcomer]
    again = shards.preprocess(swapped, derived_raw, tmp_path, 16, 1, workers=1)
    assert (again["shards_written"], again["shards_skipped"]) == (1, 0)
    [npy] = sorted((tmp_path / "val").glob("*.npy"))
    images = json.loads(npy.with_suffix(".json").read_text())["images"]
    assert sorted(images) == sorted(r["sha256"] for r in swapped)
    stored = dict(zip(images, np.load(npy), strict=True))
    want = shards.lab_sample(str(derived_raw / newcomer["path"]), newcomer["uri"], 16, newcomer["decoder"],
                             newcomer["orientation"])
    np.testing.assert_array_equal(stored[newcomer["sha256"]], want)


def test_a_new_size_redoes_the_shards(tmp_path, derived_raw):
    rows = [r for r in read_manifest(derived_raw) if r["split"] == "val"]
    assert shards.preprocess(rows, derived_raw, tmp_path, 16, 1, workers=1)["shards_written"] == 1
    assert shards.preprocess(rows, derived_raw, tmp_path, 16, 1, workers=1)["shards_skipped"] == 1
    assert shards.preprocess(rows, derived_raw, tmp_path, 24, 1, workers=1)["shards_written"] == 1
    assert shards.write_index(tmp_path, 24)["val"]["shape"] == [3, 24, 24]


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal and /proc are Linux's")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_killing_only_the_main_process_leaves_no_worker_holding_the_folder(tmp_path, derived_raw, sig):
    """`kill PID` of the CLI alone (not its group) left the two workers blocked for good, holding the folder's lock:
    every re-run said another preprocess was writing there, naming the dead pid. SIGTERM now unwinds, as Ctrl-C,
    and Ctrl-C says so (typer turned it into a silent exit 130)."""
    params = tmp_path / "params.yaml"
    params.write_text("preprocess:\n  size: 128\n  shard_mb: 1\n  workers: 2\n")
    out = tmp_path / "out"
    cmd = [str(Path(sys.executable).with_name("chromify")), "preprocess", "--params", str(params),
           "--raw", str(derived_raw), "--out", str(out)]
    # Ctrl-C as in a terminal, even where this runs with SIGINT ignored (a background job), which exec keeps: a
    # small exec wrapper, not preexec_fn, which would fork this many-threaded process and run Python in the child.
    reset = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    proc = subprocess.Popen([sys.executable, "-c", reset, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list(out.glob("*/p000of001-*.json")):
        assert proc.poll() is None, f"preprocess ended before it could be killed: {proc.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    workers = _children(proc.pid)
    assert len(workers) == 2
    proc.send_signal(sig)
    proc.wait(timeout=60)
    if sig == signal.SIGTERM:
        assert (proc.returncode, proc.stderr.read().decode().splitlines()[-1]) == (143, "chromify: terminated")
    elif sig == signal.SIGINT:
        assert (proc.returncode, proc.stderr.read().decode().splitlines()[-1:]) == (130, ["chromify: interrupted"])
    else:
        assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [w for w in workers if _alive(w)]
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["shards_skipped"] > 0  # it resumed
    for split in shards.SPLITS:
        shards.verify_shards(out / split)


def test_kill_9_mid_run_then_rerun_gives_identical_shards(tmp_path, derived_raw):
    size, mb = 128, 1  # 21 images a shard (shard_mb is a whole number in params.yaml): 12 shards
    reference = tmp_path / "reference"
    shards.preprocess(read_manifest(derived_raw), derived_raw, reference, size, mb, workers=1)
    expected = {split: idx["shards"] for split, idx in shards.write_index(reference, size).items()}
    n_shards = sum(len(v) for v in expected.values())

    params = tmp_path / "params.yaml"
    params.write_text(f"preprocess:\n  size: {size}\n  shard_mb: {mb}\n  workers: 2\n")
    out = tmp_path / "out"
    cmd = [str(Path(sys.executable).with_name("chromify")), "preprocess", "--params", str(params),
           "--raw", str(derived_raw), "--out", str(out)]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list(out.glob("*/p000of001-*.json")):  # the first finished shard: the run is under way
        assert proc.poll() is None, f"preprocess ended before it could be killed: {proc.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its workers, as an OOM kill or a lost node would
    proc.wait()
    finished = len(list(out.glob("*/p000of001-*.json")))
    assert proc.returncode == -signal.SIGKILL and 0 < finished < n_shards

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    counts = json.loads(rerun.stdout)
    assert counts["shards_skipped"] >= finished - 1 and counts["shards_written"] >= n_shards - finished
    assert {split: shards.read_index(out / split)["shards"] for split in shards.SPLITS} == expected
    assert not list(out.rglob(".*")), "temporary files left behind"


def test_a_second_run_of_a_partition_is_refused_and_the_first_finishes_every_photo(tmp_path, derived_raw):
    """Two runs of one partition into one folder: the second took the first's partial files for a killed run's
    leftovers, deleted and recreated them, and both finished shards with rows of zeros and valid checksums. Now the
    second stops at once while the first (stopped mid-run here) holds the partition, and the first ends whole."""
    size, mb = 128, 1
    rows = read_manifest(derived_raw)
    params = tmp_path / "params.yaml"
    params.write_text(f"preprocess:\n  size: {size}\n  shard_mb: {mb}\n  workers: 1\n")
    out, log = tmp_path / "out", tmp_path / "first.log"
    cmd = [str(Path(sys.executable).with_name("chromify")), "preprocess", "--params", str(params),
           "--raw", str(derived_raw), "--out", str(out)]
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob("*/p000of001-*.json")):  # the first finished shard: the run is under way
            assert proc.poll() is None, f"preprocess ended before it could be stopped: {log.read_text()}"
            assert time.monotonic() < deadline
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGSTOP)
        assert proc.poll() is None, "preprocess ended before it could be stopped"
        with pytest.raises(DataError) as refused:
            shards.preprocess(rows, derived_raw, out, size, mb, workers=1)
        assert str(refused.value) == (f"{out}: another preprocess is writing partition p000of001 here "
                                      f"(pid {proc.pid}); wait for it to end or preprocess into another folder")
        os.killpg(proc.pid, signal.SIGCONT)
        assert proc.wait(timeout=120) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    stored = samples_by_sha(out)
    assert len(stored) == len(rows)
    for r in rows:
        want = shards.lab_sample(str(derived_raw / r["path"]), r["uri"], size, r["decoder"], r["orientation"])
        np.testing.assert_array_equal(stored[r["sha256"]], want, err_msg=r["uri"])
    assert not list(out.rglob(".*")), "the lock or a partial file left behind"


def test_a_stored_photo_damaged_at_its_size_is_removed_and_the_next_ingest_copies_it_again(tmp_path, photos):
    """Ingest knows a stored file by its size: one damaged at the same size (a crash before the page cache reached
    the disk, bit rot) passed for good, and a JPEG's damage decodes into wrong pixels without an error. Preprocess
    hashes the bytes it reads, removes the damaged file and says so in one line; ingest then copies it again."""
    src = tmp_path / "photos"
    src.mkdir()
    for name, rgb in photos.items():
        Image.fromarray(rgb).save(src / f"{name}.jpg", quality=90)
    raw, out, size = tmp_path / "raw", tmp_path / "out", 64
    p = IngestParams(source=str(src), out_dir=str(raw), val_fraction=0, test_fraction=0)
    ingest(p, tmp_path / "reports", workers=1)
    victim = next(r for r in read_manifest(raw) if r["uri"] == str(src / "chelsea.jpg"))
    stored = raw / victim["path"]
    data = bytearray(stored.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # inside the entropy-coded scan: no marker is hit
    stored.write_bytes(bytes(data))

    with pytest.raises(DataError) as damaged:
        shards.preprocess(read_manifest(raw), raw, out, size, workers=2)  # raised in a worker
    assert str(damaged.value) == (f"{stored}: the stored copy of {src / 'chelsea.jpg'} is damaged (its sha256 is not "
                                  "the manifest's) and was removed; re-run ingest to copy it again")
    assert not stored.exists()

    again = ingest(p, tmp_path / "reports", workers=1)
    assert (again["decoded_this_run"], again["accepted"]) == (1, 3)
    assert stored.read_bytes() == (src / "chelsea.jpg").read_bytes()
    rows = read_manifest(raw)
    assert shards.preprocess(rows, raw, out, size, workers=1)["shards_written"] == 1
    shards.write_index(out, size)
    samples = samples_by_sha(out)
    for r in rows:
        want = shards.lab_sample(r["uri"], r["uri"], size, r["decoder"], r["orientation"])  # from the source
        np.testing.assert_array_equal(samples[r["sha256"]], want, err_msg=r["uri"])


def test_partitions_cut_with_another_shard_size_or_pixel_pipeline_are_not_indexed_together(tmp_path, derived_raw,
                                                                                          monkeypatch):
    """Partition 0/2 under one shard_mb, 1/2 under another: shard n is another group of photos under each plan, and
    the index listed some photos twice and left others out, silently. Likewise partitions of two code versions."""
    import re

    rows = read_manifest(derived_raw)
    mb = 10 * 3 * 32 * 32 / 2**20
    shards.preprocess(rows, derived_raw, tmp_path, 32, mb, workers=1, partition=shards.Partition(0, 2))
    shards.preprocess(rows, derived_raw, tmp_path, 32, 2 * mb, workers=1, partition=shards.Partition(1, 2))
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}: partition 0/2 was preprocessed with another shard "
                                                  "size (preprocess.shard_mb)")):
        shards.write_index(tmp_path, 32, partitions=2)
    shards.preprocess(rows, derived_raw, tmp_path, 32, 2 * mb, workers=1, partition=shards.Partition(0, 2))
    indexes = shards.write_index(tmp_path, 32, partitions=2)
    assert sum(i["count"] for i in indexes.values()) == len(rows)  # each photo once
    assert sorted(samples_by_sha(tmp_path)) == sorted(r["sha256"] for r in rows)

    monkeypatch.setattr(shards, "PIXELS", "an older pixel pipeline")
    shards.preprocess(rows, derived_raw, tmp_path, 32, 2 * mb, workers=1, partition=shards.Partition(0, 2))
    monkeypatch.undo()
    with pytest.raises(DataError, match=re.escape("partition 0/2 was preprocessed with another pixel pipeline")):
        shards.write_index(tmp_path, 32, partitions=2)


def test_a_killed_runs_hidden_files_go_when_the_partitioning_or_the_run_changes(tmp_path, derived_raw):
    """A run killed mid-way leaves .partial shards and its lock; a killed index or marker write leaves a temp file.
    Once the partition count changed no run removed them, and DVC would have cached them with the shards."""
    rows = read_manifest(derived_raw)
    mb = 10 * 3 * 32 * 32 / 2**20
    (tmp_path / "train").mkdir(parents=True)
    leftovers = [tmp_path / "train" / ".p000of001-00000.npy.partial", tmp_path / ".p000of001.lock",
                 tmp_path / "train" / ".index.json.abcd1234.tmp", tmp_path / ".p000of002.done.json.abcd1234.tmp",
                 tmp_path / ".p001of002.done.json.efgh5678.tmp"]
    for path in leftovers:
        path.write_bytes(b"left by a kill -9")
    old = time.time() - 60
    for path in leftovers:
        os.utime(path, (old, old))
    for i in range(2):
        shards.preprocess(rows, derived_raw, tmp_path, 32, mb, workers=1, partition=shards.Partition(i, 2))
    shards.write_index(tmp_path, 32, partitions=2)
    assert [p for p in leftovers if p.exists()] == []
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()], sorted(tmp_path.rglob(".*"))


def test_a_short_write_names_the_shard_and_the_likely_full_disk(tmp_path, derived_raw, monkeypatch):
    """pwrite returns short on a full disk: the OSError named no file and had no errno, so the CLI printed a
    traceback. (The kernel's short write is stood in for here: no full disk can be mounted here.)"""
    from chromify.cli import _one_line

    rows = read_manifest(derived_raw)
    monkeypatch.setattr(shards.os, "pwrite", lambda fd, data, offset: 10)
    with pytest.raises(OSError) as err:
        shards.preprocess(rows, derived_raw, tmp_path, 32, 1, workers=1)
    line = _one_line(err.value)
    assert line is not None and line.startswith(str(tmp_path)) and "-00000.npy.partial: short write: no space" in line


@pytest.mark.parametrize(("damage", "said"), [
    (lambda out: (out / "p000of002.done.json").write_text("[]"), "p000of002.done.json: damaged"),
    (lambda out: next((out / "train").glob("p000of002-*.json")).write_text('{"broken'), "damaged"),
    (lambda out: next((out / "train").glob("p000of002-*.json")).unlink(), "missing"),
])
def test_another_partitions_damaged_files_are_named_when_the_index_is_written(tmp_path, derived_raw, damage, said):
    """The last partition indexes the others' shards from their files: a damaged marker or sidecar was an
    AttributeError or JSONDecodeError traceback, a missing one said only 'No such file or directory'."""
    rows = read_manifest(derived_raw)
    mb = 10 * 3 * 32 * 32 / 2**20
    shards.preprocess(rows, derived_raw, tmp_path, 32, mb, workers=1, partition=shards.Partition(0, 2))
    damage(tmp_path)
    shards.preprocess(rows, derived_raw, tmp_path, 32, mb, workers=1, partition=shards.Partition(1, 2))
    with pytest.raises(DataError, match=re.escape(said) + ".*; re-run `chromify preprocess --partition 0/2`$"):
        shards.write_index(tmp_path, 32, partitions=2)


def test_a_live_run_of_another_partitioning_keeps_its_files_and_old_markers_are_named(tmp_path, derived_raw):
    """The cleanup of other partition counts leaves a run that holds its lock alone (its lock file too), and a done
    marker written before markers recorded the shard plan is called that, not 'another shard size'."""
    import fcntl

    rows = read_manifest(derived_raw)
    mb = 10 * 3 * 32 * 32 / 2**20
    (tmp_path / "train").mkdir(parents=True)
    live = tmp_path / "train" / ".p000of004-00000.npy.partial"
    live.write_bytes(b"being written")
    fd = os.open(tmp_path / ".p000of004.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as that run holds it
    try:
        for i in range(2):
            shards.preprocess(rows, derived_raw, tmp_path, 32, mb, workers=1, partition=shards.Partition(i, 2))
        shards.write_index(tmp_path, 32, partitions=2)
        assert live.exists() and (tmp_path / ".p000of004.lock").exists()
    finally:
        os.close(fd)

    marker = tmp_path / "p000of002.done.json"
    old = {k: v for k, v in json.loads(marker.read_text()).items() if k not in ("per_shard", "pixels")}
    marker.write_text(json.dumps(old))
    os.utime(marker, (time.time() - 60, time.time() - 60))
    with pytest.raises(DataError, match=re.escape("partition 0/2 was preprocessed by an earlier version of chromify")):
        shards.write_index(tmp_path, 32, partitions=2)
