"""dpr.models."""
