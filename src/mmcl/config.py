"""An experiment as pydantic models: YAML in, validated, with errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmcl.errors import MmclError
from mmcl.train import TrainSettings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSettings(_Strict):
    train_size: int | None = Field(None, ge=1, description="training samples per task")
    test_size: int | None = Field(None, ge=1, description="test samples per task")
    root: Path | None = Field(None, description="data root of a real-data benchmark")


class ModelSettings(_Strict):
    preset: str = Field("tiny", description="embedded model preset (micro, tiny)")


class EvalSettings(_Strict):
    batch_size: int = Field(64, ge=1)
    max_new_tokens: int = Field(24, ge=1)


class MethodSettings(BaseModel):
    """`name` picks the method; every other key goes to that method's own settings."""

    model_config = ConfigDict(extra="allow")
    name: str = "lora-ft"

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ExperimentConfig(_Strict):
    benchmark: str = "ability"
    tasks: list[str] | None = Field(None, description="task order / subset; default: all")
    seed: int = 0
    data: DataSettings = DataSettings()
    model: ModelSettings = ModelSettings()
    method: MethodSettings = MethodSettings()
    train: TrainSettings = TrainSettings()
    eval: EvalSettings = EvalSettings()


def _format(e: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  - {key}: {err['msg']}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise MmclError(_format(e, source)) from None


def load_config(
    path: str | Path | None, overrides: dict[str, Any] | None = None
) -> ExperimentConfig:
    """Read a YAML config (or the defaults), apply dotted-key overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise MmclError(f"{path}: config file not found") from None
        except yaml.YAMLError as e:
            raise MmclError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise MmclError(f"{path}: a config must be a mapping of keys to values")
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return parse_config(data, str(path) if path else "config")


def validate_settings(model: type[BaseModel], data: dict[str, Any], where: str) -> BaseModel:
    """Validate a method's own settings, naming the config section on error."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise MmclError(_format(e, where)) from None
