"""The one error type of the data pipeline, so callers can catch bad data input apart from bugs."""

from settings.errors import UserError


class DataError(UserError, ValueError):
    """Bad data input or config; the message names the key, file or field and what would be valid."""
