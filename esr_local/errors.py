"""Library exceptions. Each message says what is wrong and what to do; the CLI prints it as one
`Error:` line with a non-zero exit and no traceback."""


class EsrError(Exception):
    """Base class for every error esr-local raises on purpose."""


class UserInputError(EsrError):
    """An argument or option value is invalid (out of range, wrong shape, NaN...)."""


class MissingResourceError(EsrError):
    """A file, model, SAE, run or catalog entry could not be found."""


class FormatError(EsrError):
    """A file exists but its contents are not in the expected format."""


class WriteError(EsrError):
    """An output file could not be written (full disk, read-only folder...); nothing half-written is left."""


class BackendError(EsrError):
    """llama.cpp or a judge backend failed."""


class JudgeParseError(EsrError):
    """A judge reply could not be parsed into attempts."""


class LeaseLiveError(UserInputError):
    """The lease to break belongs to a process that still runs on this host."""
