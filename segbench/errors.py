"""Exceptions whose message is one sentence meant for the user (the CLI prints it without a traceback)."""


class SegbenchError(Exception):
    """Base class: the message names the file or flag at fault and what to do."""


class DatasetError(SegbenchError):
    """A dataset folder, dataset.json or image file is missing, malformed or inconsistent."""


class ConfigError(SegbenchError):
    """A configuration value or command-line flag is invalid."""


class ModelError(SegbenchError):
    """An unknown, duplicate or broken model (including plugin models)."""


class RunDirectoryError(SegbenchError):
    """A run directory is locked, unwritable, or incompatible with the requested resume."""
