"""The config: its fields, their rules, the plan of steps, the methods and their identity.

Modules, each the one owner of its concern (they import nothing from
``experiments.run`` or the command-line entry points):

* ``fields``: the one list of fields with their defaults and roles (``base_config``);
* ``rules``: what a single field may hold;
* ``problems``: ``ConfigError``/``Problem``, what a bad config gets;
* ``plan``: ``Plan``, the only step arithmetic (length, calls, intervals);
* ``methods``: merging, expanding, selecting and ordering a config's methods, and
  the command-line overrides a method would shadow;
* ``identity``: the config hash, the same-config check, which methods share a loop;
* ``check``: ``validate``/``check``, every field of every method before training;
* ``files`` and ``argv``: loading config files, and ``--config.*`` flags checked
  before ml_collections reads them.
"""
