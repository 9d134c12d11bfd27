"""The console's JSON API under /api/ (rooms replaces this placeholder)."""


def routes() -> list:
    return []
