"""The one error type of peeling jobs, so callers can tell bad input from bugs."""

from model.errors import UserError


class PeelingError(UserError, ValueError):
    """Settings or inputs a peeling job cannot run with; the message names the setting and valid values."""
