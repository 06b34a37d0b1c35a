import json
import multiprocessing as mp
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml
from PIL import Image

from chromify.config import Params, RegisterParams
from chromify.errors import GateError, RegistryError
from chromify.evaluate import model_id_of
from chromify.io import file_sha256
from chromify.models import get_model
from chromify.registry import CHAMPION, LocalRegistry, check_alias
from chromify.stages import run_register
from chromify.train.checkpoint import export_model


def _export(path, seed):
    import torch

    torch.manual_seed(seed)
    export_model(path, get_model("unet_s", base_width=4, depth=2),
                 {"arch": "unet_s", "model": {"base_width": 4, "depth": 2}, "size": 32})
    return path


@pytest.fixture
def model_dir(tmp_path):
    return _export(tmp_path / "candidate", 0)


def test_versions_are_numbered_immutable_and_aliases_move(tmp_path, model_dir):
    reg = LocalRegistry(tmp_path / "registry", "m")
    v1 = reg.register(model_dir, {"metrics": {"psnr": 20.0}}, aliases=(CHAMPION,))
    v2 = reg.register(model_dir, {"metrics": {"psnr": 21.0}}, aliases=(CHAMPION, "staging"))
    assert (v1, v2) == (1, 2)
    assert reg.versions() == [1, 2]
    assert reg.aliases() == {CHAMPION: 2, "staging": 2}
    assert reg.record(1)["metrics"]["psnr"] == 20.0 and reg.record(1)["version"] == 1
    assert (reg.model_dir("v1") / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()
    assert reg.rollback(CHAMPION) == 1 and reg.resolve(CHAMPION) == 1
    assert reg.set_alias(CHAMPION, "2") == 2


def test_a_removed_version_number_is_never_reused(tmp_path, model_dir):
    import shutil

    reg = LocalRegistry(tmp_path / "registry", "m")
    for _ in range(3):
        reg.register(model_dir, {})
    shutil.rmtree(reg.version_dir(2))  # a bad model deleted by hand
    assert reg.register(model_dir, {}) == 4
    assert reg.versions() == [1, 3, 4]


def test_a_version_is_read_only_and_its_files_are_verified(tmp_path, model_dir):
    reg = LocalRegistry(tmp_path / "registry", "m")
    v = reg.register(model_dir, {})
    folder = reg.version_dir(v)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "record.json"]
    assert all(f.stat().st_mode & 0o222 == 0 for f in folder.iterdir())  # no write bit for anyone
    assert reg.model_id(v) == model_id_of(model_dir)  # from the files' hashes, as the record names no model_id
    assert reg.verify(v) == []
    weights = folder / "model.safetensors"
    weights.chmod(0o644)
    weights.write_bytes(b"tampered")
    assert reg.verify("v1") == ["model.safetensors"]


def test_rollback_walks_back_through_history_and_never_toggles(tmp_path, model_dir):
    reg = LocalRegistry(tmp_path / "registry", "m")
    for _ in range(3):
        reg.register(model_dir, {}, aliases=(CHAMPION,))
    assert reg.rollback() == 2
    assert reg.rollback() == 1  # further back, not back to 3
    with pytest.raises(RegistryError, match="no earlier version to roll back to .*names v1"):
        reg.rollback()
    # A promotion after a rollback is undone by the next rollback; the version rolled away from stays away.
    assert reg.set_alias(CHAMPION, 3) == 3 and reg.rollback() == 1
    reg.register(model_dir, {}, aliases=(CHAMPION,))  # v4
    assert reg.rollback() == 1
    assert [(m["previous"], m["version"], m["action"]) for m in reg.alias_history(CHAMPION)] == [
        (None, 1, "register"), (1, 2, "register"), (2, 3, "register"), (3, 2, "rollback"), (2, 1, "rollback"),
        (1, 3, "promote"), (3, 1, "rollback"), (1, 4, "register"), (4, 1, "rollback")]
    # Promoting to the version an alias already names is not a move.
    reg.set_alias(CHAMPION, 1)
    assert len(reg.alias_history(CHAMPION)) == 9
    # Aliases have histories of their own.
    reg.set_alias("staging", 2)
    reg.set_alias("staging", 4)
    assert reg.rollback("staging") == 2 and reg.aliases() == {CHAMPION: 1, "staging": 2}


def test_a_logged_move_that_never_reached_the_table_is_not_rolled_back_to(tmp_path, model_dir):
    reg = LocalRegistry(tmp_path / "registry", "m")
    for _ in range(3):
        reg.register(model_dir, {}, aliases=(CHAMPION,))
    reg.rollback()  # champion → v2
    # A crash between the history line and the alias table: the log says v3, the table still v2.
    with open(reg.history_path, "a") as f:
        f.write(json.dumps({"alias": CHAMPION, "version": 3, "previous": 2, "action": "promote",
                            "at": "2026-01-01T00:00:00+00:00"}) + "\n")
    assert reg.champion() == 2 and reg.rollback() == 1


def test_a_history_line_torn_by_a_crash_is_skipped_and_trimmed_by_the_next_move(tmp_path, model_dir):
    reg = LocalRegistry(tmp_path / "registry", "m")
    reg.register(model_dir, {}, aliases=(CHAMPION,))
    reg.register(model_dir, {}, aliases=(CHAMPION,))
    # A promotion of v1 stopped mid-append (disk full, power cut): half a line, no newline, the table still says v2.
    torn = json.dumps({"alias": CHAMPION, "version": 1, "previous": 2, "action": "promote",
                       "at": "2026-01-01T00:00:00+00:00"})[:-20]
    with open(reg.history_path, "a") as f:
        f.write(torn)
    assert [m["version"] for m in reg.alias_history()] == [1, 2] and reg.champion() == 2
    assert reg.register(model_dir, {}, aliases=(CHAMPION,)) == 3
    assert reg.history_path.read_text().endswith("\n") and torn not in reg.history_path.read_text()
    assert reg.rollback() == 2 and reg.rollback() == 1
    assert [(m["previous"], m["version"], m["action"]) for m in reg.alias_history(CHAMPION)] == [
        (None, 1, "register"), (1, 2, "register"), (2, 3, "register"), (3, 2, "rollback"), (2, 1, "rollback")]


def test_a_cut_history_still_rolls_back_through_the_versions_the_table_held(tmp_path, model_dir):
    reg = LocalRegistry(tmp_path / "registry", "m")
    reg.register(model_dir, {}, aliases=(CHAMPION,))
    reg.register(model_dir, {}, aliases=(CHAMPION,))
    reg.history_path.write_bytes(reg.history_path.read_bytes()[:-20])  # v2's line cut, though the table moved
    assert reg.register(model_dir, {}, aliases=(CHAMPION,)) == 3
    # v2's line is gone; v3's own line says the table held v2 before it, so rollback still goes through v2.
    assert [(m["previous"], m["version"]) for m in reg.alias_history()] == [(None, 1), (2, 3)]
    assert reg.rollback() == 2 and reg.rollback() == 1
    assert [(m["previous"], m["version"], m["action"]) for m in reg.alias_history()][2:] == [
        (3, 2, "rollback"), (2, 1, "rollback")]


def test_a_version_folder_without_its_record_is_not_listed_and_its_number_is_skipped(tmp_path, model_dir):
    import shutil

    reg = LocalRegistry(tmp_path / "registry", "m")
    reg.register(model_dir, {}, aliases=(CHAMPION,))
    orphan = reg.version_dir(2)  # weights left behind by a hand edit or a partial delete, no record.json
    orphan.mkdir()
    shutil.copyfile(model_dir / "model.safetensors", orphan / "model.safetensors")
    assert reg.versions() == [1]
    assert reg.register(model_dir, {}, aliases=(CHAMPION,)) == 3
    assert reg.versions() == [1, 3] and reg.champion() == 3 and not reg.pending_path.exists()
    assert sorted(p.name for p in orphan.iterdir()) == ["model.safetensors"]  # left as it was


def test_a_number_is_never_given_twice_even_after_its_folder_was_deleted_by_hand(tmp_path, model_dir):
    import shutil

    reg = LocalRegistry(tmp_path / "registry", "m")
    reg.register(model_dir, {}, aliases=(CHAMPION,))
    reg.register(_export(tmp_path / "second", 1), {}, aliases=(CHAMPION,))
    shutil.rmtree(reg.version_dir(2))  # the newest version removed by hand
    reg.set_alias(CHAMPION, 1)
    third = _export(tmp_path / "third", 2)
    assert reg.register(third, {}, aliases=(CHAMPION,)) == 3
    assert reg.versions() == [1, 3]
    assert [(m["previous"], m["version"]) for m in reg.alias_history()] == [(None, 1), (1, 2), (2, 1), (1, 3)]
    reg.last_version_path.write_text("three\n")
    with pytest.raises(RegistryError, match=r"last_version: damaged \(expected the highest version number"):
        reg.register(_export(tmp_path / "fourth", 3), {})
    assert reg.versions() == [1, 3]
    reg.last_version_path.unlink()  # a registry from before the file: numbered past its folders
    assert reg.register(_export(tmp_path / "fifth", 4), {}) == 4


def test_bad_aliases_and_refs_are_clear_errors(tmp_path, model_dir):
    reg = LocalRegistry(tmp_path / "registry", "m")
    with pytest.raises(RegistryError, match="no version or alias 'champion': nothing is registered in .* yet"):
        reg.resolve(CHAMPION)
    reg.register(model_dir, {})
    with pytest.raises(RegistryError, match="no earlier version"):
        reg.rollback("champion")
    with pytest.raises(RegistryError, match=r"no version or alias 'v9' \(have v1\)"):
        reg.model_dir("v9")
    for bad in ("v2", "3", "Champion", "-x", "x-", "a_b", "", "x" * 64):
        with pytest.raises(RegistryError):
            check_alias(bad)
    assert check_alias("canary-2") == "canary-2"
    with pytest.raises(RegistryError, match="looks like a version"):
        reg.set_alias("v1", 1)
    with pytest.raises(RegistryError, match="missing model.safetensors, config.json"):
        reg.register(tmp_path, {})


def test_a_killed_writers_staging_folder_is_swept_and_never_listed(tmp_path, model_dir):
    reg = LocalRegistry(tmp_path / "registry", "m")
    stale = reg.dir / ".staging-killed"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    assert reg.versions() == []
    assert reg.register(model_dir, {}) == 1
    assert not stale.exists()


def _register_one(args):
    root, model_dir, i = args
    return LocalRegistry(root, "m").register(model_dir, {"worker": i}, aliases=(CHAMPION,))


def test_concurrent_registrations_get_distinct_versions_and_a_valid_alias_table(tmp_path, model_dir):
    root = tmp_path / "registry"
    with mp.get_context("fork").Pool(4) as pool:
        versions = pool.map(_register_one, [(root, model_dir, i) for i in range(12)])
    reg = LocalRegistry(root, "m")
    assert sorted(versions) == list(range(1, 13))
    assert reg.versions() == list(range(1, 13))
    assert sorted(reg.record(v)["worker"] for v in reg.versions()) == list(range(12))
    assert reg.aliases()[CHAMPION] in versions
    assert json.loads((reg.dir / "aliases.json").read_text())  # parses: never half-written
    assert len(reg.alias_history(CHAMPION)) == 12
    assert not list(reg.dir.glob(".staging-*"))


# -- run_register and the `chromify models` commands, as a user runs them --

METRICS_1 = {"candidate": {"psnr": 24.31, "delta_cf": 3.12}, "gray": {"psnr": 22.0}, "psnr_gain_db": 2.31}
METRICS_2 = {"candidate": {"psnr": 24.5, "delta_cf": 2.9}, "gray": {"psnr": 22.0}, "psnr_gain_db": 2.5}


def chromify(cwd, *args, ok=True):
    proc = subprocess.run([sys.executable, "-m", "chromify.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    assert (proc.returncode == 0) == ok, proc.stdout + proc.stderr
    return proc.stdout if ok else proc.stderr


@pytest.fixture
def two_runs(tmp_path):
    """Two gated runs registered by run_register (the second beat the first), then a third one refused."""
    params = Params(register=RegisterParams(registry_dir=str(tmp_path / "models/registry")))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"register": {"registry_dir": "models/registry"}}))
    first, second = _export(tmp_path / "run1", 1), _export(tmp_path / "run2", 2)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "manifest.parquet").write_bytes(b"manifest")
    gate1 = {"passed": True, "champion_id": None, "reasons": ["PSNR gain over gray +2.31 dB ≥ +0.00 dB"],
             "candidate_id": model_id_of(first)}
    out1 = run_register(params, first, gate1, METRICS_1, raw, tmp_path / "reports")
    gate2 = {"passed": True, "champion_id": model_id_of(first), "reasons": ["PSNR 24.50 dB ≥ champion 24.31 dB"],
             "candidate_id": model_id_of(second)}
    out2 = run_register(params, second, gate2, METRICS_2, raw, tmp_path / "reports")
    refused = {"passed": False, "champion_id": model_id_of(second), "reasons": ["ΔCF 31.00 > 15.00"],
               "candidate_id": model_id_of(first)}
    out3 = run_register(params, first, refused, METRICS_1, raw, tmp_path / "reports")
    return tmp_path, params, (out1, out2, out3), (first, second)


def test_run_register_records_lineage_and_refuses_with_reasons(two_runs):
    root, params, (out1, out2, out3), (first, second) = two_runs
    assert (out1["version"], out2["version"], out1["alias"]) == (1, 2, CHAMPION)
    assert out3 == {"registered": False, "target": "local", "reasons": ["ΔCF 31.00 > 15.00"]}
    assert json.loads((root / "reports/register.json").read_text()) == out3
    reg = LocalRegistry(params.register.registry_dir, params.register.model_name)
    assert reg.versions() == [1, 2] and reg.champion() == 2
    record = reg.record(2)
    assert record["model_id"] == model_id_of(second) and record["gate"]["champion_id"] == model_id_of(first)
    assert record["metrics"] == METRICS_2 and record["params"]["register"]["registry_dir"].endswith("registry")
    assert len(record["data_manifest_sha256"]) == 64 and "git_commit" in record
    # Weights that are not the ones the gate decided on are refused.
    with pytest.raises(GateError, match="not the ones the gate decided on"):
        run_register(params, first, {"passed": True, "candidate_id": model_id_of(second)}, METRICS_2,
                     root / "raw", None)


def test_models_cli_lists_shows_promotes_and_rolls_back(two_runs):
    root, _, _, (first, second) = two_runs
    lines = chromify(root, "models", "list").splitlines()
    assert lines[0] == "chromify-colorizer: 2 version(s) in models/registry/chromify-colorizer; champion v2"
    assert lines[1].split() == ["version", "PSNR", "dB", "vs", "gray", "ΔCF", "gated", "vs", "registered", "(UTC)",
                                "commit", "model", "id", "aliases"]
    date = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    assert re.fullmatch(rf"v1 +24\.31 +\+2\.31 +3\.1  -  +{date}  \S+ +{model_id_of(first)}  -", lines[2])
    assert re.fullmatch(rf"v2 +24\.50 +\+2\.50 +2\.9  v1 +{date}  \S+ +{model_id_of(second)}  champion", lines[3])
    assert len(lines) == 4
    # Columns line up: every row starts its values where the header starts its titles.
    assert len({line.index("  ", 30) for line in lines[2:]}) == 1

    rows = json.loads(chromify(root, "models", "list", "--json"))
    assert [(r["version"], r["aliases"], r["gated_against"]) for r in rows] == [(1, [], None), (2, [CHAMPION], "v1")]

    shown = json.loads(chromify(root, "models", "show"))
    assert shown["version"] == 2 and shown["aliases"] == [CHAMPION] and shown["files_intact"] is True
    assert shown["path"].endswith("v0002") and shown["gate"]["reasons"] == ["PSNR 24.50 dB ≥ champion 24.31 dB"]

    assert chromify(root, "models", "promote", "v1", "--alias", "staging") == "staging: none -> v1\n"
    assert chromify(root, "models", "rollback") == "champion: v2 -> v1 (rolled back)\n"
    err = chromify(root, "models", "rollback", ok=False)
    assert err == ("chromify: error: chromify-colorizer: alias 'champion' has no earlier version to roll back to "
                   "(it names v1 and has not named another before)\n")
    assert chromify(root, "models", "promote", "2") == "champion: v1 -> v2\n"
    assert chromify(root, "models", "promote", "champion") == "champion already names v2\n"
    history = chromify(root, "models", "history", "--alias", "champion").splitlines()
    assert [line.split()[2:] for line in history] == [
        ["champion", "none", "->", "v1", "register"], ["champion", "v1", "->", "v2", "register"],
        ["champion", "v2", "->", "v1", "rollback"], ["champion", "v1", "->", "v2", "promote"]]
    assert chromify(root, "models", "show", "v7", ok=False) == (
        "chromify: error: chromify-colorizer: no version or alias 'v7' (have v1, v2, champion, staging)\n")


def test_models_commands_from_outside_the_project_or_with_the_champion_gone(two_runs):
    """From a subfolder `models list` said the registry was empty and `show` that nothing was registered; with the
    champion's folder deleted by hand, `list` (the command to pick another from) refused to list."""
    import shutil

    root = two_runs[0]
    (root / "notebooks").mkdir()
    for args in (("models", "list"), ("models", "show")):
        assert chromify(root / "notebooks", *args, ok=False) == (
            f"chromify: error: no params.yaml in {root / 'notebooks'} to find the model registry by: run "
            f"`chromify models {args[1]}` from the project's folder\n")
    shutil.rmtree(root / "models/registry/chromify-colorizer/v0002")  # the champion
    lines = chromify(root, "models", "list").splitlines()
    assert lines[0] == ("chromify-colorizer: 1 version(s) in models/registry/chromify-colorizer; champion v2 (not "
                        "a registered version: promote one with `chromify models promote VERSION`)")
    assert [line.split()[0] for line in lines[2:]] == ["v1"]


def test_models_list_on_an_empty_registry(tmp_path):
    (tmp_path / "params.yaml").write_text("register:\n  registry_dir: reg\n")
    out = chromify(tmp_path, "models", "list")
    assert out == "chromify-colorizer: no registered versions in reg/chromify-colorizer\n"


def test_a_version_folder_is_readable_by_other_users(tmp_path, model_dir):
    old = os.umask(0o022)
    try:
        v = LocalRegistry(tmp_path / "registry", "m").register(model_dir, {})
    finally:
        os.umask(old)
    folder = tmp_path / "registry/m" / f"v{v:04d}"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755  # a serving container's uid can list and read it
    assert {stat.S_IMODE(f.stat().st_mode) for f in folder.iterdir()} == {0o444}


def _write_reports(root, gate, metrics):
    (root / "reports").mkdir(exist_ok=True)
    (root / "reports/gate.json").write_text(json.dumps(gate))
    (root / "reports/metrics.json").write_text(json.dumps(metrics))


def test_registering_weights_already_registered_changes_nothing(two_runs):
    root, params, _, (first, second) = two_runs
    reg = LocalRegistry(params.register.registry_dir, params.register.model_name)
    gate2 = {"passed": True, "champion_id": model_id_of(first), "reasons": ["PSNR 24.50 dB ≥ champion 24.31 dB"],
             "candidate_id": model_id_of(second)}
    _write_reports(root, gate2, METRICS_2)
    # A second `chromify register` of the same candidate: no v3.
    out = chromify(root, "register", "--model", "run2", "--raw", "raw")
    assert out.splitlines()[0] == f"already registered as v2 (model {model_id_of(second)}); no alias moved, " \
                                  "champion is v2"
    assert "gate refused" not in out and out.count("already registered") == 1
    assert reg.versions() == [1, 2] and reg.champion() == 2
    # After a rollback, `dvc repro` re-runs register with the same gate: the rollback stays.
    chromify(root, "models", "rollback")
    moves = reg.alias_history()
    outcome = run_register(params, second, gate2, METRICS_2, root / "raw", root / "reports")
    assert outcome["registered"] is False and outcome["already_registered"] is True
    assert (outcome["version"], outcome["path"]) == (2, str(reg.version_dir(2)))
    assert outcome["reasons"][0] == f"already registered as v2 (model {model_id_of(second)}); no alias moved, " \
                                    "champion is v1"
    assert json.loads((root / "reports/register.json").read_text()) == outcome
    assert reg.versions() == [1, 2] and reg.champion() == 1 and reg.alias_history() == moves


def _kill_after_publishing(registry_dir, model_dir, record) -> int:
    """Register in a child process that is SIGKILLed the moment the version folder is published (its os.rename
    returned), before any alias moves: a kill -9 landing there. Returns the child's exit status."""
    code = textwrap.dedent(f"""
        import json, os, signal, sys
        from chromify.registry import CHAMPION, LocalRegistry
        real_rename = os.rename
        def rename(src, dst):
            real_rename(src, dst)
            if os.path.basename(str(src)).startswith(".staging-"):
                os.kill(os.getpid(), signal.SIGKILL)
        os.rename = rename
        LocalRegistry({str(registry_dir)!r}, "m").register({str(model_dir)!r}, json.loads(sys.argv[1]),
                                                          aliases=(CHAMPION,))
    """)
    return subprocess.run([sys.executable, "-c", code, json.dumps(record)], timeout=120).returncode


def test_a_registration_killed_before_the_champion_moved_is_finished_by_the_rerun(tmp_path, model_dir):
    """kill -9 between the version's publication and the alias table: `dvc repro` re-runs register, which must
    finish the promotion the gate decided, not call it already registered and lose it."""
    reg = LocalRegistry(tmp_path / "registry", "m")
    first = reg.register(model_dir, {"model_id": model_id_of(model_dir)}, aliases=(CHAMPION,))
    second = _export(tmp_path / "second", 5)
    record = {"model_id": model_id_of(second), "gate": {"champion_id": model_id_of(model_dir)}}
    assert _kill_after_publishing(reg.dir.parent, second, record) == -signal.SIGKILL
    assert reg.versions() == [1, 2] and reg.champion() == first and reg.pending_path.exists()
    assert reg.register(second, record, aliases=(CHAMPION,)) == 2
    assert reg.champion() == 2 and not reg.pending_path.exists()
    assert reg.rollback(CHAMPION) == 1  # the history holds the move, so a rollback undoes it


def test_a_version_registered_without_aliases_or_rolled_back_from_is_never_promoted_by_a_rerun(tmp_path,
                                                                                               model_dir):
    from chromify.registry import AlreadyRegistered

    reg = LocalRegistry(tmp_path / "registry", "m")
    reg.register(model_dir, {"model_id": model_id_of(model_dir)}, aliases=(CHAMPION,))
    second, third = _export(tmp_path / "second", 5), _export(tmp_path / "third", 6)
    gate = {"champion_id": model_id_of(model_dir)}
    assert reg.register(second, {"model_id": model_id_of(second), "gate": gate}) == 2  # on purpose, no alias
    with pytest.raises(AlreadyRegistered):
        reg.register(second, {"model_id": model_id_of(second), "gate": gate}, aliases=(CHAMPION,))
    assert reg.register(third, {"model_id": model_id_of(third), "gate": gate}, aliases=(CHAMPION,)) == 3
    assert reg.rollback(CHAMPION) == 1
    reg.history_path.write_text("")  # even with the history gone, nothing says v3's registration was unfinished
    with pytest.raises(AlreadyRegistered):
        reg.register(third, {"model_id": model_id_of(third), "gate": gate}, aliases=(CHAMPION,))
    assert reg.champion() == 1 and not reg.pending_path.exists()


def test_a_gate_decided_against_a_former_champion_is_refused(two_runs):
    root, params, _, (first, second) = two_runs
    reg = LocalRegistry(params.register.registry_dir, params.register.model_name)
    third = _export(root / "run3", 3)
    for gated_against, said in ((model_id_of(first), model_id_of(first)), (None, "no champion")):
        gate = {"passed": True, "champion_id": gated_against, "reasons": [], "candidate_id": model_id_of(third)}
        with pytest.raises(RegistryError, match=re.escape(
                f"the gate compared the candidate with {said}, the champion is now v2 ({model_id_of(second)}); "
                "re-run evaluate (`chromify evaluate`, or `dvc repro -f -s evaluate` then `dvc repro`; "
                "in a cloud run, submit the pipeline again)")):
            run_register(params, third, gate, METRICS_2, root / "raw", None)
    assert reg.versions() == [1, 2] and reg.champion() == 2 and not list(reg.dir.glob(".staging-*"))
    # Against the current champion it registers.
    gate = {"passed": True, "champion_id": model_id_of(second), "reasons": [], "candidate_id": model_id_of(third)}
    assert run_register(params, third, gate, METRICS_2, root / "raw", None)["version"] == 3


def test_damaged_registry_metadata_is_a_one_line_error_naming_the_file(two_runs):
    root, params, _, (first, second) = two_runs
    reg = LocalRegistry(params.register.registry_dir, params.register.model_name)
    table, history = reg.dir / "aliases.json", reg.history_path
    good_table, good_history = table.read_text(), history.read_text()

    def error(*args):
        err = chromify(root, *args, ok=False)
        assert err.startswith("chromify: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
        return err

    table.write_text('{"champion": ')
    for command in (("models", "list"), ("models", "show"), ("models", "promote", "1")):
        assert "aliases.json: damaged alias table (Expecting value" in error(*command)
    third = _export(root / "run3", 3)
    gate = {"passed": True, "champion_id": model_id_of(second), "reasons": [], "candidate_id": model_id_of(third)}
    with pytest.raises(RegistryError, match="damaged alias table"):
        run_register(params, third, gate, METRICS_2, root / "raw", None)
    assert reg.versions() == [1, 2] and table.read_text() == '{"champion": '  # nothing written, nothing lost
    table.write_text('["champion", 2]')
    assert "aliases.json: damaged alias table" in error("models", "list")

    table.write_text(good_table)
    history.write_text(good_history + "junk\n")
    for command in (("models", "history"), ("models", "rollback")):
        assert "alias_history.jsonl: line 3 is damaged (Expecting value" in error(*command)
    history.write_text(good_history + '{"alias": "champion"}\n')
    assert "alias_history.jsonl: line 3 is not an alias move" in error("models", "history")
    assert reg.champion() == 2

    history.write_text(good_history)
    table.write_text('{"champion": 9}')
    assert "aliases.json: dangling alias 'champion': it names v9, which is not a registered version" in error(
        "models", "show")
    assert chromify(root, "models", "list").splitlines()[0].endswith(
        "champion v9 (not a registered version: promote one with `chromify models promote VERSION`)")
    assert chromify(root, "models", "promote", "1") == "champion: v9 -> v1\n"  # the way out works
    assert reg.champion() == 1

    record = reg.version_dir(2) / "record.json"
    record.chmod(0o644)
    record.write_text("{")
    assert "v0002/record.json: damaged version record" in error("models", "list")


def _rewrite_record(reg, version, change):
    """Hand-edit a version's read-only record.json: `change(record)` returns the record to write."""
    path = reg.version_dir(version) / "record.json"
    path.chmod(0o644)
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return path


def _empty_project(tmp_path):
    """A project whose params put the registry in reg/; returns that (empty) registry."""
    (tmp_path / "params.yaml").write_text("register:\n  registry_dir: reg\n")
    return LocalRegistry(tmp_path / "reg", "chromify-colorizer")


def test_rollback_skips_versions_whose_folders_were_deleted_and_refuses_when_none_is_left(tmp_path, model_dir):
    """Rollback pointed champion at a version deleted by hand, and list/show/colorize then failed on the dangling
    alias; it now goes back to the previous version that is still there, or refuses and changes nothing."""
    import shutil

    reg = LocalRegistry(tmp_path / "registry", "m")
    for _ in range(3):
        reg.register(model_dir, {}, aliases=(CHAMPION,))
    shutil.rmtree(reg.version_dir(2))
    assert reg.rollback() == 1 and reg.champion() == 1
    assert [(m["previous"], m["version"], m["action"]) for m in reg.alias_history()][-1] == (3, 1, "rollback")
    with pytest.raises(RegistryError, match="no earlier version to roll back to .*names v1"):
        reg.rollback()
    several = LocalRegistry(tmp_path / "registry", "several")
    for _ in range(3):
        several.register(model_dir, {}, aliases=(CHAMPION,))
    shutil.rmtree(several.version_dir(1))
    shutil.rmtree(several.version_dir(2))
    with pytest.raises(RegistryError, match=re.escape(
            "no earlier version to roll back to: v2, v1, which it named before, are no longer registered (no "
            f"record.json in {several.version_dir(2)}, {several.version_dir(1)})")):
        several.rollback()
    assert several.aliases() == {CHAMPION: 3} and len(several.alias_history()) == 3

    # The audit's case, as a user types it: the only earlier version is gone.
    root = tmp_path / "project"
    root.mkdir()
    reg = _empty_project(root)
    reg.register(model_dir, {}, aliases=(CHAMPION,))
    reg.register(_export(tmp_path / "second", 1), {}, aliases=(CHAMPION,))
    shutil.rmtree(reg.version_dir(1))
    table, history = reg.aliases_path.read_bytes(), reg.history_path.read_bytes()
    err = chromify(root, "models", "rollback", ok=False)
    assert err == ("chromify: error: chromify-colorizer: alias 'champion' has no earlier version to roll back to: "
                   "v1, which it named before, is no longer registered (no reg/chromify-colorizer/v0001/record.json)\n")
    assert (reg.aliases_path.read_bytes(), reg.history_path.read_bytes()) == (table, history)  # nothing changed
    assert chromify(root, "models", "list").splitlines()[0].endswith("champion v2")


def test_a_version_ref_with_non_ascii_digits_is_no_such_version(tmp_path, model_dir):
    """`models show ²` was a ValueError traceback: str.isdigit accepts '²', which int() refuses."""
    reg = _empty_project(tmp_path)
    for ref in ("²", "v²"):
        assert chromify(tmp_path, "models", "show", ref, ok=False).startswith(
            f"chromify: error: chromify-colorizer: no version or alias {ref!r}: nothing is registered")
    reg.register(model_dir, {})
    reg.register(_export(tmp_path / "second", 1), {})
    reg.register(_export(tmp_path / "third", 2), {})
    for ref in ("²", "v²", "٣", "v٣"):  # '٣' (Arabic-Indic three) int() reads as 3: not a version name either
        with pytest.raises(RegistryError, match=rf"no version or alias '{ref}' \(have v1, v2, v3\)"):
            reg.resolve(ref)
        with pytest.raises(RegistryError, match="no version or alias"):
            reg.set_alias(CHAMPION, ref)
    assert chromify(tmp_path, "models", "promote", "v²", ok=False) == (
        "chromify: error: chromify-colorizer: no version or alias 'v²' (have v1, v2, v3)\n")
    # A folder or last_version named with such digits is not a version number either.
    (reg.dir / "v1²").mkdir()
    (reg.dir / "v1²" / "record.json").write_text("{}")
    assert reg.versions() == [1, 2, 3]
    reg.last_version_path.write_text("³\n")
    with pytest.raises(RegistryError, match=r"last_version: damaged \(expected the highest version number"):
        reg.register(_export(tmp_path / "fourth", 3), {})
    assert reg.versions() == [1, 2, 3] and reg.aliases() == {}


def test_a_version_record_of_the_wrong_shape_is_a_one_line_error_naming_it(two_runs):
    """`models list` crashed (AttributeError, "Unknown format code 'f'") on a record.json whose metrics were not
    what registration writes. Like a truncated record.json, a value of the wrong type is damage; null, like a
    missing key, is no value and is listed as '-'."""
    root, params, _, _ = two_runs
    reg = LocalRegistry(params.register.registry_dir, params.register.model_name)
    _rewrite_record(reg, 1, lambda r: {**r, "gate": None, "metrics": None})
    lines = chromify(root, "models", "list").splitlines()
    assert lines[2].split()[:5] == ["v1", "-", "-", "-", "-"] and lines[3].startswith("v2 ")
    assert [r["gated_against"] for r in json.loads(chromify(root, "models", "list", "--json"))] == [None, "v1"]

    good = (reg.version_dir(2) / "record.json").read_text()
    for damage, said in (
            (lambda r: {**r, "metrics": {**r["metrics"], "candidate": {"psnr": "24.5"}}},
             "metrics.candidate.psnr is \"24.5\", not a number"),
            (lambda r: {**r, "metrics": "24.5"}, "metrics is \"24.5\", not an object"),
            (lambda r: {**r, "gate": {"champion_id": ["x"]}}, "gate.champion_id is [\"x\"], not a string"),
            (lambda r: {**r, "files": {"config.json": 3}}, "files.config.json is 3, not a string")):
        path = _rewrite_record(reg, 2, damage)
        for command in (("models", "list"), ("models", "show", "2")):
            err = chromify(root, *command, ok=False)
            assert err == f"chromify: error: {path.relative_to(root)}: damaged version record ({said})\n", err
        path.write_text(good)
    # What registration would write in that shape is refused before anything is written.
    with pytest.raises(RegistryError, match=r"damaged version record \(metrics is \[\], not an object\)"):
        reg.register(_export(root / "run3", 3), {"metrics": []})
    assert reg.versions() == [1, 2] and not list(reg.dir.glob(".staging-*"))


def test_a_history_line_that_is_not_utf8_is_a_one_line_error_naming_it(tmp_path, model_dir):
    """A byte that is not UTF-8 in alias_history.jsonl was a UnicodeDecodeError traceback."""
    reg = _empty_project(tmp_path)
    reg.register(model_dir, {}, aliases=(CHAMPION,))
    reg.register(_export(tmp_path / "second", 1), {}, aliases=(CHAMPION,))
    good = reg.history_path.read_bytes()
    # A torn last line (no newline) is still a crash leftover, skipped, whatever bytes it holds.
    reg.history_path.write_bytes(good + b'{"alias": "champion", "version": 1, "\xe2\x80')
    assert [m["version"] for m in reg.alias_history()] == [1, 2]
    reg.history_path.write_bytes(good + b"\xff\n")
    for command in (("models", "history"), ("models", "rollback")):
        err = chromify(tmp_path, *command, ok=False)
        assert err.startswith("chromify: error: reg/chromify-colorizer/alias_history.jsonl: line 3 is damaged (")
        assert err.count("\n") == 1
    assert reg.champion() == 2 and reg.history_path.read_bytes() == good + b"\xff\n"


def test_only_a_command_that_takes_a_folder_suggests_naming_one(tmp_path):
    """On an empty registry `models show` suggested naming a model's folder, which it then refused the same way."""
    reg = _empty_project(tmp_path)
    for command in (("models", "show", "models/candidate"), ("models", "promote", "3")):
        err = chromify(tmp_path, *command, ok=False)
        assert err == (f"chromify: error: chromify-colorizer: no version or alias {command[2]!r}: nothing is "
                       f"registered in reg/chromify-colorizer yet (a model is registered when its evaluation gate "
                       "passes)\n")
    with pytest.raises(RegistryError, match=r"gate passes\)$"):
        reg.resolve(CHAMPION)
    # colorize (and serve) take a model's folder too, so they still say so.
    err = chromify(tmp_path, "colorize", "photo.png", "-o", "out", ok=False)
    assert err == ("chromify: error: chromify-colorizer: no version or alias 'champion': nothing is registered in "
                   "reg/chromify-colorizer yet (a model is registered when its evaluation gate passes; a trained "
                   "model's folder, such as models/candidate, can be named instead)\n")


def test_a_version_whose_record_lists_no_files_is_not_intact(tmp_path, model_dir):
    """With `files` gone from record.json, nothing was compared and `models show` said files_intact: true."""
    reg = _empty_project(tmp_path)
    reg.register(model_dir, {}, aliases=(CHAMPION,))
    (reg.version_dir(1) / "model.safetensors").unlink()
    for change in (lambda r: {k: v for k, v in r.items() if k != "files"}, lambda r: {**r, "files": {}},
                   lambda r: {**r, "files": None}):
        _rewrite_record(reg, 1, change)
        assert reg.verify(1) == ["config.json", "model.safetensors"]
    shown = json.loads(chromify(tmp_path, "models", "show", "1"))
    assert shown["files_intact"] is False and shown["files_changed"] == ["config.json", "model.safetensors"]
    # Only the config's hash recorded: the weights are not vouched for.
    _rewrite_record(reg, 1, lambda r: {**r, "files": {"config.json": file_sha256(reg.version_dir(1) /
                                                                                   "config.json")}})
    assert reg.verify(1) == ["model.safetensors"]


def test_the_weights_reach_the_disk_before_the_champion_alias_points_at_them(tmp_path, model_dir, monkeypatch):
    """The order of fsyncs, which is what survives a power cut: weights, their folder, the registry folder, then the
    alias table (a durable champion pointing at weights still in the page cache could be a truncated model)."""
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    reg = LocalRegistry(tmp_path / "registry", "m")
    reg.register(model_dir, {"metrics": {}}, aliases=(CHAMPION,))
    names = [re.sub(r"\.staging-\d+", "<staging>", re.sub(r"\.[a-z0-9_]{8}\.tmp$", ".tmp", p))
             for p in (p.replace(str(reg.dir), "<reg>") for p in synced)]
    assert names == ["<reg>/<staging>/model.safetensors", "<reg>/<staging>/config.json",
                     "<reg>/<staging>/.record.json.tmp", "<reg>/<staging>",  # the version, whole
                     "<reg>/.pending.json.tmp", "<reg>",  # what a kill before the aliases move leaves to finish
                     "<reg>",  # its rename into v0001
                     "<reg>/.last_version.tmp", "<reg>",  # its number, never given again
                     "<reg>/alias_history.jsonl", "<reg>/.aliases.json.tmp", "<reg>"]  # then the alias moves


def test_the_same_weights_with_another_decode_are_another_model(tmp_path, model_dir):
    # A new decode floor re-exports the finished run's weights with the decode it now picks: a model that colours
    # otherwise, which evaluate must compare with the champion (it refused it as "the same weights" before).
    first = model_id_of(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    redecoded = tmp_path / "redecoded"
    redecoded.mkdir()
    (redecoded / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes())
    (redecoded / "config.json").write_text(json.dumps({**config, "model": {**config["model"], "chroma_gain": 1.4}}))
    assert model_id_of(redecoded) != first
    (redecoded / "config.json").write_bytes((model_dir / "config.json").read_bytes())
    assert model_id_of(redecoded) == first


def test_a_champion_with_files_gone_is_named_as_the_champion_not_as_an_untrained_folder(two_runs):
    """Evaluate said `…/v0002: no trained model here (model.safetensors missing); train one first`: no training
    mends a damaged champion, and the message did not say the folder was the champion."""
    from chromify.stages import champion_dir

    root, params, _, _ = two_runs
    reg = LocalRegistry(params.register.registry_dir, params.register.model_name)
    assert champion_dir(params) == reg.version_dir(2)
    weights = reg.version_dir(2) / "model.safetensors"
    weights.chmod(0o644)
    weights.unlink()
    with pytest.raises(RegistryError, match=re.escape(
            f"{reg.version_dir(2)}: the champion (v2) has model.safetensors missing or changed since it was "
            "registered; restore them, or promote another version (`chromify models list`)")):
        champion_dir(params)
    reg.set_alias(CHAMPION, 1)
    assert champion_dir(params) == reg.version_dir(1)


def test_colorize_refuses_a_registered_version_whose_config_changed_since_it_was_registered(tmp_path, model_dir):
    """config.json holds the decode (temperature, prior correction, gain): changed by hand, `models show` said
    files_intact false, but colorize and serve used it without a word. The weights vouch for themselves already."""
    reg = _empty_project(tmp_path)
    reg.register(model_dir, {}, aliases=(CHAMPION,))
    Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(tmp_path / "photo.png")
    chromify(tmp_path, "colorize", "photo.png", "-o", "before")  # intact: it colorizes
    config = reg.version_dir(1) / "config.json"
    config.chmod(0o644)
    config.write_text(config.read_text() + " ")
    for ref in ("champion", "1", "v1"):
        err = chromify(tmp_path, "colorize", "photo.png", "-o", "after", "--model", ref, ok=False)
        assert err == (f"chromify: error: {reg.version_dir(1).relative_to(tmp_path)}: v1 has config.json missing or "
                       "changed since it was registered; restore them, or name another version "
                       "(`chromify models list`)\n")
    assert not (tmp_path / "after").exists()


def test_promote_or_rollback_where_nothing_is_registered_leaves_no_folder_behind(tmp_path):
    """Both failed as they should, but made reg/chromify-colorizer/ with a lock file in it on the way."""
    reg = _empty_project(tmp_path)
    assert chromify(tmp_path, "models", "promote", "1", ok=False).startswith(
        "chromify: error: chromify-colorizer: no version or alias '1': nothing is registered in ")
    assert chromify(tmp_path, "models", "rollback", ok=False) == (
        "chromify: error: chromify-colorizer: alias 'champion' has no earlier version to roll back to (it names no "
        "version and has not named another before)\n")
    assert not reg.dir.exists() and not (tmp_path / "reg").exists()
