"""Signals curation sends for other apps to act on (training listens; curation knows nothing of it)."""

from django.dispatch import Signal

# Sent once, after commit, when a space that was building has a vector for every chunk.
# Arguments: space (EmbeddingSpace).
embedding_space_ready = Signal()
