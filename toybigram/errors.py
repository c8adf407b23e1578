"""User-facing errors: one clear line, exit code 2, no traceback."""
from __future__ import annotations

import argparse
import sys
from typing import NoReturn

USAGE_EXIT_CODE = 2
DIVERGED_EXIT_CODE = 3  # training stopped on a non-finite loss or parameter
INTERRUPT_EXIT_CODE = 130  # 128 + SIGINT, as a shell reports Ctrl-C


class UserError(ValueError):
    """A problem with the user's input (config value, missing file, bad run directory)."""


class ConfigError(UserError):
    """An invalid configuration value; the message names the setting and says why."""


def exit_with(error: BaseException | str, code: int = USAGE_EXIT_CODE) -> NoReturn:
    """Print ``error: <message>`` on stderr as one line and exit with ``code`` (2: bad input)."""
    message = str(error).strip().splitlines()
    sys.stderr.write(f"error: {' '.join(line.strip() for line in message if line.strip())}\n")
    sys.stderr.flush()
    sys.exit(code)


def require(condition: bool, setting: str, why: str) -> None:
    """Raise a ConfigError naming ``setting`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{setting}: {why}")


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose errors (a missing argument, an unknown option, a bad value)
    end like every other toybigram command's: one ``error:`` line naming the problem, exit 2."""

    def error(self, message: str) -> NoReturn:
        exit_with(message)
