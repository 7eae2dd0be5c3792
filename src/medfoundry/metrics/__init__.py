"""Metrics and small statistics: leaf functions on tensors and numbers (no training, no I/O)."""
