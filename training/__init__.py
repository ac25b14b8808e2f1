"""Dataset snapshots, training runs, model versions, evaluation and promotion (see docs/architecture.md)."""
