"""Exceptions with messages that say what was wrong and how to fix it."""


class LLM4SegError(Exception):
    """Base class: the command-line tool prints these without a traceback."""


class SpecError(LLM4SegError, ValueError):
    """A booster spec, preset or plans entry is invalid."""


class SourceError(LLM4SegError, OSError):
    """The model source (hub id, folder or package) cannot be found or reached."""


class CheckpointError(LLM4SegError, ValueError):
    """The model's weight files are missing, refused, corrupted or do not match the spec."""


class SpecConflictError(LLM4SegError, RuntimeError):
    """A run would mix two different specs (for example resuming with another LLM layer)."""
