"""Settings tree: `base` holds everything; `dev`, `test` and `production` override a few values."""
