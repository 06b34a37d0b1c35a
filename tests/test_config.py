import re
from pathlib import Path

import pytest
import yaml

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
        # a negative budget trained 0 steps, and the untrained model went on to evaluate and register
        ({"train": {"max_minutes": -1}}, "train.max_minutes -1.0: must be >= 0 (0: no time limit)"),
        ({"train": {"max_steps": -3, "epochs": 0}}, "train.max_steps -3: must be >= 0 (0: no step limit); "
                                                    "train.epochs 0: must be >= 1"),
        # kfp's own check at compile time was a traceback that named no params key
        ({"cloud": {"memory_limit": "32GB"}}, "cloud.memory_limit '32GB': expected a whole number"),
        ({"cloud": {"cpu_limit": "8 cores"}}, "cloud.cpu_limit '8 cores': expected a number of cores"),
        # well-formed Kubernetes quantities no training runs with (kfp compiled a bare 26 to a 26-byte limit)
        ({"cloud": {"memory_limit": 26}}, "cloud.memory_limit '26': below 1G, too little to train in (a number "
                                          "without a unit is bytes: write 26G, not 26)"),
        ({"cloud": {"memory_limit": "512Mi"}}, "cloud.memory_limit '512Mi': below 1G"),
        ({"cloud": {"cpu_limit": "0"}}, "cloud.cpu_limit '0': must be more than 0 cores"),
        ({"cloud": {"cpu_limit": "0m"}}, "cloud.cpu_limit '0m': must be more than 0 cores"),
        # compiled and submitted, and refused by Kubernetes only when the train pod was created
        ({"cloud": {"kfp_gpu_node_selector_key": "chromify pool"}},
         "cloud.kfp_gpu_node_selector_key 'chromify pool': expected a Kubernetes label key"),
        ({"cloud": {"kfp_gpu_toleration_key": ""}}, "cloud.kfp_gpu_toleration_key '': expected a Kubernetes label key"),
        ({"cloud": {"kfp_gpu_toleration_key": "Nvidia.com/gpu"}},
         "cloud.kfp_gpu_toleration_key 'Nvidia.com/gpu': expected a Kubernetes label key"),
        ({"cloud": {"kfp_gpu_node_selector_value": "-gpu"}},
         "cloud.kfp_gpu_node_selector_value '-gpu': expected a Kubernetes label value"),
        # zero or out-of-range values were tracebacks later (batch sizes, size 0) or trained on nothing (fractions)
        ({"train": {"lr": -1, "ema_decay": 1.5}},
         "train.lr -1.0: must be finite and > 0; train.ema_decay 1.5: must be in [0, 1)"),
        # lr .inf trained to NaN weights, and exited 0
        ({"train": {"lr": float("inf")}}, "train.lr inf: must be finite and > 0"),
        # numpy refused a negative seed, and torch one past 64 bits, once training had started: tracebacks
        ({"base": {"seed": -1}}, "base.seed -1: must be in [0, 18446744073709551616)"),
        # a key that is not a string was a TypeError inside the message; a bool or a list taken for a number or text
        ({1: 2}, "unknown params section(s): 1"),
        ({"train": {None: 2}}, "unknown key(s) in params section 'train': None"),
        ({"train": {"max_steps": True}}, "params key 'train.max_steps' must be int, got True"),
        ({"train": {"out_dir": ["a"]}}, "params key 'train.out_dir' must be str, got ['a']"),
        # a typo of a target changed the local registry in `models promote`; "" or "../x" registered outside it
        ({"register": {"target": "foo", "model_name": "../../x"}},
         "register.target 'foo': expected one of local, vertex; register.model_name '../../x': must name a folder "
         "inside register.registry_dir (no '/', not empty, '.' or '..')"),
        ({"train": {"decode_min_psnr_gain_db": "nan"}}, "train.decode_min_psnr_gain_db nan: must be a finite number"),
        ({"evaluate": {"batch_size": 0}}, "evaluate.batch_size 0: must be >= 1"),
        ({"preprocess": {"size": 0}}, "preprocess.size 0: must be >= 16"),
        ({"ingest": {"val_fraction": 0.9, "test_fraction": 0.15}}, "ingest.val_fraction + ingest.test_fraction = 1.05: "
                                                                   "must be <= 1 (what is left trains)"),
        ({"model": {"chroma_gain": -1, "base_width": 0}}, "model.base_width 0: must be >= 1; model.chroma_gain -1.0: "
                                                          "must be finite and > 0"),
        # the open end of a range: an EMA of decay 1 never leaves the initial weights, and the untrained model
        # would be exported; a GAN that starts at the end never starts
        ({"train": {"ema_decay": 1}}, "train.ema_decay 1.0: must be in [0, 1)"),
        ({"train": {"gan_start_fraction": 1}}, "train.gan_start_fraction 1.0: must be in [0, 1)"),
        ({"train": {"rebalance": 1.5}}, "train.rebalance 1.5: must be in [0, 1]"),
        ({"train": {"val_every_steps": 0}}, "train.val_every_steps 0: must be >= 1"),
        # NaN fails every comparison: no time limit at all on a cloud GPU, or another photo set accepted
        ({"train": {"max_minutes": "nan"}}, "train.max_minutes nan: must be >= 0"),
        ({"ingest": {"min_chroma": "nan"}}, "ingest.min_chroma nan: must be >= 0"),
        # the gate compared with NaN ("ΔCF 6.92 > nan") and wrote NaN / Infinity into gate.json; a negative
        # tolerance demanded that a candidate beat the champion by that much
        ({"gate": {"max_delta_cf": "nan", "champion_psnr_tolerance_db": -5}},
         "gate.max_delta_cf nan: must be a finite number >= 0; gate.champion_psnr_tolerance_db -5.0: must be a finite "
         "number >= 0"),
        ({"gate": {"min_psnr_gain_db": "-inf", "champion_delta_cf_tolerance": "inf"}},
         "gate.min_psnr_gain_db -inf: must be a finite number; gate.champion_delta_cf_tolerance inf: must be a "
         "finite number >= 0"),
        # a blank `key:` is YAML's null, and str(None) passed as the text "None" (a Vertex project named None)
        ({"register": {"vertex_project": None}}, "params key 'register.vertex_project' has no value: give a str "
                                                 '("" for none)'),
        ({"train": {"lr": None}}, "params key 'train.lr' has no value: give a float"),
        # a negative resolution passed the divisibility check and crashed in the resize with a torch traceback
        ({"train": {"resolution": -64, "crop": -1}}, "train.crop -1: must be >= 0 (0: the stored size); "
                                                     "train.resolution -64: must be >= 0 (0: the crop size)"),
    ],
)
def test_bad_params_are_one_line_errors(raw, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        params_from_dict(raw)


def test_a_folder_held_out_whole_is_allowed():
    """val + test = 1 is the documented way to evaluate a model on a folder kept out of training."""
    for val, test in ((0.0, 1.0), (0.5, 0.5)):
        p = params_from_dict({"ingest": {"val_fraction": val, "test_fraction": test}}).ingest
        assert (p.val_fraction, p.test_fraction) == (val, test)


def test_kubernetes_quantities_kfp_accepts_are_accepted():
    for cpu, memory in (("8", "32G"), (8, "1500Mi"), ("0.5", "1Ti"), ("500m", "64000000000"), ("1m", "1G")):
        cloud = params_from_dict({"cloud": {"cpu_limit": cpu, "memory_limit": memory}}).cloud
        assert (cloud.cpu_limit, cloud.memory_limit) == (str(cpu), memory)


def test_missing_file_means_defaults(tmp_path):
    assert load_params(tmp_path / "absent.yaml") == Params()


def test_params_yaml_spells_out_every_key_at_the_library_default():
    """A key a user's params.yaml leaves out then means what the shipped file says; the deliberate differences
    are the demo's: a test fraction that gives the 11-photo sample a test photo, and a low gate bar (its test
    photos are unlike its training ones)."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    defaults = Params().to_dict()
    assert {s: sorted(v) for s, v in raw.items()} == {s: sorted(v) for s, v in defaults.items()}
    shipped = load_params(ROOT / "params.yaml").to_dict()
    differ = {(s, k): (shipped[s][k], v) for s, keys in defaults.items() for k, v in keys.items() if shipped[s][k] != v}
    assert differ == {("ingest", "test_fraction"): (0.25, 0.15), ("gate", "min_psnr_gain_db"): (-10.0, 0.0)}


def test_invalid_yaml_names_the_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=str(bad)):
        load_params(bad)


def test_a_params_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes(b"train:\n  lr: \xe9\n")  # saved as Latin-1 by an old editor: a UnicodeDecodeError traceback
    with pytest.raises(ConfigError, match=re.escape(f"{path}: not UTF-8 text (byte 13)")):
        load_params(path)


def test_names_and_seeds_that_loaded_before_still_do():
    # Vertex sanitises a display name for its model id; a seed up to 2^64 - 1 seeds numpy and torch
    p = params_from_dict({"base": {"seed": 2**64 - 1}, "register": {"model_name": "Chromify Colorizer"}})
    assert (p.base.seed, p.register.model_name) == (2**64 - 1, "Chromify Colorizer")
