"""Dense passage retrieval with prefix-tuned (P-tuning v2) BERT encoders."""

__version__ = "0.1.0"
