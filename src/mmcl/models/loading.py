"""Loading pretrained Hugging Face parts from local folders: paths, dtypes, 8/4-bit, devices.

Nothing is downloaded: every path must be a folder written by `save_pretrained` (weights as
safetensors). Shared by the `hf-native` and `pretrained-parts` backbones.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmcl.errors import MmclError
from mmcl.io import process_state


def local_dir(path: str | Path, key: str) -> Path:
    """A local model folder, or an error naming the config key that points at it."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise MmclError(
            f"{key} = {path}: not a folder (mmcl loads models from local folders only; "
            "download them first, e.g. `huggingface-cli download <repo> --local-dir <folder>`)"
        )
    if not (path / "config.json").is_file():
        raise MmclError(
            f"{key} = {path}: no config.json there; point it at a folder written by "
            "save_pretrained()"
        )
    return path


def device() -> torch.device:
    """This process's device (cuda:<local rank> under accelerate/torchrun, else cpu)."""
    return process_state().device


def quantization(mode: str, skip: list[str], compute_dtype: torch.dtype) -> dict[str, Any]:
    """from_pretrained kwargs for 8/4-bit loading; a clear error where it cannot work."""
    if mode == "none":
        return {}
    problems = []
    if not torch.cuda.is_available():
        problems.append("no CUDA GPU is visible")
    if importlib.util.find_spec("bitsandbytes") is None:
        problems.append("bitsandbytes is not installed (pip install bitsandbytes)")
    if problems:
        raise MmclError(
            f"model.quantize: {mode} needs bitsandbytes and a CUDA GPU, but "
            f"{' and '.join(problems)}; use model.quantize: none "
            "(model.dtype: bfloat16 halves the memory instead)"
        )
    from transformers import BitsAndBytesConfig

    cfg = BitsAndBytesConfig(
        load_in_8bit=mode == "8bit",
        load_in_4bit=mode == "4bit",
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=skip,
    )
    return {"quantization_config": cfg, "device_map": {"": device()}}


def load_model(cls: Any, path: Path, key: str, **kwargs: Any) -> nn.Module:
    """`cls.from_pretrained` from a local folder, safetensors only, errors naming the key."""
    try:
        return cls.from_pretrained(str(path), local_files_only=True, use_safetensors=True, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MmclError(f"{key} = {path}: cannot load it with {cls.__name__}: {e}") from e


def finish(model: nn.Module, quantized: bool, gradient_checkpointing: bool) -> nn.Module:
    """Freeze (methods choose what trains), place on this process's device, and prepare for
    gradient checkpointing / k-bit training."""
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    else:
        model.to(device())
        if gradient_checkpointing:
            kw = {"use_reentrant": False}
            if hasattr(model, "activation_checkpointing_enable"):  # the transformers 5.x name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def linear_regex(core: nn.Module, prefix: str) -> str:
    """A regex (peft full match) of every linear layer under the module at `prefix`, with layer
    indices generalised, e.g. `model\\.language_model\\.(?:layers\\.\\d+\\.mlp\\.down_proj|...)`."""
    found = set()
    for name, mod in core.named_modules():
        if isinstance(mod, nn.Linear) and name.startswith(prefix + "."):
            parts = name[len(prefix) + 1 :].split(".")
            found.add(r"\.".join(r"\d+" if p.isdigit() else re.escape(p) for p in parts))
    if not found:
        raise MmclError(f"no linear layers under {prefix!r} to put LoRA on")
    return rf"{re.escape(prefix)}\.(?:{'|'.join(sorted(found))})"


def module_name(core: nn.Module, module: nn.Module) -> str:
    """The dotted name of `module` inside `core`."""
    for name, m in core.named_modules():
        if m is module:
            return name
    raise MmclError(f"{type(module).__name__} is not inside {type(core).__name__}")
