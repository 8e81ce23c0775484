"""Benchmarks, profiling and the determinism check of pmm_jax, behind one CLI.

One entry, ``python -m experiments.bench`` (``cli.py``); without a mode it runs
the step and penalty benchmarks, a first argument picks a mode:

* ``python -m experiments.bench --out F [--quick] [--full] [--only NAME ...]``: the
  train-step benchmarks (``steps``) with the PyTorch peer, and the penalty vs k
  (``penalty``); ``--only vision`` adds the image-model throughput;
* ``python -m experiments.bench profile WORKLOAD [--alpha A]``: one benchmarked
  step under ``jax.profiler`` (``profile_step``);
* ``python -m experiments.bench determinism --out F``: kernel-gradient
  reproducibility (``determinism``);
* ``python -m experiments.bench vision [--tiny] [--only MODEL]``: image-model steps
  with augmentation, with that module's own flags (``vision``);
* ``python -m experiments.bench sharded-head --out F``: PMM on a class-sharded head,
  class-parallel vs all-gathered (``sharded_head``);
* ``python -m experiments.bench paper-speed --out F``: the trainer's ResNet-44 CIFAR
  program for R runs at a time (``paper_speed``).

Modules:

* ``cli``: the CLI;
* ``steps``: the train-step workloads and their timing;
* ``penalty``: the penalty alone vs k;
* ``vision``: image-model throughput with augmentation;
* ``torch_peer``: the PyTorch ResNet-44 peer;
* ``official_torch``: the project's one PyTorch port of the authors' PMM objective,
  also what ``tests/test_official_torch.py`` holds ours against;
* ``timing``: interleaved repetitions, paired ratios, memory and load;
* ``profile_step``: where a step's time goes on XLA:CPU;
* ``determinism``: is the kernel gradient bitwise reproducible;
* ``sharded_head``: time and bytes communicated of the penalty on a class-sharded head;
* ``paper_speed``: how fast the paper's ResNet-44 training program runs, R runs at a time.

Nothing is imported here: ``cli`` sets the thread and trace flags before JAX starts.
Measured results live in ``docs/results/``; the tables are in ``docs/performance.md``
and ``docs/gpu.md``.
"""
