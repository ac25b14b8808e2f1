"""Benchmarks of ragloop's retrieval and ingestion paths, each on a database of its own."""
