"""Train and evaluate: ``python -m experiments.train --workdir DIR [--config FILE[:variant]]``.

With no ``--config`` it runs the main job (``experiments/configs/default.py``):
MNIST-1D, baseline vs weight decay vs dropout vs PMM over several seeds. Any
config field can be overridden, e.g. ``--config.seeds='(0,1,2)'``
``--config.num_train_steps=2000``. ``--list-configs`` lists every config.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, summary and plots.")
flags.DEFINE_bool("list_configs", False, "List the configs (name, model, dataset, params).")
config_flags.DEFINE_config_file(
    "config",
    os.path.join(CONFIG_DIR, "default.py"),
    "Config file with get_config() (optionally FILE:variant, e.g. default.py:local).",
    lock_config=True,
)


def main(argv):
    if not FLAGS["verbosity"].present:  # orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.list_configs:
        from experiments.configs.listing import print_configs

        print_configs(CONFIG_DIR)
        return
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required (where checkpoints, logs and results go).")
    from experiments.trainer import train_and_evaluate
    from experiments.workdir_lock import WorkdirLocked

    try:
        train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except WorkdirLocked as e:  # a message, not a traceback: nothing went wrong here
        raise SystemExit(f"error: {e}") from None


def run():
    # Accept the spelling --list-configs as well as absl's --list_configs.
    argv = ["--list_configs" if a == "--list-configs" else a for a in sys.argv]
    if any(a in ("-h", "--help") for a in argv[1:]):  # absl exits 1 on --help; we exit 0
        FLAGS(argv[:1])
        app.usage(shorthelp=True, writeto_stdout=True, exitcode=0)
    app.run(main, argv=argv)


if __name__ == "__main__":
    run()
