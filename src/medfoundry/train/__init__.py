"""Lightning wrappers: one LightningModule for pretraining, one per downstream task."""
