"""Running a config: its workdir, its methods' sessions, the loop, evaluation, results.

Modules (each imports only ``experiments.config`` and the components below it, and
earlier modules of this list):

* ``workdir``: every path and file name, atomic writes, the writable check;
* ``lock``: one run per workdir;
* ``logs``: metric logs that survive a crash (``metrics.jsonl``, ``meta.json``);
* ``results``: ``MethodResult`` (``result.json``), the non-finite-step policy;
* ``forms``: the programs that train a group's runs together (``runs_mode``);
* ``build``: a method's ``Trainee`` (model, optimizer, programs) -- the public
  entry point of the sweep and the benchmarks;
* ``session``: one method's training in this process, started or resumed, aligned;
* ``evaluation``: during training, the best state, the final split, ``result.json``;
* ``loop``: a group trained on one stream of blocks;
* ``report``: the job's summary, tables and plots;
* ``job``: ``train_and_evaluate``, ``train_group``, ``train_method``.
"""
