"""Two real JAX processes on loopback (gloo collectives) = one process, same global batch."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from pmm_jax import training
from tests import multiprocess_worker as worker
from tests.fake_devices import pjrt_nproc
from tests.toy import ToyNet, toy_data, toy_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_steps_equal_single_process(tmp_path):
    out = tmp_path / "result.npz"
    port = _free_port()
    # The workers' own device count, and two XLA:CPU threads per device (tests/fake_devices.py).
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="")
    env.pop("PJRT_NPROC", None)
    env["PJRT_NPROC"] = pjrt_nproc(worker.LOCAL_DEVICES, env)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.multiprocess_worker", str(i), str(port), str(out)],
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
            stdout, _ = p.communicate(timeout=240)
            logs.append(stdout.decode(errors="replace")[-3000:])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n---\n".join(logs)

    state = toy_state(ToyNet())
    step = jax.jit(training.make_train_step(alpha=worker.ALPHA))
    batch = toy_data(n=worker.GLOBAL_BATCH, big_row=21)
    for _ in range(worker.STEPS):
        state, _ = step(state, batch)
    want = {k: np.asarray(v) for k, v in worker._flat(state.params).items()}

    got = np.load(out)
    for form in ("sharded", "pmap"):
        for name, value in want.items():
            np.testing.assert_allclose(
                got[f"{form}/{name}"], value, rtol=1e-5, atol=1e-5, err_msg=f"{form} {name}"
            )
