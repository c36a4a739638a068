"""mmcl: continual learning of multimodal large language models."""

__version__ = "0.1.0"
