"""joint: one LoRA trained on all tasks of the stream at once — the multi-task upper bound."""

from mmcl.methods import register
from mmcl.methods.lora_ft import LoraFT


@register
class Joint(LoraFT):
    name = "joint"
    summary = "multi-task training on the union of all tasks (upper bound, not continual)"
    joint = True
