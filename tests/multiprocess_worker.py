"""One process of the two-process data-parallel test (run by test_multiprocess.py).

    python -m tests.multiprocess_worker PROCESS_ID PORT OUT.npz

Each process owns 2 CPU devices and feeds its half of the global batch; the
global batch and model are the ones tests/test_multiprocess.py also trains in a
single process.
"""

import sys

import jax

GLOBAL_BATCH = 32
LOCAL_DEVICES = 2  # CPU devices per process (test_multiprocess.py sizes PJRT_NPROC for them)
STEPS = 2
ALPHA = 6.4e-3  # mean reduction: the penalty term about the size of the cross-entropy


def start_process(process_id: int, port: int) -> None:
    """Joins the two-process CPU cluster: before any JAX computation, 2 CPU devices per
    process, gloo collectives, full-precision matmuls, the coordinator on ``port``."""
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", LOCAL_DEVICES)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_default_matmul_precision", "highest")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=2,
        process_id=process_id,
        initialization_timeout=60,
        heartbeat_timeout_seconds=20,
        shutdown_timeout_seconds=20,
    )


def main(process_id: int, port: int, out: str) -> None:
    start_process(process_id, port)
    import numpy as np

    from pmm_jax import training
    from tests.toy import ToyNet, toy_data, toy_state

    assert jax.device_count() == 2 * LOCAL_DEVICES
    assert jax.local_device_count() == LOCAL_DEVICES
    batch = toy_data(n=GLOBAL_BATCH, big_row=21)  # the max-norm row lives in process 1
    half = GLOBAL_BATCH // 2
    local = {k: v[process_id * half : (process_id + 1) * half] for k, v in batch.items()}

    # (a) jit over a 4-device mesh spanning both processes.
    mesh = training.make_mesh()
    state = training.replicate_on_mesh(toy_state(ToyNet()), mesh)
    step = training.jit_sharded(training.make_train_step(alpha=ALPHA), mesh)
    for _ in range(STEPS):
        state, _ = step(state, training.shard_batch_on_mesh(local, mesh))
    sharded = {k: np.asarray(v.addressable_data(0)) for k, v in _flat(state.params).items()}

    # (b) pmap over the local devices, collectives across all four.
    pstate = training.replicate(toy_state(ToyNet(bn_axis_name="batch")))
    pstep = training.pmap_step(training.make_train_step(alpha=ALPHA, axis_name="batch"))
    for _ in range(STEPS):
        pstate, _ = pstep(pstate, training.split_for_devices(local))
    pmapped = {k: np.asarray(v) for k, v in _flat(training.unreplicate(pstate).params).items()}

    # (c) The trainer's layout: [steps, seeds, batch, ...] batches sharded on axis 2,
    # per-example outputs [seeds, batch] kept sharded, then gathered on every process.
    stacked = np.stack([local["x"], 2 * local["x"]])[None]  # [1, 2, half, dim]
    per_example = training.jit_sharded(
        lambda scale, b: scale * b.sum(axis=0), mesh, donate=False, batch_axis=2, out_batch_axis=1
    )
    scale = training.replicate_on_mesh(np.float32(3), mesh)
    gathered = training.gather_to_host(
        per_example(scale, training.shard_batch_on_mesh(stacked, mesh, batch_axis=2))
    )
    assert gathered.shape == (2, GLOBAL_BATCH, batch["x"].shape[1])

    if process_id == 0:
        np.savez(
            out,
            **{f"sharded/{k}": v for k, v in sharded.items()},
            **{f"pmap/{k}": v for k, v in pmapped.items()},
            stacked_gathered=gathered,
        )
    jax.distributed.shutdown()


def _flat(tree):
    return {
        "/".join(str(getattr(p, "key", p)) for p in path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
