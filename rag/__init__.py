"""Pure-Python core of ragloop: document parsing, chunking, embedding and answer generation.

Nothing in this package imports Django; it takes and returns plain data so it can be used
and tested without a database.
"""

import os

# ragloop is self-hosted and never downloads models: every model is a local path.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
