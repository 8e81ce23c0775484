"""One process of the two-process trainer test (run by test_multiprocess.py).

    python -m tests.multiprocess_trainer_worker PROCESS_ID PORT WORKDIR OUT.json

Both processes train the same config (``config()``) in the same workdir, each with 2
CPU devices and half of every global batch. Process 1 records every file it opens
for writing under WORKDIR outside orbax's checkpoint folders (the trainer's files
must be written by process 0 only); OUT.json gets what each process saw.
"""

import builtins
import io
import json
import os
import sys

import jax


def config():
    from experiments.config.methods import select_methods
    from experiments.configs import default

    c = select_methods(default.get_config("local"), ["pmm"])
    with c.unlocked():
        c.seeds = (0, 1)
        c.batch_size = 96  # 24 rows per device on 4 devices
        c.eval_batch_size = 200
        c.num_train_steps = 20
        c.eval_every_steps = 20
        c.checkpoint_every_steps = 20
        c.save_best = True
        c.evaluate_all_splits = True
    return c


def _record_writes(workdir: str, written: list[str]) -> None:
    """Wraps ``open``, ``io.open`` and ``os.open`` to note writes under ``workdir``
    (orbax's checkpoint folders aside)."""
    real_open, real_os_open = builtins.open, os.open
    root = os.path.realpath(workdir)

    def note(path):
        path = os.path.realpath(os.fspath(path))
        inside = path.startswith(root + os.sep)
        if inside and not any(f"{os.sep}{d}{os.sep}" in path for d in ("checkpoints", "best")):
            written.append(os.path.relpath(path, root))

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            note(file)
        return real_open(file, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            note(path)
        return real_os_open(path, flags, *args, **kwargs)

    builtins.open, io.open, os.open = open_, open_, os_open  # io.open: zipfile (np.savez)


def main(process_id: int, port: int, workdir: str, out: str) -> None:
    from tests.multiprocess_worker import start_process

    start_process(process_id, port)  # 2 CPU devices per process, as here before
    from experiments.run.job import train_and_evaluate

    written = []
    if process_id == 1:
        _record_writes(workdir, written)
    summary = train_and_evaluate(config(), workdir)
    method = summary["methods"]["pmm"]
    with open(f"{out}.{process_id}", "w") as f:  # the test's output, not the trainer's
        json.dump({"method": method, "written": written}, f, default=str)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
