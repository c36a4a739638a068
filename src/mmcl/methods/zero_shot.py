"""zero-shot: the base model, untrained; the lower reference of every comparison."""

from mmcl.methods import register
from mmcl.methods.base import Method


@register
class ZeroShot(Method):
    name = "zero-shot"
    summary = "the base model without any training (lower reference)"
    trains = False
