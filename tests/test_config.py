from pathlib import Path

import pytest

from chromify.config import Params, load_params, params_from_dict
from chromify.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_repo_params_load_with_every_section():
    p = load_params(ROOT / "params.yaml")
    assert p.base.seed == 42
    assert p.ingest.source == "sample"
    assert p.model.arch in __import__("chromify.models", fromlist=["list_models"]).list_models()
    assert set(p.to_dict()) == {"base", "ingest", "preprocess", "model", "train", "evaluate", "gate", "register",
                               "cloud"}


def test_yaml_scalars_are_coerced_to_the_declared_types():
    p = params_from_dict({"train": {"lr": "1e-3", "epochs": 3.0, "compile": "true"}})
    assert p.train.lr == pytest.approx(1e-3)
    assert p.train.epochs == 3 and isinstance(p.train.epochs, int)
    assert p.train.compile is True


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"trian": {}}, "unknown params section(s): trian"),
        ({"train": {"lr_max": 1}}, "unknown key(s) in params section 'train': lr_max"),
        ({"train": {"epochs": 2.5}}, "params key 'train.epochs' must be int"),
        ({"train": {"compile": "maybe"}}, "params key 'train.compile' must be bool"),
        ({"train": [1, 2]}, "params section 'train' must be a mapping"),
    ],
)
def test_bad_params_are_one_line_errors(raw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        params_from_dict(raw)


def test_missing_file_means_defaults(tmp_path):
    assert load_params(tmp_path / "absent.yaml") == Params()


def test_invalid_yaml_names_the_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=str(bad)):
        load_params(bad)
