"""What mr-lora's routing costs at inference, measured on the run's own model: samples/s of
one adapter answering, of the router alone, and of router + routed experts, on the same
batches."""

from __future__ import annotations

import time
from typing import Any, Protocol

from mmcl.data.records import Record
from mmcl.models.base import Backbone, Batch


class Router(Protocol):
    """What the measurement uses of a routing method (mr-lora)."""

    backbone: Backbone
    experts: list[str]  # the trained experts, in order
    opts: Any  # cost_batch_size, cost_repeats

    def route(self, records: list[Record], batch: Batch | None = None) -> tuple[list[str], int]:
        """(expert per record, fallbacks); `batch` gets the records' media encoded once."""

    def activate(self) -> None:
        """Enable the experts for mixed-adapter generation."""


def routing_cost(method: Router, records: list[Record]) -> dict[str, float]:
    """Samples/s of (a) one adapter answering every sample (lora-ft's inference), (b) the
    router alone, (c) router + routed experts; on the same records and batches; and the
    time ratio of (c) to (a), in wall-clock and in CPU seconds. Both paths answer each batch
    with as many tokens as its longest reference (and its end): one adapter answering tasks
    it was not trained on would answer at other lengths, which would weigh in the ratio."""
    backbone = method.backbone
    bs = method.opts.cost_batch_size
    records = sorted(records, key=lambda r: (len(r.prompt), r.id))
    chunks = [records[k : k + bs] for k in range(0, len(records), bs)]

    def collate(chunk):
        return backbone.collate(chunk, train=False).to(backbone.device)

    def answer_length(chunk) -> int:
        refs = [" " + ref for r in chunk for ref in (r.references or (r.turns[-1][1],))]
        ids = backbone.tokenizer(refs, add_special_tokens=False).input_ids
        longest = max(len(i) for i in ids) + 1  # and its end
        return min(longest, backbone.max_new_tokens)

    method.route(collate(chunks[0][:2]))  # warm-up of both paths
    backbone.use_adapters(method.experts[-1])
    backbone.generate(collate(chunks[0][:2]))
    wall = {"single": 0.0, "router": 0.0, "routed": 0.0}
    cpu = dict(wall)  # this process's CPU seconds: other processes barely disturb them

    def clock() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    # Both paths start from the same prepared batch (media decoded once, as in serving);
    # the routed path encodes the media once for router and experts. Interleaved and
    # repeated, so that a change of machine load hits both alike.
    lengths = [answer_length(chunk) for chunk in chunks]
    for _ in range(method.opts.cost_repeats):
        for chunk, n in zip(chunks, lengths, strict=True):
            batch = collate(chunk)  # afresh: routing stores its media features in the batch
            backbone.use_adapters(method.experts[-1])
            t0 = clock()
            backbone.generate(batch, max_new_tokens=n, min_new_tokens=n)
            t1 = clock()
            names, _ = method.route(batch)
            t2 = clock()
            method.activate()
            backbone.generate(batch, adapter_names=names, max_new_tokens=n, min_new_tokens=n)
            t3 = clock()
            for k, (a, b) in {
                "single": (t0, t1),
                "router": (t1, t2),
                "routed": (t1, t3),
            }.items():
                wall[k] += b[0] - a[0]
                cpu[k] += b[1] - a[1]
    n = len(records) * method.opts.cost_repeats
    return {
        "probe_samples": len(records),
        "batch_size": bs,
        "repeats": method.opts.cost_repeats,
        "single_adapter_samples_per_s": round(n / wall["single"], 2),
        "router_samples_per_s": round(n / wall["router"], 2),
        "routed_samples_per_s": round(n / wall["routed"], 2),
        "routed_vs_single": round(wall["single"] / wall["routed"], 3),
        "time_ratio": round(wall["routed"] / wall["single"], 3),
        "cpu_time_ratio": round(cpu["routed"] / cpu["single"], 3),
    }
