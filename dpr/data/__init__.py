"""Readers, the sharded iterator and batching for DPR training data."""
