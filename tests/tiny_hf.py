"""Test helpers: tiny Hugging Face MLLMs saved like real checkpoints, and small data files in
the LLaVA / MLLM-CL layouts. Everything is built offline from configs (no hub)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from mmcl.config import ExperimentConfig, load_config
from mmcl.io import torch_threads
from mmcl.pretraining.base import train_tokenizer


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread and lose much on a busy machine (OpenMP
    threads spin-waiting on shared cores); restores the setting afterwards."""
    with torch_threads(1):
        yield


# The chat templates of llava-hf/llava-1.5-7b-hf and Qwen2-VL, in short.
LLAVA_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ c['text'] + ' ' }}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_SPECIALS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def save_tiny_llava(folder: Path, seed: int = 0) -> Path:
    """A ~0.2M-parameter LlavaForConditionalGeneration + LlavaProcessor in `folder`."""
    torch.manual_seed(seed)
    tok = train_tokenizer(600)
    vision = CLIPVisionConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
    )
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    LlavaForConditionalGeneration(cfg).save_pretrained(folder)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    ).save_pretrained(folder)
    return folder


def save_tiny_qwen2vl(folder: Path, seed: int = 0) -> Path:
    """A tiny Qwen2VLForConditionalGeneration with its processor's files in `folder`, written
    file by file as in a released checkpoint (the processor object itself needs torchvision
    for its video part)."""
    torch.manual_seed(seed)
    tok = train_tokenizer(600)
    tok.add_tokens(QWEN_SPECIALS, special_tokens=True)
    tok.eos_token = "<|im_end|>"
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    cfg = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "rope_parameters": {
                "rope_type": "default",
                "mrope_section": [4, 6, 6],
                "rope_theta": 10000.0,
            },
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        },
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 64,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 8,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    Qwen2VLForConditionalGeneration(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    # 32 x 32 pixels whatever the input: 4 x 4 patches of 8, merged 2 x 2 -> 4 image tokens
    Qwen2VLImageProcessorPil(
        patch_size=8,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": 32 * 32, "longest_edge": 32 * 32},
    ).save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(QWEN_TEMPLATE)
    (folder / "processor_config.json").write_text(
        json.dumps({"processor_class": "Qwen2VLProcessor"})
    )
    return folder


COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


def colour_records(folder: Path, prefix: str, n: int, seed: int) -> list[dict]:
    """`n` images of a coloured square in `folder/images`, with a question about the colour.
    Returns (id, image path relative to folder, question, answer) dicts."""
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        colour = rng.choice(sorted(COLOURS))
        name = f"images/{prefix}-{i:03d}.png"
        img = Image.new("RGB", (32, 32), (250, 250, 250))
        x, y = rng.randint(0, 12), rng.randint(0, 12)
        img.paste(COLOURS[colour], (x, y, x + 20, y + 20))
        img.save(folder / name)
        question = rng.choice(["what colour is the square?", "which colour do you see?"])
        rows.append({"id": f"{prefix}-{i:03d}", "image": name, "q": question, "a": colour})
    return rows


def write_llava(path: Path, rows: list[dict]) -> None:
    """LLaVA conversation JSON (training layout)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = [
        {
            "id": r["id"],
            "image": r["image"],
            "conversations": [
                {"from": "human", "value": f"<image>\n{r['q']}"},
                {"from": "gpt", "value": r["a"]},
            ],
        }
        for r in rows
    ]
    path.write_text(json.dumps(data))


def write_mllm_cl_test(path: Path, rows: list[dict], **extra) -> None:
    """MLLM-CL test JSON: {question_id, image, text, answer} (+ extra keys, e.g. answer_type)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = [
        {"question_id": r["id"], "image": r["image"], "text": r["q"], "answer": r["a"], **extra}
        for r in rows
    ]
    path.write_text(json.dumps(data))


def write_colour_stream(root: Path, tasks: list[str], n_train: int, n_test: int) -> Path:
    """A stream YAML with one colour task per name (LLaVA train, MLLM-CL test files)."""
    lines = ["name: colours", "tasks:"]
    for k, name in enumerate(tasks):
        folder = root / name
        write_llava(folder / "train.json", colour_records(folder, f"{name}-tr", n_train, k))
        write_mllm_cl_test(
            folder / "test.json", colour_records(folder, f"{name}-te", n_test, 99 + k)
        )
        lines += [
            f"  - name: {name}",
            f"    train: {name}/train.json",
            f"    test: {name}/test.json",
            "    scorer: lenient",
            f"    description: colours of squares ({name})",
        ]
    path = root / "stream.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def micro_stream_config(data: Path, model_dir: Path, method: str) -> ExperimentConfig:
    """A 2-task colour stream (16 train, 6 test samples each) in `data`, and the config of a
    short run of `method` on it with the hf-native model saved in `model_dir`."""
    stream = write_colour_stream(data, ["first", "second"], n_train=16, n_test=6)
    return load_config(
        None,
        {
            "benchmark": str(stream),
            "model.backbone": "hf-native",
            "model.path": str(model_dir),
            "method.name": method,
            "train.epochs": 1,
            "train.batch_size": 8,
            "eval.batch_size": 4,
            "eval.max_new_tokens": 4,
        },
    )
