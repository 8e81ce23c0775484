"""Train and evaluate: ``python -m experiments.train --workdir DIR [--config FILE[:variant]]``.

With no ``--config`` it runs the main job (``experiments/configs/default.py``):
MNIST-1D, baseline vs weight decay vs dropout vs PMM over several seeds.
``--methods=baseline,pmm`` trains only those methods of the config.
``--list-configs`` lists every config.

Overrides: any field of the config can be changed on the command line, e.g.
``--config.seeds='(0,1,2)'`` ``--config.num_train_steps=2000``. In a config with
methods (each a set of overrides of the base fields, ``config.methods``):

* ``--config.FIELD=V`` changes the base value, which reaches every method that
  does not set ``FIELD`` itself. Where a method sets ``FIELD`` to another value,
  the override would not reach it, so the run is refused, naming the spelling
  that does: ``--config.methods.NAME.FIELD=V`` (or leave that method out with
  ``--methods``).
* ``--config.methods.NAME.FIELD=V`` changes what method ``NAME`` sets (only
  fields it sets; for others, the base value above with ``--methods=NAME``).

Before anything trains, every field of every method's effective config is
checked (``experiments/config/check.py``): one error lists every problem, each
naming the field (``methods.NAME.FIELD`` where a method sets it), its value and
what is allowed, and the command exits with status 2. An unknown
``--config.FIELD`` gets one line with the closest known fields. Each method's
``config.json`` (and ``extra.config`` in ``summary.json``) is the config it
trained with; the summary's ``base_config`` is the config before the methods'
overrides.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
PROG = "experiments.train"

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, summary and plots.")
flags.DEFINE_bool("list_configs", False, "List the configs (name, model, dataset, params).")
flags.DEFINE_list(
    "methods",
    None,
    "Train only these methods of the config (comma-separated names, e.g. baseline,pmm).",
)
config_flags.DEFINE_config_file(
    "config",
    os.path.join(CONFIG_DIR, "default.py"),
    "Config file with get_config() (optionally FILE:variant, e.g. default.py:local).",
    lock_config=True,
)


def main(argv):
    from experiments.run import command

    command.begin_main(argv)
    if FLAGS.list_configs:
        from experiments.listing import print_configs

        print_configs(CONFIG_DIR)
        return
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required (where checkpoints, logs and results go).")
    from experiments.config.methods import select_methods
    from experiments.run.job import train_and_evaluate

    config = FLAGS.config
    if "sweep" in config:  # trained here, the grid would be silently ignored
        fail(
            f"config {config.name!r} is a sweep (config.sweep): run it with "
            "python -m experiments.sweep --workdir DIR --config FILE[:variant]"
        )
    if "study" in config:  # trained here, the grids would be silently ignored
        fail(
            f"config {config.name!r} is a study (config.study): run it with "
            "python -m experiments.study --workdir DIR --config FILE[:variant]"
        )
    if FLAGS.methods is not None:
        config = command.run_or_fail(PROG, select_methods, config, FLAGS.methods)
    overrides = config_flags.get_override_values(FLAGS["config"])
    command.run_or_fail(PROG, train_and_evaluate, config, FLAGS.workdir, overrides=overrides)


def fail(message: str) -> None:
    """Prints ``message`` (no traceback) and exits with status 2, as for a usage error."""
    from experiments.run import command

    command.fail(PROG, message)


def run():
    # Accept the spelling --list-configs as well as absl's --list_configs.
    argv = ["--list_configs" if a == "--list-configs" else a for a in sys.argv]
    if any(a in ("-h", "--help") for a in argv[1:]):  # absl exits 1 on --help; we exit 0
        FLAGS(argv[:1])
        app.usage(shorthelp=True, writeto_stdout=True, exitcode=0)
    from experiments.run import command

    command.exit_on_unknown(PROG, argv, os.path.join(CONFIG_DIR, "default.py"))
    app.run(main, argv=argv)


if __name__ == "__main__":
    run()
