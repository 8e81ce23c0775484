"""Benchmarks, profiling and the determinism check of pmm_jax, behind one CLI.

One entry, ``python -m experiments.bench`` (``cli.py``); without a mode it runs
the step and penalty benchmarks exactly as before, a first argument picks a mode:

* ``python -m experiments.bench --out F [--quick] [--full] [--only NAME ...]``: the
  train-step benchmarks (``steps``) with the PyTorch peer, and the penalty vs k
  (``penalty``); ``--only vision`` adds the image-model throughput;
* ``python -m experiments.bench profile WORKLOAD [--alpha A]``: one benchmarked
  step under ``jax.profiler`` (``profile_step``; was ``python -m experiments.profile_step``);
* ``python -m experiments.bench determinism --out F``: kernel-gradient
  reproducibility (``determinism``; was ``python -m experiments.determinism``);
* ``python -m experiments.bench vision [--tiny] [--only MODEL]``: image-model steps
  with augmentation, with that module's own flags (``vision``).

Modules (formerly at the top of ``experiments/``):

* ``cli``: the CLI (was ``experiments/bench.py``);
* ``steps``: the train-step workloads and their timing (was ``bench_steps.py``);
* ``penalty``: the penalty alone vs k (was ``bench_penalty.py``);
* ``vision``: image-model throughput with augmentation (was ``bench_vision.py``);
* ``torch_peer``: the PyTorch ResNet-44 peer (was ``bench_torch.py``);
* ``official_torch``: the project's one PyTorch port of the authors' PMM objective,
  also what ``tests/test_official_torch.py`` holds ours against (was ``official_torch.py``);
* ``timing``: interleaved repetitions, paired ratios, memory and load (was ``timing.py``);
* ``profile_step``: where a step's time goes on XLA:CPU (was ``profile_step.py``);
* ``determinism``: is the kernel gradient bitwise reproducible (was ``determinism.py``).

Nothing is imported here: ``cli`` sets the thread and trace flags before JAX starts.
Measured results live in ``docs/results/``; the tables are in ``docs/performance.md``
and ``docs/gpu.md``.
"""
