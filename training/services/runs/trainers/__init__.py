"""Per-mode trainer adapters: each takes (run, folder, reporter), builds its inputs (see
training.services.runs.inputs), calls a trainer in rag.training and returns a Trained."""
