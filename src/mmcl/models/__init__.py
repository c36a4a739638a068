"""Backbones behind one interface (see composed.Backbone): the composed MLLM and HF natives."""
