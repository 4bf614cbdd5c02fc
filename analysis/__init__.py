"""Analyse run_search.py experiments from their files: tables, importances, pictures and a Markdown report.

    import analysis
    exp = analysis.load("ray_results/siamese-quick-...")   # .trials, .history, .best(n), .final, .importance()
    analysis.compare([path_a, path_b])                       # one row per experiment
    analysis.report(path, out_dir)                           # report.md + trials.csv + history.csv + PNGs

No Ray cluster is needed; a search that is still running loads too.
"""
from .experiment import Experiment, compare, load, trial_status
from .report import report

__all__ = ["Experiment", "compare", "load", "report", "trial_status"]
