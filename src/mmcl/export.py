"""`mmcl export`: a run's trained adapters as ordinary peft adapter folders, usable without mmcl.

From the last committed checkpoint of a finished (or killed) run, or from an earlier step's when
the run kept them (`keep_checkpoints: all`, `--step`), the export folder holds

    adapters/<name>/          adapter_config.json + adapter_model.safetensors (peft), one per
                              LoRA adapter of the run (an expert per task, a router, `main`)
    base/                     the embedded model (its weights as the run left them, e.g. fine-
                              tuned by `finetune`), written by `save_pretrained` with its
                              processor and chat template, loadable with plain transformers
                              (trust_remote_code: the model's code is in the folder); an
                              `hf-native` run records its model folder instead
    routing.json              routed methods (mr-lora): expert <-> task, letter, description,
                              the router adapter and its prompt
    export.json               what was exported, from which run and step
    README.md                 how to load it with transformers + peft and serve it with vLLM

The folder is written beside --out and renamed into place when complete.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from importlib.resources import files
from pathlib import Path
from types import ModuleType
from typing import Any

from mmcl import checkpoint
from mmcl.config import ExperimentConfig, parse_config
from mmcl.errors import MmclError
from mmcl.io import read_json, write_json, write_text
from mmcl.methods import make_method
from mmcl.methods.base import Method
from mmcl.models.base import Backbone
from mmcl.models.lora import base_state

# mmcl's composed prompt (models/composed.py: question, then the media, then "assistant:"),
# with BOS first and EOS after each answer, as a chat template. A newline right after a block
# tag would be dropped (transformers renders with trim_blocks), hence `{{ '\n' }}`.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
    "{% set ns = namespace(text='', media='') %}"
    "{% if m['content'] is string %}{% set ns.text = m['content'] %}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}"
    "{% set ns.text = ns.text + c['text'] %}{% elif c['type'] == 'image' %}"
    "{% set ns.media = ns.media + '<image>' %}{% endif %}{% endfor %}{% endif %}"
    "user: {% if ns.media %}{{ ns.text | trim }}\n{{ ns.media }}{% else %}{{ ns.text }}{% endif %}"
    "{{ '\\n' }}assistant:{% else %} {% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{{ m['content'][0]['text'] }}{% endif %}{{ eos_token }}{% endif %}{% endfor %}"
)


def _run_config(run_dir: Path) -> ExperimentConfig:
    """The configuration a run was made with, from its newest readable checkpoint state."""
    for folder in checkpoint.candidates(run_dir / "checkpoints"):
        try:
            state = read_json(folder / "state.json")
            return parse_config(state["config"], str(folder / "state.json"))
        except (MmclError, KeyError, TypeError):
            continue
    raise MmclError(f"{run_dir}: no checkpoint to export (checkpoints/step*/state.json)")


def trained_run(
    run_dir: Path, step: int | None = None
) -> tuple[ExperimentConfig, Backbone, Method, dict[str, Any]]:
    """The run's model and method as its last committed checkpoint (or step `step`'s) left
    them, and its state."""
    from mmcl.runner import Run, load_backbone, stream_specs

    cfg = _run_config(run_dir)
    run = Run(cfg, run_dir)
    found = run._find_checkpoint(step)
    if found is None:
        raise MmclError(f"{run_dir}: no committed checkpoint to export")
    specs = stream_specs(cfg)
    backbone = load_backbone(cfg, specs)
    backbone.max_new_tokens = cfg.eval.max_new_tokens
    method = make_method(cfg.method.name, cfg.method.options(), backbone, specs, cfg.seed)
    method.setup()
    state = run._restore(found, backbone, method)
    return cfg, backbone, method, state


def _base_weights(backbone: Backbone) -> dict[str, Any]:
    """The model's own weights under its peft adapters (peft's `base_layer` unwrapped)."""
    return base_state(backbone.state_dict())


def standalone_modeling() -> ModuleType:
    """assets/modeling_mmcl.py as a module: the very file an exported folder holds, which
    loads with transformers alone (not mmcl's classes)."""
    code = files("mmcl.assets").joinpath("modeling_mmcl.py")
    spec = importlib.util.spec_from_file_location("modeling_mmcl", str(code))
    modeling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(modeling)
    return modeling


def export_embedded_base(backbone: Backbone, out: Path) -> None:
    """The embedded composed model as a transformers folder (weights, config, model code,
    processor with the chat template), loadable without mmcl."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    core = backbone.core
    if set(core.encoders) != {"image"}:
        raise MmclError(
            "export: the embedded base with audio/video encoders has no transformers "
            "counterpart yet; export covers the image model (and hf-native runs)"
        )
    modeling = standalone_modeling()
    proj = core.projectors["image"]
    vision = core.encoders["image"].model.config
    config = modeling.MmclConfig(
        vision_config=vision.to_dict(),
        text_config=core.lm.config.to_dict(),
        image_token_id=core.token_ids["image"],
        word_classes=[h.out_features for h in getattr(proj, "heads", [])],
        naming_shape=list(proj.naming.shape[1:]) if hasattr(proj, "naming") else None,
        auto_map={
            "AutoConfig": "modeling_mmcl.MmclConfig",
            "AutoModelForImageTextToText": "modeling_mmcl.MmclForConditionalGeneration",
        },
    )
    model = modeling.MmclForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(_base_weights(backbone), strict=False)
    if missing or unexpected:
        raise MmclError(
            "export: the trained model has parts that neither the base nor a peft adapter "
            f"holds (unexpected {unexpected[:5]}, missing {missing[:5]}); export covers the "
            "LoRA methods and finetune"
        )
    model.save_pretrained(out)
    shutil.copyfile(modeling.__file__, out / "modeling_mmcl.py")
    size = vision.image_size
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"height": size, "width": size},
            resample=2,  # bilinear, as mmcl resizes
            do_center_crop=False,
            image_mean=[0.5] * 3,
            image_std=[0.5] * 3,
        ),
        tokenizer=backbone.tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy="default",  # patch tokens only, no CLS
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)


def export_adapter(backbone: Backbone, name: str, out: Path, base: str) -> None:
    """One adapter as a peft folder (adapter_config.json + adapter_model.safetensors)."""
    if backbone.export_adapter(name, out.parent) != out:
        raise MmclError(f"export: adapter {name!r} must go to a folder of its name, not {out}")
    (out.parent / "README.md").unlink(missing_ok=True)  # peft's empty model card
    config_file = out / "adapter_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    # The exported base, not mmcl's class (which peft records for models it does not know).
    config.update(base_model_name_or_path=base, auto_mapping=None)
    write_json(config_file, config)


def routing_info(method: Method) -> dict[str, Any] | None:
    """Which expert answers which task, and how the router is asked (mr-lora)."""
    from mmcl.data.records import Record
    from mmcl.methods.mr_lora import ROUTER, MrLora

    if not isinstance(method, MrLora) or not method.experts:
        return None
    question = Record("template", (("<image>\n{question}", ""),))
    return {
        "router": {
            "kind": method.opts.router,
            "adapter": f"adapters/{ROUTER}" if method.opts.router == "mllm" else None,
            "prompt": method.routing_prompt(question),
            "answer": "the letter of the expert (the first capital letter of its answer)",
            # set: the router was trained to answer from the LM's first N layers, so it must
            # be run truncated to them (None: the whole LM)
            "layers": method.router_layers(),
            # what the prompt starts with, and who reads it (see Backbone.sharing_prefix)
            "expert_list": method.expert_list(),
            "expert_list_read_by": "the base model (every adapter off), then the router adapter "
            "reads the rest of the prompt from its keys and values"
            if method.backbone.shares_prefix
            else "the router adapter, with the rest of the prompt",
        },
        "experts": [
            {
                "task": n,
                "letter": method.letter(n),
                "description": method.descriptions[n],
                "adapter": f"adapters/{n}",
            }
            for n in method.experts
        ],
    }


def export_run(run_dir: Path, out: Path, step: int | None = None) -> dict[str, Any]:
    """Export the run in `run_dir` (as after step `step`, default the last committed) into the
    new folder `out`; returns export.json's content."""
    run_dir, out = Path(run_dir), Path(out)
    if out.exists():
        raise MmclError(f"{out} exists; choose a new folder for the export")
    cfg, backbone, method, state = trained_run(run_dir, step)
    if method.not_exportable:
        raise MmclError(
            f"export: {method.name} cannot be exported as peft adapters: "
            f"{method.not_exportable}; evaluate it with mmcl"
        )
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "adapters").mkdir(parents=True)
    try:
        if cfg.model.backbone == "hf-native":
            base = str(cfg.model.path.resolve())
        elif cfg.model.backbone == "composed":
            export_embedded_base(backbone, tmp / "base")
            base = str((out / "base").resolve())
        else:
            raise MmclError(
                f"export: backbone {cfg.model.backbone!r} has no transformers counterpart; "
                "export covers the embedded model and hf-native"
            )
        adapters = {}
        for name in backbone.adapters:
            export_adapter(backbone, name, tmp / "adapters" / name, base)
            adapters[name] = f"adapters/{name}"
        routing = routing_info(method)
        if routing is not None:
            write_json(tmp / "routing.json", routing)
        done = state["next_step"]
        info = {
            "run": str(run_dir),
            "benchmark": cfg.benchmark,
            "method": method.name,
            "seed": cfg.seed,
            "tasks": [t.name for t in method.tasks],
            "tasks_trained": done,
            "finished": done >= len(method.tasks),
            "base": "base" if cfg.model.backbone == "composed" else base,
            "adapters": adapters,
            "max_rank": max((backbone.adapter_rank(n) for n in adapters), default=0),
            "active_adapters": [] if routing or not adapters else backbone.active_adapters,
        }
        write_json(tmp / "export.json", info)
        write_text(tmp / "README.md", readme(info, routing, cfg.model.backbone == "composed"))
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def readme(info: dict[str, Any], routing: dict[str, Any] | None, embedded: bool) -> str:
    """How to use the exported folder: transformers + peft, and vLLM's multi-LoRA serving."""
    adapters = info["adapters"]
    first = next(iter(adapters), None)
    load = (
        "model = AutoModelForImageTextToText.from_pretrained('base', trust_remote_code=True)\n"
        "processor = AutoProcessor.from_pretrained('base', trust_remote_code=True)"
        if embedded
        else f"model = AutoModelForImageTextToText.from_pretrained('{info['base']}')\n"
        f"processor = AutoProcessor.from_pretrained('{info['base']}')"
    )
    lines = [
        f"# {info['method']} on {info['benchmark']} (seed {info['seed']}), exported by mmcl",
        "",
        f"Trained on {info['tasks_trained']} of {len(info['tasks'])} tasks "
        f"({', '.join(info['tasks'])}). Adapters: {', '.join(adapters) or 'none'}.",
        "",
        "## transformers + peft",
        "",
        "```python",
        "from peft import PeftModel",
        "from PIL import Image",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "",
        load,
    ]
    if first:
        lines += [
            f"model = PeftModel.from_pretrained(model, 'adapters/{first}', adapter_name='{first}')",
            *(
                f"model.load_adapter('adapters/{n}', adapter_name='{n}')"
                for n in list(adapters)[1:]
            ),
            f"model.set_adapter('{first}')",
        ]
    lines += [
        "messages = [{'role': 'user', 'content': [{'type': 'image'}, "
        "{'type': 'text', 'text': 'what is written?'}]}]",
        "prompt = processor.apply_chat_template(messages, add_generation_prompt=True)",
        "inputs = processor(text=[prompt], images=[Image.open('x.png')], return_tensors='pt')",
        "out = model.generate(**inputs, max_new_tokens=24, do_sample=False)",
        "print(processor.batch_decode(out[:, inputs['input_ids'].shape[1]:], "
        "skip_special_tokens=True))",
        "```",
        "",
    ]
    if info["active_adapters"] and len(info["active_adapters"]) > 1:
        lines += [
            f"The run answers with {', '.join(info['active_adapters'])} active together: "
            "`model.base_model.set_adapter([...])`.",
            "",
        ]
    if routing:
        experts = ", ".join(f"{e['letter']} = {e['task']}" for e in routing["experts"])
        lines += [
            "## Routing (routing.json)",
            "",
            f"Experts: {experts}. Ask the `router` adapter its `prompt` with `{{question}}` "
            "filled in (and the image); the letter it answers names the expert adapter that "
            "then answers the question.",
            "",
        ]
    served = " ".join(f"{n}=adapters/{n}" for n in adapters)
    lines += [
        "## vLLM multi-LoRA serving",
        "",
        "```bash",
        f"vllm serve {info['base']} --enable-lora --max-loras {max(1, len(adapters))} "
        f"--max-lora-rank {info['max_rank']} --lora-modules {served}",
        "```",
        "",
        "Each adapter is then a model name of the OpenAI-compatible API "
        '(`"model": "<adapter>"`)'
        + (
            ": send the routing prompt to `router`, then the question to the expert its letter "
            "names."
            if routing
            else "."
        ),
    ]
    if embedded:
        lines += [
            "",
            "vLLM has no implementation of mmcl's embedded architecture (its code is in "
            "`base/modeling_mmcl.py`); the command applies as is to runs of a Hugging Face "
            "model (`model.backbone: hf-native`, e.g. LLaVA-1.5, Qwen2-VL).",
        ]
    return "\n".join(lines) + "\n"
