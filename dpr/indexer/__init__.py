"""dpr.indexer."""
