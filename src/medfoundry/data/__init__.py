"""Manifests, splits, intensity normalisation and datasets."""
