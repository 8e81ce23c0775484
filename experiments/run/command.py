"""What the command-line entry points share: a user's error is one line and exit status 2.

``experiments.train``, ``experiments.sweep`` and ``experiments.study`` are absl apps on a
``--config`` file. Each checks its argv before absl parses it (:func:`exit_on_unknown`),
quiets absl's logging in ``main`` (:func:`begin_main`) and runs its job through
:func:`run_or_fail`, so that a bad config, a changed config, a locked or unusable workdir
prints one line naming the problem instead of a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from experiments.config.identity import ConfigChangedError
from experiments.config.problems import ConfigError
from experiments.run.lock import WorkdirLocked
from experiments.run.workdir import WorkdirError

# The errors a user can fix from the message alone.
USER_ERRORS = (ConfigError, ConfigChangedError, WorkdirLocked, WorkdirError)


def fail(prog: str, message: str) -> None:
    """Prints ``prog: error: message`` (no traceback) and exits with status 2."""
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def exit_on_unknown(prog: str, argv: list[str], default_config: str) -> None:
    """Exits (status 2) with one line per unknown ``--config.FIELD`` of ``argv``, before
    ml_collections would fail with a bare AttributeError after chained tracebacks."""
    from experiments.config.argv import check_argv

    unknown = check_argv(argv, default_config)
    if unknown:
        fail(prog, "\n".join(unknown))


def begin_main(argv: list[str]) -> None:
    """An absl ``main``'s first lines: no positional arguments; absl's logging at WARNING
    unless ``--verbosity`` is given (orbax logs every save at INFO)."""
    from absl import app, flags, logging

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def run_or_fail(prog: str, job: Callable, *args, **kwargs):
    """``job(*args, **kwargs)``; a :data:`USER_ERRORS` error becomes :func:`fail`."""
    try:
        return job(*args, **kwargs)
    except USER_ERRORS as e:
        fail(prog, str(e))
