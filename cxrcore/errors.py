"""Typed errors a user can cause.

Every message says what happened and what to do about it. Pages show the message,
the CLI prints it and exits non-zero; neither shows a traceback for these.
"""


class CXRError(Exception):
    """Base class: an error caused by input, configuration or environment, not a bug."""


class ImageError(CXRError):
    """A file or upload that cannot be read as a chest radiograph."""


class DataError(CXRError):
    """A dataset folder, table or label list that cannot be used."""


class CheckpointError(CXRError):
    """A checkpoint that is missing, incomplete or inconsistent."""


class ConfigError(CXRError):
    """An option or combination of options that cannot work."""


class JobError(CXRError):
    """A background job that cannot be created, found or controlled."""


class LLMError(CXRError):
    """The language-model service is not configured, unreachable or answered badly."""


class AccessError(CXRError):
    """Something this server's operator has not allowed (a folder outside the data roots, an LLM base URL
    off the allowlist, a job action without the right, an upload over the size limit)."""
