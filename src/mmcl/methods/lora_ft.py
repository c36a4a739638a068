"""lora-ft: one LoRA adapter trained sequentially through the tasks (MLLM-CL's LoRA-FT)."""

from mmcl.methods import register
from mmcl.methods.base import Method, MethodOptions
from mmcl.models.base import LoraSpec


class LoraOptions(MethodOptions):
    lora: LoraSpec = LoraSpec()


@register
class LoraFT(Method):
    name = "lora-ft"
    summary = "one LoRA trained sequentially on every task (forgets)"
    Options = LoraOptions

    def setup(self) -> None:
        self.backbone.add_lora("main", self.opts.lora)
        self.backbone.use_adapters("main")
        self.backbone.set_trainable(self.backbone.adapter_parameters("main"))
