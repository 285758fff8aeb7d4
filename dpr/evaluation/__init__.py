"""dpr.evaluation."""
