"""The study's config with one more grid value beyond the end each method chose.

A diagnostic (study_edge_check.json): run it as the study, from the repository root,
and stop it after tuning. The noisy tasks' rows were measured at commit e39b64d,
before those tasks' grids grew to eight values (experiments/configs/study.py
NOISY_EXTRA, which this check motivated)."""

from experiments.configs.study import get_config as study_config

EXTRA = {  # method -> value appended (upper end) or prepended (lower end)
    "weight_decay": 0.01,
    "pmm": 0.01,
    "label_smoothing": 0.5,
    "confidence_penalty": 10.0,
    "logit_penalty": 0.1,
    "logit_norm": 0.32,
    "am_softmax": 0.6,
    "pmm_layers": 3e-6,
}
_NOISY = ("weight_decay", "pmm", "label_smoothing", "confidence_penalty")
ONLY = {
    "mnist1d_noise40": (*_NOISY, "logit_penalty", "logit_norm"),
    "mnist1d_noise20": (*_NOISY, "logit_penalty", "logit_norm", "am_softmax"),
    "mnist1d": ("label_smoothing", "confidence_penalty", "logit_norm", "pmm_layers"),
}


def get_config(task):
    c = study_config(task)
    with c.unlocked():
        for name in ONLY[task]:
            g = c.study.grids[name]
            vals = tuple(g["values"])
            v = EXTRA[name]
            g["values"] = (v, *vals) if v < min(vals) else (*vals, v)
    return c
