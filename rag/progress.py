"""How long a piece of work still needs, from how long it has run and how much of it is done:
the ETA the embedding and training pages show. Pure arithmetic, no clock of its own."""

# Below this share done an estimate mostly measures start-up (loading a model), not the work.
MIN_FRACTION_FOR_ESTIMATE = 0.02


def remaining_seconds(*, elapsed_seconds: float, fraction_done: float) -> float | None:
    """Seconds left if the rest goes at the pace so far; None while too little is done to say."""
    if elapsed_seconds < 0 or not MIN_FRACTION_FOR_ESTIMATE <= fraction_done:
        return None
    if fraction_done >= 1:
        return 0.0
    return elapsed_seconds * (1 - fraction_done) / fraction_done


def duration_text(seconds: float | None) -> str:
    """"about 3 min", "about 40 s", "about 1 h 05 min"; "" when unknown."""
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"about {max(seconds, 1)} s"
    minutes = (seconds + 30) // 60
    if minutes < 60:
        return f"about {minutes} min"
    return f"about {minutes // 60} h {minutes % 60:02d} min"
