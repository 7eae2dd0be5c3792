"""Task entry points: pretraining, classification, segmentation (train / predict / evaluate)."""
