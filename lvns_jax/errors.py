"""User-facing errors: the CLI prints these as one line, without a traceback."""


class LvnsError(Exception):
    """A problem with the user's input (config, files, weights) with a one-line explanation."""


class ConfigError(LvnsError):
    """Bad configuration key, type or value."""


class WeightsError(LvnsError):
    """Missing, corrupt or mismatched model weights."""
