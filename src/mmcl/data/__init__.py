"""Data: the record type, file formats, validation, procedural benchmarks."""
