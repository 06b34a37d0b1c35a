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


def test_errors_are_one_line_without_traceback(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  epochs: lots\n")
    proc = subprocess.run([sys.executable, "-m", "chromify.cli", "models", "list", "--params", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "chromify: error: params key 'train.epochs' must be int, got 'lots'"
