import subprocess
import sys


def test_help_lists_every_stage_without_importing_torch():
    code = (
        "import sys; from chromify.cli import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH_LOADED' if 'torch' in sys.modules or 'kfp' in sys.modules else 'LIGHT')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    for command in ("ingest", "preprocess", "train", "evaluate", "register", "colorize", "models", "pipeline"):
        assert command in out
    assert out.strip().endswith("LIGHT")


def test_the_cli_runs_on_a_typer_without_the_method_its_help_patch_replaces(tmp_path):
    """Older typer, which pyproject allows (>=0.12), has no TyperOption.display_type_rich: reading it at import
    ended every command in an AttributeError there. Here the method is taken away before the import."""
    code = (
        "import runpy, sys\n"
        "from typer.core import TyperOption\n"
        "for cls in TyperOption.__mro__:\n"
        "    if 'display_type_rich' in vars(cls):\n"
        "        delattr(cls, 'display_type_rich')\n"
        "sys.argv = ['chromify', 'models', 'list', '--params', 'none.yaml']\n"
        "runpy.run_module('chromify.cli', run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (2, "chromify: error: none.yaml: no such params file\n")


def test_errors_are_one_line_without_traceback(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  epochs: lots\n")
    proc = subprocess.run([sys.executable, "-m", "chromify.cli", "models", "list", "--params", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "chromify: error: params key 'train.epochs' must be int, got 'lots'"


def chromify(*args: str, cwd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chromify.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_stages_run_out_of_order_or_a_missing_params_file_say_so_in_one_line(tmp_path):
    gone = tmp_path / "gone.yaml"
    for args, message in (
            (["register"], "reports/gate.json: not found; run `chromify evaluate` first"),
            (["evaluate"], "models/candidate: no trained model here (model.safetensors missing); train one first"),
            (["train", "--params", "none.yaml"], "none.yaml: no such params file"),
            (["preprocess", "--params", str(gone)], f"{gone}: no such params file")):
        proc = chromify(*args, cwd=tmp_path)
        assert (proc.returncode, proc.stderr) == (2, f"chromify: error: {message}\n"), args
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "gate.json").write_text('{"passed": tr')  # a run killed mid-write by hand
    proc = chromify("register", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("chromify: error: reports/gate.json: unreadable (")
    assert proc.stderr.endswith("run `chromify evaluate` again\n") and proc.stderr.count("\n") == 1
    (tmp_path / "reports" / "gate.json").write_text("[1]")  # JSON, but not a report: an AttributeError traceback
    proc = chromify("register", cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (2, "chromify: error: reports/gate.json: unreadable (a JSON list, not "
                                                 "an object); run `chromify evaluate` again\n")
    # an object, but not a gate: `reasons: 5` was a TypeError traceback
    (tmp_path / "reports" / "metrics.json").write_text("{}")
    (tmp_path / "reports" / "gate.json").write_text('{"passed": false, "reasons": 5}')
    proc = chromify("register", cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (2, "chromify: error: reports/gate.json: damaged ('passed' must be true "
                                                 "or false and 'reasons' a list of text); run `chromify evaluate` "
                                                 "again\n")


def test_an_invalid_serve_setting_is_one_line(tmp_path):
    import os

    proc = chromify("serve", "--model", str(tmp_path), cwd=tmp_path, env={**os.environ, "CHROMIFY_CONCURRENCY": "abc"})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("chromify: error: invalid serve setting(s): CHROMIFY_CONCURRENCY = 'abc': ")
    # the variable the user set is named, not the first of the setting's names (AIP_HTTP_PORT, which Vertex sets)
    proc = chromify("serve", "--model", str(tmp_path), cwd=tmp_path, env={**os.environ, "CHROMIFY_PORT": "70000"})
    assert proc.stderr == ("chromify: error: invalid serve setting(s): CHROMIFY_PORT = '70000': Input should be less "
                           "than or equal to 65535\n")
    proc = chromify("serve", "--model", str(tmp_path), "--port", "99999", cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (2, "chromify: error: invalid serve setting(s): port = 99999: Input "
                                                 "should be less than or equal to 65535\n")


def test_a_model_path_that_is_not_a_folder_says_so_not_that_no_alias_is_registered(tmp_path):
    """`--model /nonexistent/dir` answered "no version or alias '/nonexistent/dir': nothing is registered"."""
    import os

    (tmp_path / "model.safetensors").write_bytes(b"")
    env = {**os.environ, "HOME": str(tmp_path)}
    colorize = ["colorize", ".", "-o", "out", "--model"]
    for args, ref, reason in (
            (["serve", "--model"], str(tmp_path / "gone" / "dir"), "no such model folder"),
            (colorize, "./gone", "no such model folder"),
            (colorize, "~/gone", "no such model folder"),
            (colorize, "./model.safetensors", "not a folder; name the model's folder")):
        proc = chromify(*args, ref, cwd=tmp_path, env=env)
        assert (proc.returncode, proc.stderr) == (2, f"chromify: error: {ref}: {reason}\n"), args


def test_colorize_or_serve_outside_a_project_say_where_they_looked_for_the_registry(tmp_path):
    """From another folder they said 'nothing is registered in models/registry/...' while a champion existed."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free a moment ago: serve binds it, then looks for the model
    (tmp_path / "photo.png").write_bytes(b"")
    for args in (["colorize", "photo.png", "-o", "out"], ["serve", "--port", str(port)]):
        proc = chromify(*args, cwd=tmp_path)
        assert (proc.returncode, proc.stderr) == (2, f"chromify: error: champion: no params.yaml in {tmp_path} to find "
                                                     "the model registry by: run this from the project's folder, or "
                                                     "name a model's folder\n"), args
    assert not (tmp_path / "out").exists() and not (tmp_path / "models").exists()


def test_a_file_system_refusal_is_one_line_naming_the_file(tmp_path):
    """A folder where an output file belongs (as a read-only file, a full disk): the user's to fix, so one line
    naming the file, and the good data already there untouched."""
    from PIL import Image
    from skimage import data

    (tmp_path / "photos").mkdir()
    Image.fromarray(data.astronaut()).save(tmp_path / "photos" / "a.png")
    blocked = tmp_path / "raw" / "manifest.parquet"
    blocked.mkdir(parents=True)
    (blocked / "keep.txt").write_text("mine")
    proc = chromify("ingest", "--source", "photos", "--out", "raw", "--reports", "reports", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 2, proc.stderr
    first, last = proc.stderr.splitlines()
    assert first.startswith("chromify: ingest: raw/manifest.parquet: unreadable (")
    assert last == "chromify: error: raw/manifest.parquet: Is a directory"
    assert (blocked / "keep.txt").read_text() == "mine"
    assert not [p for p in (tmp_path / "raw").iterdir() if p.name.endswith(".tmp")]


def test_a_damaged_manifest_is_read_afresh_by_ingest_and_one_line_for_preprocess(tmp_path):
    from PIL import Image
    from skimage import data

    (tmp_path / "photos").mkdir()
    Image.fromarray(data.astronaut()).save(tmp_path / "photos" / "a.png")
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "manifest.parquet").write_bytes(b"PAR1 cut short by a crash")
    proc = chromify("preprocess", "--raw", "raw", "--out", "processed", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("chromify: error: raw/manifest.parquet: unreadable (")
    assert proc.stderr.endswith("); run `chromify ingest` again\n")
    proc = chromify("ingest", "--source", "photos", "--out", "raw", "--reports", "reports", cwd=tmp_path)
    assert proc.returncode == 0 and "unreadable" in proc.stderr and "reading every photo again" in proc.stderr
    import pyarrow.parquet as pq

    assert [r["uri"] for r in pq.read_table(tmp_path / "raw" / "manifest.parquet").to_pylist()] == ["photos/a.png"]
    # a Parquet file without the manifest's columns (edited by hand, another tool's): a KeyError traceback before
    table = pq.read_table(tmp_path / "raw" / "manifest.parquet")
    pq.write_table(table.drop_columns(["split"]), tmp_path / "raw" / "manifest.parquet")
    proc = chromify("preprocess", "--raw", "raw", "--out", "processed", cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (2, "chromify: error: raw/manifest.parquet: not a Chromify manifest (no "
                                                 "column split); run `chromify ingest` again\n")


def _commands(group, path=()):
    """(words, click command) for every command under `group`, groups included, as `chromify WORDS --help` runs."""
    yield path, group
    for name, sub in getattr(group, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def _help_rows(words: tuple[str, ...]) -> dict[str, str]:
    """`chromify WORDS --help`'s option rows, by their first long name: the row's first line after the option's
    names (-o, --no-index): its type, if shown, then its help."""
    import re

    from typer.testing import CliRunner

    from chromify.cli import app

    result = CliRunner().invoke(app, [*words, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    rows = {}
    for line in result.output.splitlines():
        row = re.match(r"│\s+(?:\*\s+)?(--[\w-]+)((?:\s+-[\w-]+)*)(.*)", line)
        if row:
            rows[row[1]] = row[3]
    return rows


def test_help_shows_a_type_for_options_that_take_a_value_and_none_for_flags():
    """A flag shown as `--dry-run <bool>` reads as if it took a value (typer 0.29's rich help did that to every
    flag, --help included)."""
    import typer.main

    from chromify.cli import app

    checked = 0
    for words, command in _commands(typer.main.get_command(app)):
        rows = _help_rows(words)
        assert "<bool>" not in "".join(rows.values()), words
        for param in command.params:
            long_names = [o for o in param.opts if o.startswith("--")]
            if param.param_type_name != "option" or not long_names:
                continue
            shown = rows[long_names[0]].split()
            if param.is_flag:
                assert not shown or not shown[0].startswith("<"), (words, long_names[0], rows[long_names[0]])
            else:
                assert shown and shown[0].startswith("<"), (words, long_names[0], rows[long_names[0]])
            checked += 1
    assert checked > 50
    train = _help_rows(("train",))
    assert train["--dry-run"].split()[0] == "Five" and train["--help"].split()[0] == "Show"
    assert train["--params"].split()[0] == "<path>" and _help_rows(("preprocess",))["--partition"].split()[0] == "<str>"
    assert _help_rows(("colorize",))["--render-size"].split()[:2] == ["<int", "range>"]


def test_an_output_folder_that_is_a_file_is_said_so(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "afile").write_text("mine")
    from PIL import Image
    from skimage import data

    Image.fromarray(data.astronaut()).save(tmp_path / "photos" / "a.png")
    proc = chromify("ingest", "--source", "photos", "--out", "afile", "--reports", "reports", cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (2, "chromify: error: afile: a file, where a folder is needed\n")
    assert (tmp_path / "afile").read_text() == "mine"
