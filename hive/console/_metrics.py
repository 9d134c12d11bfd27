"""/metrics in Prometheus text format (out replaces this placeholder)."""


def routes() -> list:
    return []
