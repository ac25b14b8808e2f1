"""Write operations of the training app: snapshots, runs, versions, evaluation (one module each)."""
