"""The 3D store: find cases, resample, normalise, crop the foreground, write memory-mapped
volumes and store.json (``build.prepare_store``); read it back, sample crops and patches."""
