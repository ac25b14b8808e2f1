"""Knowledge bases, documents, turns and labels: ingestion, serving (ask/retrieve) and curation."""
