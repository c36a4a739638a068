"""mmcl's embedded MLLM as a transformers model, for folders written by `mmcl export`.

Self-contained on purpose (torch + transformers only, no mmcl): `mmcl export` copies this file
beside the exported weights, so that

    AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)

loads the model where mmcl is not installed, and peft's `PeftModel.from_pretrained` puts the
exported LoRA adapters on it. The module names are mmcl's own (`lm`, `encoders.image`,
`projectors.image`), so the adapters' target names and weights need no translation; the layers
mirror mmcl.models.composed and mmcl.models.tiny, whose weights they load. The marks are
computed here only (`named_classes`, `token_marks`): mmcl.models.tiny calls these functions.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
)


class MmclConfig(PretrainedConfig):
    """A CLIP vision encoder, a projector (an MLP, plus visual-word heads when `word_classes`
    is set) and a Llama LM; `<image>` (`image_token_id`) stands for one image token."""

    model_type = "mmcl"
    sub_configs = {"vision_config": CLIPVisionConfig, "text_config": LlamaConfig}

    def __init__(
        self,
        vision_config: dict | CLIPVisionConfig | None = None,
        text_config: dict | LlamaConfig | None = None,
        image_token_id: int = 4,
        word_classes: list[int] | None = None,
        naming_shape: list[int] | None = None,
        **kwargs,
    ):
        if not isinstance(vision_config, CLIPVisionConfig):
            vision_config = CLIPVisionConfig(**(vision_config or {}))
        if not isinstance(text_config, LlamaConfig):
            text_config = LlamaConfig(**(text_config or {}))
        self.vision_config = vision_config
        self.text_config = text_config
        self.image_token_id = image_token_id
        self.word_classes = list(word_classes or [])
        self.naming_shape = list(naming_shape or [4, 1])  # forms per class, tokens per form
        super().__init__(**kwargs)


class Standardize(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        Standardize(in_dim), nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim)
    )


def named_classes(naming: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """(N, classes) 1.0 where a prompt (N, L; -1 where not prompt) holds a form that names the
    class: `naming` (classes, forms, T) holds each form's token ids right-aligned, -1 before a
    shorter form's first token and for no form."""
    width = naming.shape[-1]
    hit = (naming[None, :, :, -1, None] >= 0) & (prompt >= 0)[:, None, None, :]
    for k in range(width):  # a form's token k places before its last one
        want = naming[None, :, :, width - 1 - k, None]
        seen = nn.functional.pad(prompt, (k, 0), value=-1)[:, None, None, : prompt.shape[1]]
        hit = hit & ((want < 0) | (want == seen))
    return hit.flatten(2).any(-1).float()


def token_marks(probs: list[torch.Tensor], named: torch.Tensor) -> torch.Tensor:
    """(N, tokens): how much each token shows what is named (`named_classes`): the product,
    over the heads a class of which is named, of the token's probability of a named class; 0
    where nothing is named."""
    mark = torch.ones(probs[0].shape[:2], device=named.device)
    for p, n in zip(probs, named.split([q.shape[-1] for q in probs], -1), strict=True):
        mark = mark * torch.where(n.any(-1, keepdim=True), (p * n[:, None, :]).sum(-1), 1.0)
    return mark * named.any(-1, keepdim=True)


class VisualWords(nn.Module):
    """The MLP plus linear heads whose class probabilities map to word embeddings, plus a
    row and a column embedding per token, plus the `asked` vector times the token's mark: the
    probability that it shows what the prompt names (a `naming` row's forms: token ids,
    right-aligned), multiplied over the heads the prompt names a class of; 0 where it names
    nothing."""

    def __init__(self, in_dim: int, out_dim: int, classes: list[int], side: int, naming: list):
        super().__init__()
        self.rows = nn.Parameter(torch.zeros(side, 1, out_dim))
        self.cols = nn.Parameter(torch.zeros(1, side, out_dim))
        self.mlp = _mlp(in_dim, out_dim)
        self.heads = nn.ModuleList([nn.Linear(in_dim, n) for n in classes])
        self.words = nn.Linear(sum(classes), out_dim, bias=False)
        self.asked = nn.Parameter(torch.zeros(out_dim))
        self.register_buffer("naming", torch.full((sum(classes), *naming), -1, dtype=torch.long))

    def forward(self, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        probs = [h(x).softmax(-1) for h in self.heads]
        mark = token_marks(probs, named_classes(self.naming, prompt))
        out = self.mlp(x) + self.words(torch.cat(probs, -1)) + (self.rows + self.cols).flatten(0, 1)
        return out + mark.unsqueeze(-1) * self.asked


class VisionTower(nn.Module):
    """A CLIP vision transformer returning its patch tokens (no CLS)."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.model = CLIPVisionModel(config)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).last_hidden_state[:, 1:]


class MmclForConditionalGeneration(PreTrainedModel):
    config_class = MmclConfig
    base_model_prefix = ""
    _no_split_modules = ["LlamaDecoderLayer", "CLIPEncoderLayer"]

    def __init__(self, config: MmclConfig):
        super().__init__(config)
        vision, text = config.vision_config, config.text_config
        self.lm = LlamaForCausalLM(text)
        self.encoders = nn.ModuleDict({"image": VisionTower(vision)})
        proj = (
            VisualWords(
                vision.hidden_size,
                text.hidden_size,
                config.word_classes,
                vision.image_size // vision.patch_size,
                config.naming_shape,
            )
            if config.word_classes
            else _mlp(vision.hidden_size, text.hidden_size)
        )
        self.projectors = nn.ModuleDict({"image": proj})
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.lm.get_input_embeddings()

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with each image token's replaced by a projected patch feature."""
        emb = self.lm.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            feats = self.encoders["image"](pixel_values)
            proj = self.projectors["image"]
            mask = input_ids == self.config.image_token_id
            if isinstance(proj, VisualWords):  # each image reads its row's prompt before it
                cols = torch.arange(input_ids.shape[1], device=input_ids.device)
                before = cols < mask.int().argmax(1)[:, None]
                per_row = mask.sum(1) * len(feats) // max(int(mask.sum()), 1)
                prompt = input_ids.masked_fill(~before, -1).repeat_interleave(per_row, dim=0)
                feats = proj(feats, prompt)
            else:
                feats = proj(feats)
            mask = mask.unsqueeze(-1)
            emb = emb.masked_scatter(mask, feats.to(emb.dtype))
        return emb

    def forward(self, input_ids, attention_mask, pixel_values=None, **kwargs):
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return self.lm(
            inputs_embeds=self.embed(input_ids, pixel_values),
            attention_mask=attention_mask,
            position_ids=position_ids,
            **kwargs,
        )

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, pixel_values=None, **kwargs):
        """The LM's generation on the merged embeddings; returns the prompts followed by the
        new tokens, as transformers' multimodal models do."""
        new = self.lm.generate(
            inputs_embeds=self.embed(input_ids, pixel_values),
            attention_mask=attention_mask,
            **kwargs,
        )
        return torch.cat([input_ids, new.to(input_ids.device)], 1)
