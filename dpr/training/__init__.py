"""Device/AMP/DDP seam, trainer, validation and checkpoints."""
