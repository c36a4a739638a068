"""An experiment as pydantic models: YAML in, validated, with errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mmcl.errors import MmclError


class TrainSettings(BaseModel, extra="forbid"):
    """Optimisation settings of one training stage. The defaults suit LoRA on the embedded tiny
    model (the demo); pretrained 7B-class models want lr ~1e-4 and 1 epoch (see configs/)."""

    epochs: float = Field(3, gt=0, description="passes over the task's training data")
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    # Each task starts a fresh AdamW and schedule. A 5% warmup put a LoRA that already holds
    # earlier tasks at the peak lr within ~10 steps, where a loss spike could leave the new task
    # half-learned; 20% keeps the schedule's area (the same budget) and left no task half-learned
    # in 25 lora-ft runs of `ability` (docs/measurements.md, s49).
    warmup_ratio: float = Field(0.2, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskFiles(_Strict):
    """Where one task's files are, relative to data.root (or absolute)."""

    train: str | None = None
    test: str | None = None


class DataSettings(_Strict):
    train_size: int | None = Field(
        None, ge=1, description="training samples per task (a built-in task may take a multiple)"
    )
    test_size: int | None = Field(None, ge=1, description="test samples per task")
    root: Path | None = Field(None, description="data root of a real-data benchmark")
    files: dict[str, TaskFiles] = Field(
        default_factory=dict, description="per-task file overrides of a real-data benchmark"
    )


class ModelSettings(_Strict):
    """Which backbone: the embedded preset, a local HF image-text-to-text model (`hf-native`),
    or a composed model from local pretrained parts (`pretrained-parts`)."""

    backbone: Literal["composed", "hf-native", "pretrained-parts"] = "composed"
    preset: str = Field("tiny", description="embedded model preset (micro, tiny)")
    base_seed: int = Field(
        0, description="seed of the embedded base's pretraining (cached apart per seed)"
    )
    path: Path | None = Field(None, description="hf-native: local model + processor folder")
    vision_path: Path | None = Field(None, description="pretrained-parts: CLIP/SigLIP folder")
    lm_path: Path | None = Field(None, description="pretrained-parts: causal LM folder")
    audio_path: Path | None = Field(None, description="pretrained-parts: Whisper folder")
    projector_path: Path | None = Field(
        None, description="pretrained-parts: projector weights (safetensors) to start from"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    quantize: Literal["none", "8bit", "4bit"] = Field(
        "none", description="load the LM in 8/4 bit (bitsandbytes + a CUDA GPU)"
    )
    gradient_checkpointing: bool = False

    @model_validator(mode="after")
    def _paths_given(self) -> ModelSettings:
        need = {"hf-native": ["path"], "pretrained-parts": ["vision_path", "lm_path"]}
        missing = [f"model.{k}" for k in need.get(self.backbone, []) if getattr(self, k) is None]
        if missing:
            raise ValueError(f"backbone {self.backbone!r} needs {', '.join(missing)}")
        return self


class GeneralSuite(_Strict):
    """A general-ability suite, never trained on: `builtin` (the embedded base's own skills),
    `mme` or `pope` (their published layouts under `root`), or a stream YAML's test files."""

    suite: str
    root: Path | None = Field(None, description="mme/pope: the folder of the released data")
    prompt_suffix: str = Field("", description="appended to every question of the suite")


class EvalSettings(_Strict):
    batch_size: int = Field(64, ge=1)
    max_new_tokens: int = Field(24, ge=1)
    general: list[GeneralSuite | str] = Field(
        default_factory=list, description="general suites, evaluated on the base and after steps"
    )
    general_every: int = Field(1, ge=1, description="general suites every N steps (and the last)")
    general_size: int | None = Field(None, ge=1, description="a seeded subset per general task")
    judge_url: str | None = Field(
        None, description="math answer judge: OpenAI-compatible base URL (off by default)"
    )
    judge_model: str | None = Field(None, description="math answer judge: model name")

    @model_validator(mode="after")
    def _judge_whole(self) -> EvalSettings:
        if (self.judge_url is None) != (self.judge_model is None):
            raise ValueError("a judge needs both eval.judge_url and eval.judge_model")
        return self


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
    track: list[Literal["tensorboard", "wandb", "mlflow"]] | None = Field(
        None, description="experiment trackers; default: tensorboard when installed; [] for none"
    )
    keep_checkpoints: Literal["last", "all"] = Field(
        "last",
        description="last: the newest step and the one before (what resume needs); "
        "all: every step's, to export or study the model after any step (mmcl export --step)",
    )


# Keys that change how a run is recorded, not its results: a resumed run or a grid's finished
# cell may have been made with other values (or before the key existed).
NOT_RESULTS = ("track", "keep_checkpoints")


def results_part(config: Any) -> dict[str, Any] | None:
    """A config dump (`model_dump(mode="json")`) without the keys of NOT_RESULTS, to tell
    whether two runs give the same results; None when it is not a mapping."""
    if not isinstance(config, dict):
        return None
    return {k: v for k, v in config.items() if k not in NOT_RESULTS}


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
        except (OSError, UnicodeDecodeError) as e:
            raise MmclError(f"{path}: cannot read the config ({e})") from None
        except yaml.YAMLError as e:
            raise MmclError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise MmclError(f"{path}: a config must be a mapping of keys to values")
    source = str(path) if path else "config"
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, last = key.split(".")
        for p in parents:
            if node.get(p) is None:
                node[p] = {}
            if not isinstance(node[p], dict):  # e.g. `model: micro`, then --preset
                raise MmclError(f"{source}: '{p}' must be a mapping of keys to values")
            node = node[p]
        node[last] = value
    return parse_config(data, source)


def validate_settings(model: type[BaseModel], data: dict[str, Any], where: str) -> BaseModel:
    """Validate a method's own settings, naming the config section on error."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise MmclError(_format(e, where)) from None
