"""hf-native: any Hugging Face image-text-to-text model with its own processor, from a folder.

LLaVA-1.5-hf, Qwen2-VL, Qwen2.5-VL and similar load through `AutoModelForImageTextToText` +
`AutoProcessor`, and sit behind the same Backbone interface as the embedded model:

- prompts are rendered with the processor's chat template, turn by turn, so that the labels
  cover exactly the answer tokens (and the end-of-turn token the template writes, or EOS);
- the processor expands image placeholders and returns its extra tensors (`pixel_values`,
  `image_grid_thw`, ...), which travel in `Batch.media`;
- generation is greedy, batched, with left padding;
- LoRA targets are the linear layers of the language model only: a bare `q_proj|v_proj` would
  also hit the vision tower of LLaVA.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch import nn
from transformers import AutoModelForImageTextToText, AutoProcessor, GenerationConfig

from mmcl.data.records import PLACEHOLDER, Record
from mmcl.errors import MmclError
from mmcl.io import process_state
from mmcl.models.base import IGNORE, Backbone, Batch, is_per_token
from mmcl.models.loading import (
    finish,
    linear_regex,
    load_model,
    local_dir,
    module_name,
    quantization,
)

if TYPE_CHECKING:
    from mmcl.config import ModelSettings

_IMAGE = PLACEHOLDER["image"]
_LM_NAMES = ("language_model", "text_model", "llm")
_VISION_NAMES = ("vision_tower", "visual", "vision_model", "vision_encoder")
# Not quantized in 8/4 bit: the vision side and the output layer stay in model.dtype.
_KEEP_FULL = ["vision_tower", "visual", "vision_model", "multi_modal_projector", "lm_head"]


def _find(core: nn.Module, names: Sequence[str]) -> nn.Module | None:
    for owner in (getattr(core, "model", None), core):
        for n in names:
            m = getattr(owner, n, None) if owner is not None else None
            if isinstance(m, nn.Module):
                return m
    return None


def load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as e:
        raise MmclError(f"cannot read image {path}: {e}") from e


def _content(human: str) -> list[dict[str, str]]:
    """A human turn of a record -> chat-template content: images and text in their order."""
    content = []
    for k, chunk in enumerate(human.split(_IMAGE)):
        if k:
            content.append({"type": "image"})
        if chunk.strip():
            content.append({"type": "text", "text": chunk.strip()})
    return content


class HFNativeBackbone(Backbone):
    """Backbone over an `*ForConditionalGeneration` image-text-to-text model and its processor."""

    def __init__(self, core: nn.Module, processor: Any, max_new_tokens: int = 24):
        super().__init__(core, processor.tokenizer, max_new_tokens)
        self.processor = processor
        tok = self.tokenizer
        if tok.pad_token_id is None:  # Llama-style tokenizers have none; padding is masked out
            tok.pad_token = tok.eos_token
        self.pad, self.eos = tok.pad_token_id, tok.eos_token_id
        stops = getattr(core.generation_config, "eos_token_id", None)
        stops = [stops] if isinstance(stops, int) else list(stops or [])
        self.stop_ids = sorted({*stops, self.eos} - {None})
        lm = _find(core, _LM_NAMES)
        if lm is None:
            raise MmclError(f"{type(core).__name__}: cannot find its language model")
        self.lm_lora_targets = linear_regex(core, module_name(core, lm))
        self._vision = _find(core, _VISION_NAMES)
        self._blocks = self._vision_block_list()
        if self._blocks is not None:
            self.vision_lora_targets = linear_regex(core, module_name(core, self._blocks))

    def _decoder(self) -> nn.Module | None:
        """The language model's decoder (LLaVA's, Qwen2-VL's), as transformers exposes it."""
        decoder = self.core.get_decoder() if hasattr(self.core, "get_decoder") else None
        return decoder if isinstance(getattr(decoder, "layers", None), nn.ModuleList) else None

    # --- the vision side --------------------------------------------------------------------
    def _vision_block_list(self) -> nn.ModuleList | None:
        if self._vision is None:
            return None
        return next(
            (m for m in self._vision.modules() if isinstance(m, nn.ModuleList) and len(m)), None
        )

    def encoder_parameters(self) -> dict[str, nn.Parameter]:
        if self._vision is None:
            return {}
        prefix = module_name(self.core, self._vision) + "."
        return {n: p for n, p in self.core.named_parameters() if n.startswith(prefix)}

    def vision_blocks(self) -> list[nn.Module]:
        arch = type(self.core).__name__
        if self._blocks is None:
            raise MmclError(f"{arch} exposes no vision-encoder blocks")
        if "cu_seqlens" in inspect.signature(self._blocks[0].forward).parameters:
            raise MmclError(
                f"{arch}'s vision blocks run on the packed patches of all images at once (no "
                "batch dimension), so per-image block outputs, which methods that expand the "
                "vision encoder need (unifier), do not exist; use a LLaVA-style model "
                "(CLIP/SigLIP vision tower) or the composed backbone"
            )
        # LLaVA-style models feed the LM an earlier block's output (`vision_feature_layer`, an
        # index into the hidden states, whose first is the embeddings; -2 for LLaVA-1.5), so
        # the blocks after it are not part of the model: nothing trains through them.
        n = len(self._blocks)
        layer = getattr(self.core.config, "vision_feature_layer", -1)
        layers = layer if isinstance(layer, list | tuple) else [layer]
        return list(self._blocks)[: max(k if k >= 0 else n + 1 + k for k in layers)]

    def media_mask(self, batch: Batch) -> torch.Tensor:
        cfg = self.core.config
        names = ("image_token_id", "image_token_index", "video_token_id", "audio_token_id")
        ids = [i for i in (getattr(cfg, n, None) for n in names) if isinstance(i, int)]
        if not ids:
            raise MmclError(f"{type(self.core).__name__}: its config names no media token id")
        return torch.isin(batch.input_ids, torch.tensor(ids, device=batch.input_ids.device))

    # --- prompts ----------------------------------------------------------------------------
    def _render(self, messages: list[dict], generation: bool) -> str:
        return self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation
        )

    def _pieces(self, rec: Record, train: bool) -> list[tuple[str, bool]]:
        """The conversation as consecutive text pieces, (text, is_answer); each turn's prompt is
        rendered by the chat template and each answer is what the template adds after it
        (trailing whitespace goes to the next prompt)."""
        messages: list[dict] = []
        pieces: list[tuple[str, bool]] = []
        done, rendered = 0, ""
        for k, (human, answer) in enumerate(rec.turns):
            if k and _IMAGE in human:
                raise MmclError(f"record {rec.id}: hf-native reads images in the first turn only")
            messages.append({"role": "user", "content": _content(human)})
            prompt = self._render(messages, generation=True)
            if not prompt.startswith(rendered):
                raise MmclError(self._template_error(rec))
            pieces.append((prompt[done:], False))
            if not train and k == len(rec.turns) - 1:
                break
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
            rendered = self._render(messages, generation=False)
            if not rendered.startswith(prompt):
                raise MmclError(self._template_error(rec))
            ans = rendered[len(prompt) :].rstrip()
            pieces.append((ans, True))
            done = len(prompt) + len(ans)
        return pieces

    def _template_error(self, rec: Record) -> str:
        return (
            f"record {rec.id}: the chat template of {type(self.core).__name__} does not render "
            "a conversation as a prefix of its continuation, so answer tokens cannot be located"
        )

    def _text_ids(self, text: str, answer: bool) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if answer and not set(ids) & set(self.stop_ids):  # the model must learn to stop
            ids = ids + [self.eos]
        return ids

    # --- Backbone ---------------------------------------------------------------------------
    def collate(self, records: Sequence[Record], train: bool = True) -> Batch:
        for r in records:
            other = sorted(set(r.media) - {"image"})
            if other:
                raise MmclError(f"record {r.id}: hf-native reads images only, not {other}")
        pieces = [self._pieces(r, train) for r in records]
        images = [load_image(p) for r in records for p in r.media.get("image", ())]
        first = [p[0][0] for p in pieces]
        bos = self.tokenizer.bos_token
        # The processor tokenizes the first piece (it expands the image placeholders there);
        # templates that already write BOS must not get a second one.
        enc = self.processor(
            text=first,
            images=images or None,
            return_tensors="pt",
            padding=True,
            add_special_tokens=not (bos and first[0].startswith(bos)),
        )
        ids0, mask0 = enc.pop("input_ids"), enc.pop("attention_mask").bool()
        per_token = {k: v for k, v in enc.items() if is_per_token(v, ids0)}
        media = {k: v for k, v in enc.items() if k not in per_token}
        seqs = []
        for i, rec_pieces in enumerate(pieces):
            ids = ids0[i][mask0[i]].tolist()
            labels = [IGNORE] * len(ids)
            extra = {k: v[i][mask0[i]] for k, v in per_token.items()}
            for text, is_answer in rec_pieces[1:]:
                more = self._text_ids(text, is_answer)
                ids += more
                # at test time earlier answers are context, not labels
                labels += more if is_answer and train else [IGNORE] * len(more)
                for k, v in extra.items():  # text tokens carry type 0 in per-token extras
                    extra[k] = torch.cat([v, v.new_zeros((len(more), *v.shape[1:]))])
            seqs.append((ids, labels, extra))
        width = max(len(s[0]) for s in seqs)
        n = len(seqs)
        ids = torch.full((n, width), self.pad, dtype=torch.long)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        padded = {k: v.new_zeros((n, width, *v.shape[2:])) for k, v in per_token.items()}
        for i, (s, lab, extra) in enumerate(seqs):
            sl = slice(0, len(s)) if train else slice(width - len(s), width)
            ids[i, sl], labels[i, sl], mask[i, sl] = torch.tensor(s), torch.tensor(lab), 1
            for k, v in extra.items():
                padded[k][i, sl] = v
        return Batch(list(records), ids, mask, labels if train else None, {**media, **padded})

    def _forward(self, batch: Batch, hidden: bool, window: int = 0, **kw):
        out = self.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            **batch.media,
            output_hidden_states=hidden,
            use_cache=False,
            logits_to_keep=window,
            **kw,
        )
        return out.logits, (out.hidden_states[-1] if hidden else None)

    def _generate(self, batch: Batch, max_new_tokens: int, **kw):
        # A fresh greedy config: a checkpoint's own sampling defaults must not leak in.
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad,
        )
        out = self.model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            **batch.media,
            generation_config=config,
            # Several processes step together until all are done: sharded weights (ZeRO-3)
            # are gathered at every step. The evaluator makes equal numbers of calls.
            synced_gpus=process_state().num_processes > 1,
            **kw,
        )
        return out[:, batch.input_ids.shape[1] :]


# --- loading --------------------------------------------------------------------------------
def load_processor(path: Path) -> Any:
    """AutoProcessor from a local folder. Without torchvision, processors that also handle
    video (Qwen2-VL, Qwen2.5-VL) cannot build their video part; mmcl feeds images only, so
    they are then loaded without it."""
    try:
        return AutoProcessor.from_pretrained(str(path), local_files_only=True)
    except ImportError as e:
        if "torchvision" not in str(e).lower():
            raise MmclError(f"model.path = {path}: cannot load its processor: {e}") from e
        return _image_only_processor(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MmclError(f"model.path = {path}: cannot load its processor: {e}") from e


def _image_only_processor(path: Path) -> Any:
    import transformers

    name = None
    for f in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        if (path / f).is_file():
            name = name or json.loads((path / f).read_text()).get("processor_class")
    base = getattr(transformers, name or "", None)
    if base is None:
        raise MmclError(f"model.path = {path}: cannot tell which processor class it uses")

    class ImageOnly(base):
        @classmethod
        def get_attributes(cls) -> list[str]:
            return [a for a in super().get_attributes() if "video" not in a]

    ImageOnly.__name__ = ImageOnly.__qualname__ = base.__name__
    return ImageOnly.from_pretrained(str(path), local_files_only=True)


def load_hf_native(settings: ModelSettings) -> HFNativeBackbone:
    """The `hf-native` backbone of a config's model section."""
    path = local_dir(settings.path, "model.path")
    processor = load_processor(path)
    dtype = getattr(torch, settings.dtype)
    quant = quantization(settings.quantize, _KEEP_FULL, dtype)
    core = load_model(AutoModelForImageTextToText, path, "model.path", dtype=dtype, **quant)
    core = finish(core, bool(quant), settings.gradient_checkpointing)
    return HFNativeBackbone(core, processor)
