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


def load_json_or_refuse(path, *, missing: str, unreadable):
    """``path`` parsed as JSON; a missing file raises ``ConfigError(missing)``, an unreadable or invalid one
    ``ConfigError(unreadable(exc))``: the one-sentence messages name the file and the way out.
    """
    import json
    from pathlib import Path

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(missing) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(unreadable(exc)) from None
