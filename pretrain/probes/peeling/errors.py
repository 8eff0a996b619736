"""The one error type of peeling jobs, so callers can tell bad input from bugs."""

from settings.errors import UserError


class PeelingError(UserError, ValueError):
    """Settings or inputs a peeling job cannot run with; the message names the setting and valid values."""
