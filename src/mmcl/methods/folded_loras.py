"""The earlier tasks' LoRAs of a method that keeps every task's LoRA active (o-lora, sefe),
held as one: their A's stacked, B's side by side (`Backbone.stack_loras`), an update exactly
the sum of theirs. A pass then runs two LoRAs (the earlier ones' and the current task's)
whatever the number of tasks; the folded LoRA's rank grows by r per task."""

from __future__ import annotations

from typing import Any

from mmcl.models.base import Backbone, LoraSpec


class FoldedLoras:
    def __init__(self, backbone: Backbone, lora: LoraSpec):
        self.backbone, self.lora = backbone, lora
        self.learned = 0  # tasks whose LoRA is folded into `past`
        self.past: str | None = None  # the folded LoRA's adapter name

    def spec(self, tasks: int) -> LoraSpec:
        """The LoRA of `tasks` tasks side by side: their ranks summed, the same scale."""
        return self.lora.model_copy(
            update={"r": self.lora.r * tasks, "alpha": self.lora.alpha * tasks}
        )

    def active(self, current: str | None) -> list[str]:
        """The adapters a pass runs: the folded ones and the current task's."""
        return [n for n in (self.past, current) if n]

    def use(self, current: str | None) -> None:
        """Activate the folded LoRA and `current` (peft's switch makes them trainable)."""
        self.backbone.use_adapters(self.active(current))

    def fold(self, current: str, step: int) -> None:
        """Fold `current`, the finished task's LoRA, into the earlier ones' (frozen)."""
        folded = self.active(current)
        self.learned += 1
        self.past = f"tasks0to{step}"
        self.backbone.stack_loras(folded, self.past, self.spec(self.learned))

    def state_dict(self) -> dict[str, Any]:
        # Kept here: no task's training touched the folded LoRA's weights.
        weights = self.backbone.adapter_parameters(self.past) if self.past else {}
        return {
            "learned": self.learned,
            "past": self.past,
            "weights": {n: p.detach().clone() for n, p in weights.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Re-add the folded LoRA with its weights, frozen."""
        self.learned = int(state.get("learned") or 0)
        self.past = state.get("past")
        if self.past:
            self.backbone.add_lora(self.past, self.spec(self.learned))
            self.backbone.load_adapter(self.past, state["weights"])
