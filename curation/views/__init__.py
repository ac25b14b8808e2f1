"""Web pages, one module per area; each module ends with its `urlpatterns` (joined in curation/urls.py)."""
