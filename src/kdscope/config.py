"""Typed run configuration: YAML in, dotted CLI overrides, errors that name the bad field."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """A configuration that cannot run; the message names every bad field and what is accepted."""


def check_name(name: str) -> str:
    """A run or study name is one folder: no path separators, no ``..``, not empty."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or ".." in name:
        raise ValueError(
            f"{name!r} is not a folder name: names must not be empty or contain '/', '\\' or "
            "'..' (they would write outside out_dir)"
        )
    return name


RunName = Annotated[str, AfterValidator(check_name)]


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true and false. YAML 1.1, PyYAML's default, also reads on, off, yes
    and no as booleans, which turned ``train.cache=off`` into False."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_yaml(text: str, source: str) -> Any:
    """YAML ``text`` parsed safely, with YAML 1.2's booleans (``off`` is a string); a syntax error
    is a ConfigError naming ``source`` and the line."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{source} is not valid YAML{line}: {problem}") from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    name: str = "digits"
    data_dir: Path | None = None
    download: bool = False
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    augment: str = "none"
    seed: int = Field(0, ge=0)
    train_size: int | None = Field(None, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    num_workers: int = Field(0, ge=0)


class ModelConfig(_Strict):
    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: Path | None = None


class MethodConfig(_Strict):
    name: str = "none"
    params: dict[str, Any] = Field(default_factory=dict)


class OptimConfig(_Strict):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    nesterov: bool = False


class ScheduleConfig(_Strict):
    name: Literal["cosine", "multistep", "constant"] = "cosine"
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0.0)
    warmup_epochs: int = Field(0, ge=0)


class TrainConfig(_Strict):
    epochs: int = Field(10, ge=1)
    seed: int = 0
    deterministic: bool = False
    ce_weight: float | None = Field(None, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    device: str = "auto"
    amp: bool = True
    cache: Literal["auto", "off", "memory", "disk", "views"] = "auto"
    # cache=views: views per example (or every view of a finite view space), kept in memory or on
    # disk (memory-mapped)
    views: Annotated[int, Field(ge=1)] | Literal["all"] = 4
    view_store: Literal["memory", "disk"] = "memory"
    cache_dtype: Literal["float32", "float16"] = "float32"
    cache_max_gb: float = Field(4.0, gt=0.0)
    # Keep the plain teacher cache (memory, disk) here for other runs of the same teacher and
    # training inputs to reuse (train/cache_store.py; a study sets it to <study>/teacher-cache).
    cache_dir: Path | None = None
    # Keep only the teacher's k likeliest classes (tokens) per position, with the remaining mass
    # (methods/topk.py; method kd), in cache_dtype (float16: 4k + 2 bytes per position at a
    # vocabulary under 32,768). None: the full distribution.
    cache_topk: int | None = Field(None, ge=1)
    threads: int | None = Field(None, ge=1)
    # Stop after this many epochs without a new best validation accuracy (by more than the delta).
    early_stop: int | None = Field(None, ge=1)
    early_stop_delta: float = Field(0.0, ge=0.0)
    # Retention curves: N stratified validation examples scored against the teacher every epoch
    # (0: off; kdscope.train.probe).
    probe: int = Field(0, ge=0)
    # Where the epoch scalars go besides metrics.jsonl: nowhere else, or TensorBoard event files.
    log: Literal["jsonl", "tensorboard"] = "jsonl"


class RunConfig(_Strict):
    """Everything one training run needs; ``runs/<name>/config.yaml`` holds it resolved."""

    name: RunName = "run"
    out_dir: Path = Path("runs")
    data: DataConfig = Field(default_factory=DataConfig)
    student: ModelConfig
    teacher: ModelConfig | None = None
    method: MethodConfig = Field(default_factory=MethodConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @property
    def run_dir(self) -> Path:
        return self.out_dir / self.name

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(root)"
        got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
        lines.append(f"  {field}: {e['msg'].removeprefix('Value error, ')}{got}")
    return "Invalid configuration:\n" + "\n".join(lines)


def build_config(data: dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    """Validate a config dict after applying ``key.sub=value`` overrides (values parsed as YAML)."""
    data = apply_overrides(data, overrides or [])
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config; see ``configs/`` for examples."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {str(path)!r} does not exist")
    data = parse_yaml(path.read_text(), f"Config file {str(path)!r}") or {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"Config file {str(path)!r} must hold a mapping, got {type(data).__name__}"
        )
    return build_config(data, overrides)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b.c=value`` set; ``value`` is parsed as YAML."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"Override {item!r} must look like key.sub=value")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"Override {item!r}: {part!r} is not a section")
            node = child
        node[leaf] = parse_yaml(raw, f"The value of override {item!r}")
    return data
