"""The one error type of peeling jobs, so callers can tell bad input from bugs."""


class PeelingError(ValueError):
    """Settings or inputs a peeling job cannot run with; the message names the setting and valid values."""
