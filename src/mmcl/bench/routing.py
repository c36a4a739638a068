"""Routed inference: MR-LoRA's router + experts against one adapter answering everything."""

from __future__ import annotations

from mmcl.bench.common import BenchPreset, fixed_length, mixed, timed
from mmcl.bench.throughput import generate_all
from mmcl.data.benchmarks import Task
from mmcl.learn import learn_task
from mmcl.models.base import Backbone, LoraSpec
from mmcl.train import TrainSettings


def routed_inference(backbone: Backbone, tasks: list[Task], p: BenchPreset) -> dict:
    """MR-LoRA routed inference (router, then experts) against one adapter answering everything.

    With the mr-lora method, its experts and router are trained for a few batches (speed, not
    accuracy) and its own `measure_cost` compares the two paths on the same batches. Without it,
    this measures what routing costs at the model level: batches whose rows go to different
    LoRA experts (`Backbone.generate` with `adapter_names`) against single-adapter batches."""
    from mmcl.methods import all_methods, make_method

    n, bs = p.new_tokens, p.eval_batch
    tasks = tasks[: p.adapters]
    records = mixed(tasks, "test", p.eval_records)
    backbone.max_new_tokens = n
    if "mr-lora" in all_methods():
        settings = TrainSettings(epochs=1, batch_size=p.batch_size)
        method = make_method(
            "mr-lora", {"cost_batch_size": bs}, backbone, [t.spec for t in tasks], 0
        )
        method.setup()
        for step, task in enumerate(tasks):
            small = Task(task.spec, task.train[: p.batch_size], task.test)
            learn_task(method, small, step, settings, 0, desc="expert")
        _, failed = method.route(backbone.collate(records[:bs], train=False).to(backbone.device))
        cost = method.measure_cost(records)
        return {
            "how": "mr-lora: one router forward pass scores the letters, then experts answer "
            "in mixed batches",
            "samples": len(records),
            "single_samples_per_s": cost["single_adapter_samples_per_s"],
            "router_samples_per_s": cost["router_samples_per_s"],
            "routed_samples_per_s": cost["routed_samples_per_s"],
            "time_ratio": cost["time_ratio"],
            "cpu_time_ratio": cost["cpu_time_ratio"],
            # An unparsable router answer costs an extra scoring pass: a barely trained router
            # (random base weights) makes this a worst case.
            "router_fallbacks": f"{failed}/{min(bs, len(records))}",
            "target": "<= 1.5",
        }
    names = [f"expert{i}" for i in range(p.adapters)]
    for name in names:
        backbone.add_lora(name, LoraSpec())
    routes = [names[i % len(names)] for i in range(len(records))]

    def routed():
        backbone.use_adapters(names)
        return generate_all(backbone, records, bs, n, routes)

    def single():
        backbone.use_adapters(names[0])
        return generate_all(backbone, records, bs, n)

    with fixed_length(backbone, n):
        routed()
        single()  # warm-up of both paths
        t_single, _ = timed(single)
        t_routed, _ = timed(routed)
    return {
        "how": f"mr-lora not available: {p.adapters} LoRA experts mixed in each batch "
        "(generate with adapter_names) vs one adapter",
        "samples": len(records),
        "single_samples_per_s": round(len(records) / t_single, 2),
        "routed_samples_per_s": round(len(records) / t_routed, 2),
        "time_ratio": round(t_routed / t_single, 3),
        "target": "<= 1.5",
    }
