"""Analyse run_search.py experiments from their files: tables, importances, pictures and a Markdown report.

    import analysis
    exp = analysis.load("ray_results/siamese-quick-...")   # .trials, .history, .best(n), .test, .importance()
    analysis.learning_curves(exp)                            # a matplotlib Figure (shown in Jupyter);
    analysis.learning_curves(exp, "curves.png")              # written as a PNG too
    analysis.anytime_curve(exp)                              # best val loss so far against cumulative epochs
    analysis.compare([path_a, path_b])                       # one row per experiment
    analysis.report(path, out_dir)                           # report.md + trials.csv + history.csv + PNGs

No Ray cluster is needed; a search that is still running loads too.
"""
from .experiment import Experiment, compare, load, trial_status
from .importance import FEW_TRIALS, FewTrialsWarning
from .parallel import parallel_coordinates
from .pareto_plot import pareto_plot
from .plots import importance_chart, learning_curves, loss_vs_hyperparameters
from .report import report
from .time_plots import anytime_curve, anytime_plot, optimisation_history, trial_timeline

__all__ = ["Experiment", "FEW_TRIALS", "FewTrialsWarning", "anytime_curve", "anytime_plot", "compare",
           "importance_chart", "learning_curves", "load", "loss_vs_hyperparameters", "optimisation_history",
           "parallel_coordinates", "pareto_plot", "report", "trial_status", "trial_timeline"]
