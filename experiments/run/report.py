"""Summaries of a multi-method, multi-seed job: table, paired tests, plots, summary.json."""

from __future__ import annotations

import os
import platform
import time

import numpy as np

from experiments.run import workdir as wd

BASELINE = "baseline"


def _mean_std(xs) -> tuple[float, float]:
    arr = np.asarray(xs, np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def cpu_model() -> str:
    """The CPU's model name with its family and model numbers (``/proc/cpuinfo``: the
    name alone, e.g. "AMD EPYC", is shared by CPU models that XLA compiles for
    differently), or the platform's processor string."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model"):
                    fields.setdefault(key, value.strip())
                elif not line.strip() and fields:
                    break  # the first processor is enough
    except OSError:
        pass
    if "model name" not in fields:
        return platform.processor() or "unknown CPU"
    numbers = [f"{k} {fields[k]}" for k in ("cpu family", "model") if k in fields]
    return fields["model name"] + (f" ({', '.join(numbers)})" if numbers else "")


def machine_description() -> str:
    """What the numbers were measured on: XLA:CPU compiles for the host CPU, so
    CPU results are reproducible on the same CPU model, not across models."""
    import jax

    return (
        f"{platform.machine()}, {cpu_model()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, JAX {jax.__version__} ({jax.default_backend()}: "
        f"{jax.devices()[0].device_kind})"
    )


def paired_comparison(treated: list[float], baseline: list[float]) -> dict:
    """Per-seed differences ``treated - baseline`` with a paired t-test and Wilcoxon."""
    from scipy import stats

    a, b = np.asarray(treated, np.float64), np.asarray(baseline, np.float64)
    diff = a - b
    out = {"diff_per_seed": diff.tolist(), "mean_diff": float(diff.mean()), "n": int(diff.size)}
    if diff.size >= 2 and np.any(diff != diff[0]):
        t = stats.ttest_rel(a, b)
        out["paired_t"] = {"t": float(t.statistic), "p": float(t.pvalue)}
    else:
        out["paired_t"] = None
    if diff.size >= 2 and np.any(diff != 0):
        w = stats.wilcoxon(a, b)
        out["wilcoxon"] = {"statistic": float(w.statistic), "p": float(w.pvalue)}
    else:
        out["wilcoxon"] = None
    return out


def format_table(methods: dict[str, dict]) -> str:
    """One line per method: final accuracy (mean ± std over seeds), margins, wall time.

    The accuracy column names the methods' ``final_split`` (e.g. "test accuracy").
    """
    splits = {m.get("final_split", "test") for m in methods.values()}
    split = splits.pop() if len(splits) == 1 else "final"
    w = max([14, *(len(name) for name in methods)])  # the method column fits every name
    lines = [
        f"{'method':<{w}} {f'{split} accuracy (%)':>20} {'margin mean':>12} {'margin p10':>11} "
        f"{'wall time':>10}",
        "-" * (w + 58),
    ]
    for name, m in methods.items():
        acc_m, acc_s = _mean_std(np.asarray(m["final_accuracy"]) * 100)
        lines.append(
            f"{name:<{w}} {acc_m:>12.2f} ± {acc_s:<5.2f} {np.mean(m['margin_mean']):>12.4f} "
            f"{np.mean(m['margin_p10']):>11.4f} {m['wall_time_s']:>9.1f}s"
        )
    return "\n".join(lines)


def nonfinite_by_method(methods: dict[str, dict]) -> dict[str, list[int]]:
    """``{method: skipped steps per seed}`` for the methods that skipped any."""
    out = {}
    for name, m in methods.items():
        counts = (m.get("extra") or {}).get("nonfinite_steps") or []
        if any(counts):
            out[name] = [int(c) for c in counts]
    return out


def format_nonfinite(methods: dict[str, dict]) -> str:
    """One line per method that skipped steps for non-finite gradients ("" if none)."""
    skipped = nonfinite_by_method(methods)
    if not skipped:
        return ""
    lines = ["Steps skipped for non-finite gradients (per seed; their updates were dropped):"]
    for name, counts in skipped.items():
        steps = max(int(methods[name].get("steps", 0)), 1)
        per_seed = ", ".join(
            f"seed {seed}: {c}/{steps} ({100 * c / steps:.1f}%)"
            for seed, c in zip(methods[name]["seeds"], counts, strict=True)
        )
        lines.append(f"  {name}: {per_seed}")
    return "\n".join(lines)


def format_comparisons(comparisons: dict[str, dict]) -> str:
    """One line per comparison (keys ``"treated - reference"``): per-seed differences, p."""
    lines = []
    for label, c in comparisons.items():
        diffs = ", ".join(f"{100 * d:+.2f}" for d in c["diff_per_seed"])
        t_p = "n/a" if c["paired_t"] is None else f"{c['paired_t']['p']:.3g}"
        w_p = "n/a" if c["wilcoxon"] is None else f"{c['wilcoxon']['p']:.3g}"
        lines.append(
            f"{label}: mean {100 * c['mean_diff']:+.2f} points over {c['n']} seeds "
            f"[{diffs}]; paired t p={t_p}, Wilcoxon p={w_p}"
        )
    return "\n".join(lines)


# Paired comparisons beyond "every method - baseline" when the config names none.
DEFAULT_PAIRS = (("pmm", "weight_decay"), ("pmm", "dropout"))


def summary_of(config, dataset_name: str, results: dict) -> dict:
    """The summary of a job (what ``summary.json`` holds, without the plots).

    ``summary.json`` holds ``base_config`` (``config`` as given, before each method's
    overrides) and, per method, ``extra["config"]``: the config that method trained with.
    """
    methods = {name: r.to_json() for name, r in results.items()}
    for m in methods.values():
        m["final_accuracy_mean"], m["final_accuracy_std"] = _mean_std(m["final_accuracy"])
    comparisons = {}
    if BASELINE in methods:
        for name, m in methods.items():
            if name != BASELINE:
                comparisons[name] = paired_comparison(
                    m["final_accuracy"], methods[BASELINE]["final_accuracy"]
                )
    # Other pairs, seed by seed (same seeds, same data order): PMM against the
    # other regularizers, weight decay + PMM against weight decay alone, ...
    pairs = [tuple(p) for p in (config.get("paired_comparisons") or DEFAULT_PAIRS)]
    paired = {
        f"{a} - {b}": paired_comparison(methods[a]["final_accuracy"], methods[b]["final_accuracy"])
        for a, b in pairs
        if a in methods and b in methods
    }
    pmm_vs = {b: paired[f"{a} - {b}"] for a, b in pairs if a == "pmm" and f"{a} - {b}" in paired}
    return {
        "dataset": dataset_name,
        "methods": methods,
        "comparisons_vs_baseline": comparisons,
        "paired": paired,
        "pmm_vs": pmm_vs,  # the same comparisons keyed by the other method
        # {method: steps skipped for non-finite gradients, per seed}, methods with any.
        "nonfinite_steps": nonfinite_by_method(methods),
        # The config as given, before each method's overrides; what each method trained
        # with is methods[NAME]["extra"]["config"] (and NAME/config.json).
        "base_config": config.to_dict(),
        "machine": machine_description(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def summarize(config, dataset_name: str, results: dict, workdir: str) -> dict:
    """The job's summary; process 0 also prints it and writes it with the plots."""
    import jax

    if jax.process_index() == 0:
        return write_summary(config, dataset_name, results, workdir)
    return summary_of(config, dataset_name, results)


def write_summary(config, dataset_name: str, results: dict, workdir: str) -> dict:
    """Prints the table and paired comparisons; writes summary.json and the plots.

    See :func:`summary_of` for what the summary holds; ``summary["plots"]`` lists the
    plot files.
    """
    summary = summary_of(config, dataset_name, results)
    methods, paired = summary["methods"], summary["paired"]
    wd.write_json(os.path.join(workdir, wd.SUMMARY_JSON), summary)
    table = format_table(methods)
    if nonfinite := format_nonfinite(methods):
        table += "\n\n" + nonfinite
    vs_base = {f"{name} - {BASELINE}": c for name, c in summary["comparisons_vs_baseline"].items()}
    text = table + ("\n\n" + format_comparisons(vs_base) if vs_base else "")
    if paired:
        text += "\n" + format_comparisons(paired)
    wd.write_text(os.path.join(workdir, wd.SUMMARY_TXT), text + "\n")
    print("\n" + text, flush=True)
    plots = make_plots(
        methods,
        workdir,
        tsne=bool(config.get("tsne", False)),
        tsne_points=int(config.get("tsne_points", 2000)),
    )
    summary["plots"] = plots
    wd.write_json(os.path.join(workdir, wd.SUMMARY_JSON), summary)
    return summary


def make_plots(
    methods: dict[str, dict], workdir: str, *, tsne: bool, tsne_points: int = 2000
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    # 1. Test accuracy curves, mean +- std over seeds; one panel per base loss (the
    # hinge runs are far below the cross-entropy ones and would squash them).
    def base_loss_of(m):
        return m.get("extra", {}).get("config", {}).get("pmm", {}).get("base_loss", "")

    groups = {}
    for name, m in methods.items():
        groups.setdefault(base_loss_of(m) or "cross_entropy", []).append(name)
    fig, axes = plt.subplots(1, len(groups), figsize=(7 * len(groups), 4.5), squeeze=False)
    key = None
    for ax, (loss_name, names) in zip(axes[0], groups.items(), strict=True):
        for name in names:
            curves = methods[name]["curves"]
            key = next((k for k in curves if k.endswith("_accuracy")), None)
            if not key or not curves.get("step"):
                continue
            acc = np.asarray(curves[key], np.float64) * 100  # [evals, seeds]
            mean, std = acc.mean(1), acc.std(1)
            ax.plot(curves["step"], mean, label=name)
            ax.fill_between(curves["step"], mean - std, mean + std, alpha=0.2)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"{key.split('_')[0] if key else 'test'} accuracy (%)")
        title = "Accuracy during training (mean ± std over seeds)"
        ax.set_title(title if len(groups) == 1 else f"{title}\nbase loss: {loss_name}")
        ax.grid(alpha=0.3)
        ax.legend()
    written.append(_save(fig, workdir, "accuracy_curves.png"))

    examples = {}
    for name in methods:
        path = wd.method_dir(workdir, name).examples
        if os.path.exists(path):
            examples[name] = dict(np.load(path))
    pmm_names = [n for n in ("pmm", "pmm_hinge") if n in examples]
    # 2. Histograms of normalized pairwise margins (all seeds pooled).
    if BASELINE in examples and pmm_names:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        shown = [BASELINE, *pmm_names]
        lo = min(np.percentile(examples[n]["margins"], 0.5) for n in shown)
        hi = max(np.percentile(examples[n]["margins"], 99.5) for n in shown)
        bins = np.linspace(lo, hi, 60)
        for name in shown:
            ax.hist(examples[name]["margins"].ravel(), bins=bins, alpha=0.45, label=name)
        ax.axvline(0.0, color="k", lw=0.8)
        ax.set_xlabel("normalized pairwise margin d_i / r on the test set")
        ax.set_ylabel("examples (all seeds)")
        ax.set_title("Pairwise margins, baseline vs PMM")
        ax.legend()
        written.append(_save(fig, workdir, "margin_histograms.png"))
    # 3. t-SNE of penultimate test features (seed 0): the paper's Fig. 2 (and Fig. 3,
    # five random classes, when there are many classes). Side by side when the run
    # has both a baseline and PMM, else one panel per method.
    if tsne and examples:
        pair = [BASELINE, "pmm"] if BASELINE in examples and "pmm" in examples else None
        groups = (
            [("tsne_features.png", pair)]
            if pair
            else [(f"tsne_{name}.png", [name]) for name in examples]
        )
        for filename, names in groups:
            fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 5), squeeze=False)
            for ax, name in zip(axes[0], names, strict=True):
                feats, labels = _tsne_subset(examples[name], max_points=tsne_points)
                emb = _tsne(feats)
                ax.scatter(emb[:, 0], emb[:, 1], c=labels, cmap="tab10", s=4)
                ax.set_title(f"{name}: t-SNE of penultimate test features")
                ax.set_xticks([])
                ax.set_yticks([])
            written.append(_save(fig, workdir, filename))
    return written


def _tsne_subset(ex, max_points: int = 2000, max_classes: int = 10, seed: int = 0):
    """At most ``max_classes`` classes (five random ones beyond that, as the paper's
    Fig. 3) and ``max_points`` points, chosen reproducibly."""
    feats, labels = ex["pre_logits_seed0"], ex["label"]
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    if len(classes) > max_classes:
        keep = rng.choice(classes, size=5, replace=False)
        idx = np.flatnonzero(np.isin(labels, keep))
        labels = np.searchsorted(np.sort(keep), labels)  # colors 0..4
        feats, labels = feats[idx], labels[idx]
    if len(labels) > max_points:
        idx = rng.choice(len(labels), size=max_points, replace=False)
        feats, labels = feats[idx], labels[idx]
    return feats, labels


def _tsne(feats):
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, (len(feats) - 1) // 3)))
    return TSNE(n_components=2, init="pca", random_state=0, perplexity=perplexity).fit_transform(
        feats
    )


def _save(fig, workdir, name):
    path = os.path.join(workdir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
