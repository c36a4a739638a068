"""finetune: full sequential fine-tuning of the LM and projector, task after task."""

from pydantic import Field

from mmcl.methods import register
from mmcl.methods.base import Method, MethodOptions


class FinetuneOptions(MethodOptions):
    vision: bool = Field(False, description="also train the vision encoder (LLaVA freezes it)")


@register
class Finetune(Method):
    name = "finetune"
    summary = "full sequential fine-tuning (LM + projector), no protection against forgetting"
    Options = FinetuneOptions
    # Full fine-tuning moves every weight: a LoRA-sized lr would wreck the base model.
    train_defaults = {"lr": 3e-4}

    def setup(self) -> None:
        bb = self.backbone
        bb.set_trainable(
            dict(bb.core.named_parameters()) if self.opts.vision else bb.non_encoder_parameters()
        )
