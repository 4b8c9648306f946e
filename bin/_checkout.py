"""Run a command from this checkout without installing it: the checkout's ``agents`` first on the
path and, when the Python that runs the script lacks the dependencies (a system python3 outside
any virtual environment), the checkout's own ``.venv``, which the README's commands create."""

import importlib
import os
import sys

CHECKOUT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def run(module: str) -> None:
    sys.path.insert(0, CHECKOUT)
    try:
        entry_point = importlib.import_module(module).entry_point
    except ModuleNotFoundError as error:
        python = os.path.join(CHECKOUT, ".venv", "bin", "python")
        here = os.path.realpath(sys.prefix) == os.path.realpath(os.path.dirname(os.path.dirname(python)))
        if (error.name or "").startswith("agents") or here or not os.access(python, os.X_OK):
            raise SystemExit(
                f"{os.path.basename(sys.argv[0])}: this Python lacks {error.name!r}; create the "
                f"checkout's .venv first (the README's set-up command), or install agents"
            ) from None
        # The same process (exec keeps the PID that parallel, make and kill know).
        os.execv(python, [python, sys.argv[0], *sys.argv[1:]])
    entry_point()
