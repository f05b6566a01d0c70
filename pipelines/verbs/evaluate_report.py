"""Plots of an evaluation: subsets side by side, and accuracy against frequency per subset."""

from __future__ import annotations

import math

from pipelines.core.storage import Evaluation
from pipelines.verbs.audit_report import new_figure, save_figure


def plot_comparison(summary: dict):
    fig, ax = new_figure()
    subsets = list(summary["subsets"])
    parts = ("overall", "head", "tail")
    width = 0.8 / len(parts)
    for j, part in enumerate(parts):
        values = [summary["subsets"][s][f"{part}_accuracy"] or 0.0 for s in subsets]
        errors = [summary["subsets"][s].get(f"{part}_accuracy_std") or 0.0 for s in subsets]
        ax.bar([i + (j - 1) * width for i in range(len(subsets))], values, width, yerr=errors, label=part, capsize=3)
    ax.set_xticks(range(len(subsets)), [f"{s}\n({summary['subsets'][s]['samples']} samples)" for s in subsets])
    ax.set_ylabel("zero-shot accuracy")
    ax.set_title(f"proxy CLIP, {summary['proxy']['samples_seen']} samples seen, seeds {summary['proxy']['seeds']}")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_accuracy_vs_frequency(summary: dict, per_concept: list[dict]):
    fig, ax = new_figure()
    for subset in summary["subsets"]:
        rows = [r for r in per_concept if r["subset"] == subset]
        ax.scatter([math.log(max(r["frequency"], 1)) for r in rows], [r["accuracy"] for r in rows], s=10,
                   alpha=0.6, label=f"{subset} (r {summary['subsets'][subset]['loglinear'].get('pearson_r')})")
    ax.set_xlabel("ln(frequency in the subset), zero counted as 1")
    ax.set_ylabel("zero-shot accuracy")
    ax.set_title("per-concept accuracy against frequency")
    ax.legend()
    fig.tight_layout()
    return fig


def write_plots(evaluation: Evaluation, summary: dict, per_concept: list[dict]) -> list[str]:
    written = []
    for file, fig in (("comparison.png", plot_comparison(summary)),
                      ("accuracy_vs_frequency.png", plot_accuracy_vs_frequency(summary, per_concept))):
        save_figure(evaluation.paths, fig, evaluation.file(file))
        written.append(evaluation.file(file))
    return written
