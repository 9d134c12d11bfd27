class FleetError(Exception):
    """Base of the fleet package's errors."""


class BundleRefused(FleetError):
    """A bundle the agent will not run; the message says why, in one line."""
