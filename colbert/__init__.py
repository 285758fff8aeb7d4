"""ColBERT late interaction over the prefix-tuned encoders of dpr.models."""
