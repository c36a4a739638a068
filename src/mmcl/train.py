"""The training loop: one loop for every method, on `accelerate`, calling the method's hooks.

It trains whatever parameters have requires_grad set (the method decides), adds the method's
extra loss terms to the answer-token loss, and reports samples/s.

Under FSDP (FSDP2: `fully_shard`, which shards modules in place) the sharding lives only while
a task trains: accelerate shards a shell of the model (its own modules, the model's tensors),
and at the end the trained weights are gathered whole into the model. Between tasks every
process holds the plain, whole model, as under DDP, so evaluation, the methods' hooks and
checkpoints need not know about sharding.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import (
    DistributedDataParallelKwargs,
    DistributedType,
    FullyShardedDataParallelPlugin,
    parse_flag_from_env,
)
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.utils.data import DataLoader
from transformers import get_cosine_schedule_with_warmup

from mmcl.config import TrainSettings
from mmcl.data.records import Record
from mmcl.errors import MmclError
from mmcl.methods.base import Method

__all__ = ["TrainSettings", "TrainStats", "train"]  # TrainSettings lives in config

if TYPE_CHECKING:
    from mmcl.models.base import Backbone


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
    # Without CUDA, cpu=True makes processes talk over gloo, but it also turns DeepSpeed off;
    # DeepSpeed runs on CPUs by itself (its CPU accelerator, gloo), so it is not told.
    acc = Accelerator(
        cpu=not torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"),
        gradient_accumulation_steps=grad_accum,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    if acc.distributed_type == DistributedType.MULTI_CPU and parse_flag_from_env(
        "ACCELERATE_USE_FSDP"
    ):
        # accelerate turns FSDP on for GPUs only and falls back to DDP on CPUs without a word;
        # FSDP2 runs on CPU processes too (gloo), which lets the CPU tests check it.
        acc.state.distributed_type = DistributedType.FSDP
        acc.state.fsdp_plugin = FullyShardedDataParallelPlugin()
    if acc.distributed_type == DistributedType.FSDP:
        plugin = acc.state.fsdp_plugin
        if plugin.fsdp_version != 2 or plugin.cpu_ram_efficient_loading:
            raise MmclError(
                "FSDP: mmcl needs fsdp_version: 2 and fsdp_cpu_ram_efficient_loading: false "
                "(every process loads the whole model; see configs/accelerate/fsdp.yaml)"
            )
    return acc


def _shell(model: nn.Module) -> nn.Module:
    """A copy of `model`'s module tree holding the very same parameters and buffers, for FSDP2
    to shard in place while `model` stays whole."""
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo=shared)


def _gather_trained(shell: nn.Module, model: nn.Module) -> None:
    """Copy the trained (sharded) weights of `shell` whole into `model`, on every process (a
    collective: all processes call it)."""
    options = StateDictOptions(full_state_dict=True, ignore_frozen_params=True)
    trained = get_model_state_dict(shell, options=options)
    unexpected = model.load_state_dict(trained, strict=False).unexpected_keys
    if unexpected:
        raise MmclError(f"FSDP: trained weights the model does not have: {unexpected[:5]}")


def _after_epoch(method: Method, epoch: int, watched: list[nn.Parameter], desc: str) -> None:
    """The method's `after_epoch`; under FSDP (`watched`: the model's trained weights) an error
    if it moved them, since the shards that train would not see it."""
    before = [p.detach().clone() for p in watched]
    method.after_epoch(epoch)
    if any(not torch.equal(b, p) for b, p in zip(before, watched, strict=True)):
        raise MmclError(
            f"{desc}: {method.name} moves the weights after each epoch, which FSDP's shards "
            "would not see; train it with DDP or DeepSpeed ZeRO-2"
        )


def optimizer_and_schedule(
    params: list[nn.Parameter], settings: TrainSettings, total: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW and its cosine schedule, warming up over `settings.warmup_ratio` of `total` steps:
    what each task's training starts afresh."""
    # foreach: one kernel a step over all the tensors, which torch picks by itself on GPUs only;
    # on a CPU it gives the per-tensor loop's values to the bit in some 30% less time.
    opt = torch.optim.AdamW(
        params, lr=settings.lr, weight_decay=settings.weight_decay, foreach=True
    )
    return opt, get_cosine_schedule_with_warmup(opt, int(settings.warmup_ratio * total), total)


def train(
    backbone: Backbone,
    records: list[Record],
    settings: TrainSettings,
    seed: int,
    method: Method | None = None,
    desc: str = "train",
    log: Callable[[dict[str, float]], None] | None = None,
) -> TrainStats:
    """Train the backbone's trainable parameters on `records`; `log`, if given, gets the
    first process's figures of every batch (loss, answer_loss, the method's terms, lr,
    samples_per_s)."""
    params = list(backbone.trainable_parameters().values())
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
    opt, sched = optimizer_and_schedule(params, settings, total)
    plain = backbone.model
    sharded = acc.distributed_type == DistributedType.FSDP
    # Under FSDP, the weights an after_epoch hook could move: only a hook of the method's own.
    hooked = method is not None and type(method).after_epoch is not Method.after_epoch
    watched = params if sharded and hooked else []
    wrapped, opt, loader, sched = acc.prepare(
        _shell(plain) if sharded else plain, opt, loader, sched
    )
    clipped = [p for group in opt.param_groups for p in group["params"]]  # FSDP: the shards
    torch.manual_seed(seed)  # dropout and any sampling inside the step
    done, seen, loss_ema, t0 = 0, 0, float("nan"), time.perf_counter()
    with backbone.running_as(wrapped):
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
            epoch = 0
            while done < n_batches:
                for batch in loader:
                    with acc.accumulate(wrapped):
                        batch = method.prepare_batch(batch) if method is not None else batch
                        out = backbone.forward(batch)
                        loss = out.loss
                        if acc.num_processes > 1:
                            # DDP averages gradients; weighting each process's token mean by
                            # its share of the batch's answer tokens makes that the mean over
                            # all answer tokens, as in one process.
                            n = out.answer_mask.sum().float()
                            loss = loss * n * acc.num_processes / acc.reduce(n, "sum").clamp(min=1)
                        terms = method.loss(batch, out) if method is not None else {}
                        for term in terms.values():
                            loss = loss + term
                        acc.backward(loss)
                        if sharded and done == 0 and any(p.grad is not None for p in params):
                            raise MmclError(
                                f"{desc}: the {method.name if method else 'training'} loss "
                                "reads weights outside the model's forward pass, which FSDP "
                                "cannot shard; train it with DDP or DeepSpeed ZeRO-2"
                            )
                        if acc.sync_gradients:
                            acc.clip_grad_norm_(clipped, settings.max_grad_norm)
                        lr = opt.param_groups[0]["lr"]  # this batch's, before the schedule steps
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
                    if log is not None and acc.is_main_process:
                        figures = {"loss": lv, "answer_loss": out.loss.item()}
                        figures.update({k: float(v.detach()) for k, v in terms.items()})
                        log({**figures, "lr": lr, "samples_per_s": sps})
                    quiet = bar.console.is_terminal or not acc.is_main_process
                    if not quiet and done % max(1, n_batches // 5) == 0:
                        bar.console.print(
                            f"{desc}: {done}/{n_batches} batches, loss "
                            f"{loss_ema:.3f}, {sps:.0f} samples/s"
                        )
                    if done >= n_batches:
                        break
                if method is not None:
                    _after_epoch(method, epoch, watched, desc)
                epoch += 1
        if sharded:
            _gather_trained(wrapped, plain)
    return TrainStats(seen, time.perf_counter() - t0, loss_ema)
