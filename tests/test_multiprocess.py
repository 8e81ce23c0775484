"""Two real JAX processes on loopback (gloo collectives) = one process, same global batch."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from pmm_jax import training
from tests import multiprocess_worker as worker
from tests.fake_devices import pjrt_nproc
from tests.toy import ToyNet, toy_data, toy_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes(module: str, *args: str) -> None:
    """Runs ``python -m module PROCESS_ID PORT *args`` as processes 0 and 1."""
    port = _free_port()
    # The workers' own device count, and two XLA:CPU threads per device (tests/fake_devices.py).
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="")
    env.pop("PJRT_NPROC", None)
    env["PJRT_NPROC"] = pjrt_nproc(worker.LOCAL_DEVICES, env)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", module, str(i), str(port), *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for p in procs:
            stdout, _ = p.communicate(timeout=400)
            logs.append(stdout.decode(errors="replace")[-3000:])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n---\n".join(logs)


def test_two_process_steps_equal_single_process(tmp_path):
    out = tmp_path / "result.npz"
    _run_two_processes("tests.multiprocess_worker", str(out))

    state = toy_state(ToyNet())
    step = jax.jit(training.make_train_step(alpha=worker.ALPHA))
    batch = toy_data(n=worker.GLOBAL_BATCH, big_row=21)
    for _ in range(worker.STEPS):
        state, _ = step(state, batch)
    want = {k: np.asarray(v) for k, v in worker._flat(state.params).items()}

    got = np.load(out)
    want_stacked = 3 * np.stack([batch["x"], 2 * batch["x"]])  # global rows, process order
    np.testing.assert_allclose(got["stacked_gathered"], want_stacked, rtol=1e-6)
    for form in ("sharded", "pmap"):
        for name, value in want.items():
            np.testing.assert_allclose(
                got[f"{form}/{name}"], value, rtol=1e-5, atol=1e-5, err_msg=f"{form} {name}"
            )


@pytest.mark.slow
def test_two_process_trainer_equals_one_process_and_only_process_0_writes(tmp_path):
    """The trainer on two processes x 2 devices = on one process x 4 devices (same
    config, same global batches); process 1 writes none of the trainer's files."""
    from experiments.run.job import train_and_evaluate
    from tests import multiprocess_trainer_worker as trainer_worker

    out = tmp_path / "out.json"
    _run_two_processes("tests.multiprocess_trainer_worker", str(tmp_path / "two"), str(out))
    seen = [json.loads((tmp_path / f"out.json.{i}").read_text()) for i in range(2)]
    assert seen[1]["written"] == []
    assert seen[0]["method"]["final_accuracy"] == seen[1]["method"]["final_accuracy"]
    for name in ("result.json", "config.json", "test_examples.npz", "metrics.jsonl"):
        assert (tmp_path / "two" / "pmm" / name).exists(), name

    config = trainer_worker.config()
    with config.unlocked():
        config.num_devices = 4
    want = train_and_evaluate(config, str(tmp_path / "one"))["methods"]["pmm"]
    got = seen[0]["method"]
    for key in ("final_accuracy", "final_loss", "margin_mean"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-5, err_msg=key)
    assert got["curves"]["step"] == want["curves"]["step"]
    assert set(got["extra"]["splits"]) == set(want["extra"]["splits"]) == {"test"}
    assert got["extra"]["best"]["step"] == want["extra"]["best"]["step"]
