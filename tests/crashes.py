"""A simulated crash in the middle of training, for the resume tests."""

import dataclasses


def crashing_get_dataset(get_dataset, *, at_batch: int, error: type[BaseException]):
    """``get_dataset`` whose datasets' training streams raise ``error("simulated crash")``
    when batch ``at_batch`` is asked for (each stream, so each group of a run crashes)."""

    def get(name, **kwargs):
        ds = get_dataset(name, **kwargs)
        real_iter = ds.train_iter

        def train_iter(*args, **kw):
            for i, batch in enumerate(real_iter(*args, **kw)):
                if i == at_batch:
                    raise error("simulated crash")
                yield batch

        return dataclasses.replace(ds, train_iter=train_iter)

    return get
