"""The error raised for bad input data (shared by the readers)."""


class DataError(ValueError):
    """Bad input data; the message names the file and sample and says what was expected."""
