"""Errors that mean "the user's input is wrong": the CLI prints them as one line and exits 2."""


class FastsiderError(Exception):
    """Base of every error the CLI reports as a one-line message (exit code 2)."""


class InputError(FastsiderError, ValueError):
    """An image, landmark file, mesh or output path that cannot be used."""


class OutputError(FastsiderError):
    """Outputs that cannot be written or moved into place: a full disk, no permission, a folder where
    a file goes, or an output folder another run is using."""
