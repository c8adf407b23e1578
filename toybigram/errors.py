"""User-facing errors: one clear line, exit code 2, no traceback."""
from __future__ import annotations

import sys
from typing import NoReturn

USAGE_EXIT_CODE = 2


class UserError(ValueError):
    """A problem with the user's input (config value, missing file, bad run directory)."""


class ConfigError(UserError):
    """An invalid configuration value; the message names the setting and says why."""


def exit_with(error: BaseException | str) -> NoReturn:
    """Print ``error: <message>`` on stderr and exit with code 2."""
    message = str(error).strip().splitlines()
    sys.stderr.write(f"error: {' '.join(line.strip() for line in message if line.strip())}\n")
    sys.stderr.flush()
    sys.exit(USAGE_EXIT_CODE)


def require(condition: bool, setting: str, why: str) -> None:
    """Raise a ConfigError naming ``setting`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{setting}: {why}")
