import json
import multiprocessing as mp

import pytest

from chromify.errors import RegistryError
from chromify.models import get_model
from chromify.registry import CHAMPION, LocalRegistry
from chromify.train.checkpoint import export_model


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "candidate"
    export_model(d, get_model("unet_s", base_width=4, depth=2), {"arch": "unet_s", "model": {"base_width": 4,
                                                                                            "depth": 2}, "size": 32})
    return d


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


def test_unknown_refs_are_clear_errors(tmp_path, model_dir):
    reg = LocalRegistry(tmp_path / "registry", "m")
    with pytest.raises(RegistryError, match="no version or alias 'champion'"):
        reg.resolve(CHAMPION)
    reg.register(model_dir, {})
    with pytest.raises(RegistryError, match="no earlier version"):
        reg.rollback("champion")
    with pytest.raises(RegistryError, match="no version or alias 'v9'"):
        reg.model_dir("v9")


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
    assert not list(reg.dir.glob(".staging-*"))
