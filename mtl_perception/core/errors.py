# SPDX-License-Identifier: Apache-2.0
"""User-facing errors and the one wrapper every command-line entry point uses.

A ``UserError`` is a mistake in the user's input (a missing file, a bad value, a misspelt
key). Commands print it as one line on stderr and exit non-zero, never with a traceback.
Anything else is a bug in this package and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """An error caused by user input; the message names the file/field/value at fault."""


def run_cli(main: Callable[[], int], prog: str) -> None:
    """Run ``main`` and turn its return value or a ``UserError`` into the process exit code."""
    try:
        code = main()
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(int(code or 0))
