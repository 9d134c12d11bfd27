"""The console's pages (rooms replaces this placeholder)."""


def routes() -> list:
    return []
