"""params.yaml → frozen dataclasses, loaded once at the edge and saved beside every output.

The defaults here are params.yaml's (tests/test_config.py holds them equal), so a params file that leaves a
key out, or the library called without one, trains the same model as the shipped file does. Two values differ
on purpose, both for the 11-photo demo: params.yaml's test fraction and gate bar (see its comments).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chromify.errors import ConfigError, first_line


@dataclass(frozen=True)
class BaseParams:
    seed: int = 42

    def __post_init__(self) -> None:
        # numpy refuses a negative seed and torch one past 64 bits, both only once training has started
        _check_ranges("base", self, {"seed": _within(0, 2**64)})


@dataclass(frozen=True)
class IngestParams:
    source: str = "sample"
    out_dir: str = "data/raw"
    min_side: int = 64
    max_pixels: int = 40_000_000
    min_chroma: float = 2.0
    min_chroma_off_tint: float = 0.5
    val_fraction: float = 0.1
    test_fraction: float = 0.15  # params.yaml sets 0.25: at 0.15 the bundled sample would have no test photo

    def __post_init__(self) -> None:
        _check_ranges("ingest", self, {"min_side": _ge(1), "max_pixels": _ge(1), "min_chroma": _ge(0),
                                       "min_chroma_off_tint": _ge(0),
                                       "val_fraction": _within(0, 1, closed=True),
                                       "test_fraction": _within(0, 1, closed=True)})
        # 1 is allowed (a folder held out whole, to evaluate a model on); more is a mistake
        if not self.val_fraction + self.test_fraction <= 1:
            raise ConfigError(f"ingest.val_fraction + ingest.test_fraction = {self.val_fraction + self.test_fraction:g}"
                              ": must be <= 1 (what is left trains)")


@dataclass(frozen=True)
class PreprocessParams:
    size: int = 256
    shard_mb: int = 256
    workers: int = 2

    def __post_init__(self) -> None:
        _check_ranges("preprocess", self, {"size": _ge(16), "shard_mb": _ge(1),
                                           "workers": _ge(0, " (0: one per core)")})


@dataclass(frozen=True)
class ModelParams:
    arch: str = "unet_s"
    base_width: int = 16
    depth: int = 4
    norm: str = "batch"
    upsample: str = "bilinear"
    pretrained: bool = False
    head: str = "bins"
    bin_grid: int = 10
    bin_stride: int = 4
    temperature: float = 0.38
    prior_correction: float = 0.5
    chroma_gain: float = 1.0

    def __post_init__(self) -> None:
        _check_ranges("model", self, {"base_width": _ge(1), "depth": _ge(1), "bin_grid": _ge(1), "bin_stride": _ge(1),
                                      "temperature": _gt(0), "prior_correction": _ge(0), "chroma_gain": _gt(0)})


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 100_000
    max_steps: int = 0
    max_minutes: float = 1.5
    batch_size: int = 32
    crop: int = 224
    resolution: int = 64
    scale_min: float = 1.0
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    keep_best: bool = True
    decode_search: bool = True
    decode_min_psnr_gain_db: float = 1.0
    decode_search_min_photos: int = 16
    loss: str = "l1"
    regression_weight: float = 0.0
    rebalance: float = 1.0
    colourfulness_weight: float = 0.0
    perceptual_weight: float = 0.0
    gan_weight: float = 0.0
    gan_start_fraction: float = 0.5
    gan_lr: float = 2e-4
    compile: bool = False
    checkpoint_every: int = 200
    log_every: int = 10
    val_every_steps: int = 200
    num_threads: int = 0
    out_dir: str = "models/candidate"

    def __post_init__(self) -> None:
        # A negative budget would stop at step 0 and export, evaluate and maybe register an untrained model.
        _check_ranges("train", self, {
            "max_minutes": _ge(0, " (0: no time limit)"), "max_steps": _ge(0, " (0: no step limit)"),
            "epochs": _ge(1), "batch_size": _ge(1), "crop": _ge(0, " (0: the stored size)"),
            "resolution": _ge(0, " (0: the crop size)"), "lr": _gt(0), "weight_decay": _ge(0), "warmup_steps": _ge(0),
            "grad_clip": _ge(0, " (0: off)"), "ema_decay": _within(0, 1), "decode_search_min_photos": _ge(1),
            "decode_min_psnr_gain_db": _FINITE, "regression_weight": _ge(0), "rebalance": _within(0, 1, closed=True),
            "colourfulness_weight": _ge(0), "perceptual_weight": _ge(0), "gan_weight": _ge(0),
            "gan_start_fraction": _within(0, 1), "gan_lr": _gt(0),
            "checkpoint_every": _ge(0, " (0: only at the end)"), "log_every": _ge(0, " (0: never)"),
            "val_every_steps": _ge(1), "num_threads": _ge(0, " (0: torch's default)"),
        })


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = 16
    gallery_size: int = 6

    def __post_init__(self) -> None:
        _check_ranges("evaluate", self, {"batch_size": _ge(1), "gallery_size": _ge(0)})


@dataclass(frozen=True)
class GateParams:
    min_psnr_gain_db: float = 0.0  # params.yaml sets -10 for the bundled sample's demo (see its comment)
    max_delta_cf: float = 15.0
    champion_psnr_tolerance_db: float = 0.1
    champion_delta_cf_tolerance: float = 1.0

    def __post_init__(self) -> None:
        # NaN would compare false both ways, and inf is written to gate.json as Infinity, which strict JSON refuses
        at_least_0 = ((lambda v: math.isfinite(v) and v >= 0), "a finite number >= 0")
        _check_ranges("gate", self, {"min_psnr_gain_db": _FINITE, "max_delta_cf": at_least_0,
                                     "champion_psnr_tolerance_db": at_least_0,
                                     "champion_delta_cf_tolerance": at_least_0})


@dataclass(frozen=True)
class RegisterParams:
    target: str = "local"  # local | vertex
    registry_dir: str = "models/registry"
    model_name: str = "chromify-colorizer"
    # target vertex only: see chromify.vertex_registry and docs/source/registry.md
    vertex_project: str = ""
    vertex_location: str = "us-central1"
    artifact_root: str = ""  # gs://bucket/prefix; a version's files go to <root>/<model name>/<model id>-<record hash>/
    serving_image: str = ""  # the chromify-serve image, pinned by commit tag or digest
    labels: dict[str, str] = field(default_factory=dict)  # sanitised to Vertex's label rules

    def __post_init__(self) -> None:
        problems = []
        if self.target not in ("local", "vertex"):  # else `models promote` changed the local registry of a typo
            problems.append((False, f"register.target {self.target!r}: expected one of local, vertex"))
        if self.model_name.strip() in ("", ".", "..") or any(c in self.model_name for c in "/\\\0"):
            # "" registered into registry_dir itself, and "../x" outside it; Vertex sanitises the rest for its id
            problems.append((False, f"register.model_name {self.model_name!r}: must name a folder inside "
                                    "register.registry_dir (no '/', not empty, '.' or '..')"))
        _check_all(problems)


ACCELERATOR_TYPES = ("NVIDIA_L4", "NVIDIA_TESLA_T4", "NVIDIA_A100_80GB", "NVIDIA_H100_80GB")


@dataclass(frozen=True)
class CloudParams:
    """Where the KFP DAG runs and what the train task gets; read at compile time, since it shapes the DAG."""

    target: str = "vertex"
    accelerator_type: str = "NVIDIA_L4"
    accelerator_count: int = 1
    cpu_limit: str = "7"  # below a g2-standard-8's allocatable: on Kubeflow the limits are the pod's requests too
    memory_limit: str = "26G"
    kfp_gpu_node_selector_key: str = "chromify-pool"
    kfp_gpu_node_selector_value: str = "gpu"
    kfp_gpu_toleration_key: str = "nvidia.com/gpu"
    kfp_gpu_toleration_value: str = "present"
    kfp_gpu_toleration_effect: str = "NoSchedule"
    preprocess_partitions: int = 4

    def __post_init__(self) -> None:
        checks = [
            (self.target in ("vertex", "kfp"), f"cloud.target {self.target!r}: expected vertex or kfp"),
            (self.accelerator_type in ACCELERATOR_TYPES,
             f"cloud.accelerator_type {self.accelerator_type!r}: expected one of {', '.join(ACCELERATOR_TYPES)}"),
            (self.accelerator_count >= 0, f"cloud.accelerator_count {self.accelerator_count}: must be >= 0"),
            (self.kfp_gpu_toleration_effect in ("NoSchedule", "PreferNoSchedule", "NoExecute"),
             f"cloud.kfp_gpu_toleration_effect {self.kfp_gpu_toleration_effect!r}: "
             "expected NoSchedule, PreferNoSchedule or NoExecute"),
            (self.preprocess_partitions >= 1,
             f"cloud.preprocess_partitions {self.preprocess_partitions}: must be >= 1"),
            # Kubernetes quantities, as kfp checks them at compile time (there a traceback naming no key)
            (re.fullmatch(r"([0-9]*[.])?[0-9]+m?", str(self.cpu_limit)) is not None,
             f"cloud.cpu_limit {self.cpu_limit!r}: expected a number of cores (8, 0.5) or millicores (500m)"),
            (re.fullmatch(r"[0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?", str(self.memory_limit)) is not None,
             f"cloud.memory_limit {self.memory_limit!r}: expected a whole number with an optional unit "
             "K, M, G, T (powers of 1000) or Ki, Mi, Gi, Ti (powers of 1024), e.g. 32G"),
        ]
        _check_all(checks)
        # Well-formed, but no machine or pod trains with it: kfp would compile a 26-byte limit from a bare 26
        cores = str(self.cpu_limit)
        checks = [
            ((float(cores[:-1]) / 1000 if cores.endswith("m") else float(cores)) > 0,
             f"cloud.cpu_limit {self.cpu_limit!r}: must be more than 0 cores"),
            (_quantity_bytes(str(self.memory_limit)) >= 10**9,
             f"cloud.memory_limit {self.memory_limit!r}: below 1G, too little to train in (a number without a unit "
             "is bytes: write 26G, not 26)"),
        ]
        # Kubernetes refuses other label keys and values only when the pod is created, after the steps before train
        for key in ("kfp_gpu_node_selector_key", "kfp_gpu_toleration_key"):
            value = getattr(self, key)
            checks.append((_is_label_key(value), f"cloud.{key} {value!r}: expected a Kubernetes label key, "
                                                 "[prefix/]name (name: 1-63 letters, digits, '-', '_', '.')"))
        for key in ("kfp_gpu_node_selector_value", "kfp_gpu_toleration_value"):
            value = getattr(self, key)
            checks.append((value == "" or _LABEL_NAME.fullmatch(value) is not None,
                           f"cloud.{key} {value!r}: expected a Kubernetes label value "
                           "(0-63 letters, digits, '-', '_', '.', starting and ending with a letter or digit)"))
        _check_all(checks)


def _quantity_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity already checked by CloudParams' pattern ('26G', '512Mi', '1000') in bytes."""
    number, unit = re.fullmatch(r"([0-9]+)(\D*)", quantity).groups()  # type: ignore[union-attr]
    if not unit:
        return int(number)
    power = "KMGTPE".index(unit[0]) + 1
    return int(number) * (1024**power if unit.endswith("i") else 1000**power)


_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _is_label_key(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and not (len(prefix) <= 253 and _DNS_SUBDOMAIN.fullmatch(prefix)):
        return False
    return _LABEL_NAME.fullmatch(name) is not None


def _check_all(checks: list[tuple[bool, str]]) -> None:
    """Every failed check in one line, so a params file is mended in one go."""
    reasons = [reason for ok, reason in checks if not ok]
    if reasons:
        raise ConfigError("; ".join(reasons))


def _ge(low: float, note: str = "") -> tuple[Any, str]:
    return (lambda v: v >= low), f">= {low}{note}"  # NaN fails every comparison, so it is refused too


def _gt(low: float) -> tuple[Any, str]:
    return (lambda v: v > low and math.isfinite(v)), f"finite and > {low}"  # lr: .inf trained to NaN weights


def _within(low: float, high: float, closed: bool = False) -> tuple[Any, str]:
    if closed:
        return (lambda v: low <= v <= high), f"in [{low}, {high}]"
    return (lambda v: low <= v < high), f"in [{low}, {high})"


_FINITE = (math.isfinite, "a finite number")


def _check_ranges(section: str, obj: Any, rules: dict[str, tuple[Any, str]]) -> None:
    """Out-of-range values fail here, naming the key, not later as a traceback (or a silently untrained model)."""
    _check_all([(ok(getattr(obj, key)), f"{section}.{key} {getattr(obj, key)!r}: must be {text}")
                for key, (ok, text) in rules.items()])


@dataclass(frozen=True)
class Params:
    base: BaseParams = field(default_factory=BaseParams)
    ingest: IngestParams = field(default_factory=IngestParams)
    preprocess: PreprocessParams = field(default_factory=PreprocessParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    gate: GateParams = field(default_factory=GateParams)
    register: RegisterParams = field(default_factory=RegisterParams)
    cloud: CloudParams = field(default_factory=CloudParams)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, section: str, raw: Any) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"params section '{section}' must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields), key=str)
    if unknown:
        raise ConfigError(f"unknown key(s) in params section '{section}': {', '.join(map(str, unknown))}")
    values = {}
    for name, value in raw.items():
        default = getattr(cls(), name)
        values[name] = _coerce(f"{section}.{name}", value, type(default))
    return cls(**values)


def _coerce(key: str, value: Any, kind: type) -> Any:
    # YAML reads 1e-3 as a string and 2 as an int where a float is meant; accept what a person would.
    if value is None:  # `key:` left blank; str(None) would pass as the text "None"
        hint = ' ("" for none)' if kind is str else ""
        raise ConfigError(f"params key '{key}' has no value: give a {kind.__name__}{hint}")
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "false"):
                return str(value).lower() == "true"
            raise ValueError
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        if isinstance(value, bool) or (kind is str and not isinstance(value, (str, int, float))):
            raise ValueError  # `max_steps: true` was 1, and `out_dir: [a]` a folder named "['a']"
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"params key '{key}' must be {kind.__name__}, got {value!r}") from None


def params_from_dict(raw: dict[str, Any]) -> Params:
    sections = {f.name: f for f in dataclasses.fields(Params)}
    unknown = sorted(set(raw) - set(sections), key=str)
    if unknown:
        raise ConfigError(f"unknown params section(s): {', '.join(map(str, unknown))}")
    built = {}
    for name, f in sections.items():
        built[name] = _build(f.default_factory, name, raw.get(name))  # type: ignore[misc]
    return Params(**built)


def params_from_json(text: str, name: str = "params_json") -> Params:
    """A pipeline run's params: the whole params as compiled, every section and key, edited in place. A partial
    object would take the library's defaults for the rest, not the compiled params.yaml's: refused."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{name}: not JSON ({first_line(exc)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a JSON object of params sections, got {type(raw).__name__}")
    params = params_from_dict(raw)
    missing = [section if section not in raw else f"{section}.{key}"
               for section, keys in params.to_dict().items() for key in keys if key not in (raw.get(section) or {})]
    missing = list(dict.fromkeys(missing))  # a whole section once
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ConfigError(f"{name}: {shown} missing; give the whole params as compiled, values changed in place "
                          "(a missing key would take the library's default, not params.yaml's)")
    return params


DEFAULT_PARAMS = Path("params.yaml")


def load_params_named(path: str | Path = DEFAULT_PARAMS) -> Params:
    """What `--params PATH` means: params.yaml here, or the defaults when there is none; any other file named must
    exist, so a typo never runs on the defaults."""
    path = Path(path)
    if path != DEFAULT_PARAMS and not path.is_file():
        raise ConfigError(f"{path}: no such params file")
    return load_params(path)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read params.yaml (a missing file means all defaults)."""
    import yaml

    path = Path(path)
    if not path.exists():
        return Params()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({first_line(exc)})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections")
    return params_from_dict(raw)


def save_params(params: Params, path: str | Path) -> None:
    from chromify.io import atomic_write_text

    atomic_write_text(path, json.dumps(params.to_dict(), indent=2, sort_keys=True) + "\n")
