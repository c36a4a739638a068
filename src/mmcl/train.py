"""The training loop: one loop for every method, on `accelerate`, calling the method's hooks.

It trains whatever parameters have requires_grad set (the method decides), adds the method's
extra loss terms to the answer-token loss, and reports samples/s.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import DistributedDataParallelKwargs
from pydantic import BaseModel, Field
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader
from transformers import get_cosine_schedule_with_warmup

from mmcl.data.records import Record
from mmcl.errors import MmclError

if TYPE_CHECKING:
    from mmcl.methods.base import Method
    from mmcl.models.base import Backbone


class TrainSettings(BaseModel, extra="forbid"):
    """Optimisation settings of one training stage. The defaults suit LoRA on the embedded tiny
    model (the demo); pretrained 7B-class models want lr ~1e-4 and 1 epoch (see configs/)."""

    epochs: float = Field(3, gt=0, description="passes over the task's training data")
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)


@dataclass
class TrainStats:
    samples: int
    seconds: float
    loss: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0


def _accelerator(grad_accum: int) -> Accelerator:
    # split_batches: `batch_size` is the global batch, split across processes, so N processes
    # take the same optimisation steps as one. Unused parameters: routed adapters and experts.
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=grad_accum,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def train(
    backbone: Backbone,
    records: list[Record],
    settings: TrainSettings,
    seed: int,
    method: Method | None = None,
    desc: str = "train",
) -> TrainStats:
    """Train the backbone's trainable parameters on `records`."""
    params = [p for p in backbone.core.parameters() if p.requires_grad]
    if not params:
        raise MmclError(f"{desc}: nothing to train (no parameter requires grad)")
    if not records:
        raise MmclError(f"{desc}: no training records")
    acc = _accelerator(settings.grad_accum)
    if settings.batch_size % acc.num_processes:
        raise MmclError(
            f"{desc}: train.batch_size ({settings.batch_size}) is the global batch and must be a "
            f"multiple of the number of processes ({acc.num_processes})"
        )
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        records,
        batch_size=settings.batch_size,
        shuffle=True,
        generator=gen,
        collate_fn=lambda rs: backbone.collate(rs, train=True),
    )
    steps_per_epoch = math.ceil(len(loader) / settings.grad_accum)
    total = max(1, math.ceil(steps_per_epoch * settings.epochs))
    n_batches = math.ceil(len(loader) * settings.epochs)
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, int(settings.warmup_ratio * total), total)
    plain = backbone.model
    backbone.model, opt, loader, sched = acc.prepare(plain, opt, loader, sched)
    backbone.model.train()
    torch.manual_seed(seed)  # dropout and any sampling inside the step
    done, seen, loss_ema, t0 = 0, 0, float("nan"), time.perf_counter()
    try:
        with Progress(
            TextColumn(f"[bold]{desc}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]:.3f}"),
            TextColumn("{task.fields[sps]:.0f} samples/s"),
            TimeRemainingColumn(),
            disable=not acc.is_main_process,
            transient=False,
        ) as bar:
            job = bar.add_task(desc, total=n_batches, loss=float("nan"), sps=0.0)
            while done < n_batches:
                for batch in loader:
                    with acc.accumulate(backbone.model):
                        out = backbone.forward(batch)
                        loss = out.loss
                        if acc.num_processes > 1:
                            # DDP averages gradients; weighting each process's token mean by
                            # its share of the batch's answer tokens makes that the mean over
                            # all answer tokens, as in one process.
                            n = out.answer_mask.sum().float()
                            loss = loss * n * acc.num_processes / acc.reduce(n, "sum").clamp(min=1)
                        if method is not None:
                            for term in method.loss(batch, out).values():
                                loss = loss + term
                        acc.backward(loss)
                        if acc.sync_gradients:
                            acc.clip_grad_norm_(params, settings.max_grad_norm)
                        opt.step()
                        sched.step()
                        opt.zero_grad(set_to_none=True)
                    if not math.isfinite(loss.item()):
                        raise MmclError(f"{desc}: loss is {loss.item()} (lower the lr?)")
                    lv = loss.item()
                    loss_ema = lv if math.isnan(loss_ema) else 0.95 * loss_ema + 0.05 * lv
                    done += 1
                    seen += len(batch) * acc.num_processes
                    sps = seen / (time.perf_counter() - t0)
                    bar.update(job, advance=1, loss=loss_ema, sps=sps)
                    quiet = bar.console.is_terminal or not acc.is_main_process
                    if not quiet and done % max(1, n_batches // 5) == 0:
                        bar.console.print(
                            f"{desc}: {done}/{n_batches} batches, loss "
                            f"{loss_ema:.3f}, {sps:.0f} samples/s"
                        )
                    if done >= n_batches:
                        break
    finally:
        backbone.model = plain
        backbone.model.eval()
    return TrainStats(seen, time.perf_counter() - t0, loss_ema)
