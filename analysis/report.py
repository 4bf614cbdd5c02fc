"""One folder that tells how a search went: report.md with tables and pictures, trials.csv, history.csv."""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from tune_siamese.artifacts.roc_plot import operating_point, roc_figure
from tune_siamese.core import storage
from tune_siamese.core.errors import InputError
from tune_siamese.core.names import final_label

from . import importance, parallel, plots, time_plots
from .experiment import Experiment, config_column, counted, load
from .importance import FEW_TRIALS, FewTrialsWarning, methods

TOP = 5  # best trials shown in report.md; trials.csv has them all
SETTING_KEYS = ["space", "searcher", "scheduler", "rung_metric", "reproducible", "num_samples", "max_epochs",
                "grace_period", "reduction_factor", "cpus_per_trial", "gpus_per_trial", "max_concurrent",
                "max_failures", "seed"]


def report(experiment_path: str | Path, out_dir: str | Path | None = None, color_by: str | None = None) -> Path:
    """Write report.md, trials.csv, history.csv and the PNGs into out_dir (default EXPERIMENT/report, or
    ./NAME-report for an experiment in remote storage); returns out_dir."""
    exp = load(experiment_path)
    if out_dir is None:
        out_dir = Path(f"{exp.name}-report") if "://" in exp.path else Path(exp.path) / "report"
    out = Path(out_dir)
    plots.check_color_by(exp, color_by)  # before writing anything
    out.mkdir(parents=True, exist_ok=True)
    for table, name in ((exp.trials, "trials.csv"), (exp.history, "history.csv")):
        with storage.replacing(out / name) as tmp:
            table.to_csv(tmp, index=False)

    lines = [f"# Search report: {exp.name}", "", f"Experiment `{exp.name}`, search space "
             f"`{exp.settings.get('space')}`: {_counts(exp)}.", ""]
    if exp.summary is None:
        lines += ["No final.json yet: the search is still running, was interrupted, or failed before picking "
                  "its best trial.", ""]
    lines += ["## Best trials", "",
             _table(_best_table(exp)), "",
             "Every trial: [trials.csv](trials.csv); every epoch of every trial: [history.csv](history.csv). "
             "Status: finished = ran max epochs or its own early stopping; asha_stopped = ended sooner by ASHA.",
             ""]
    lines += _pareto_section(exp, out)
    lines += _finalists_section(exp)
    lines += _final_section(exp, out)
    plots.learning_curves(exp, out / "learning_curves.png", color_by)
    lines += ["## Learning curves", "", "![Validation loss per epoch of every trial](learning_curves.png)", ""]
    if exp.hyperparameters:
        plots.loss_vs_hyperparameters(exp, out / "loss_vs_hyperparameters.png")
        lines += ["## Validation loss against each hyperparameter", "",
                  "![Best validation loss against each hyperparameter](loss_vs_hyperparameters.png)", ""]
        parallel.parallel_coordinates(exp, out / "parallel_coordinates.png")
        lines += ["## Parallel coordinates", "",
                  "One line per trial, from its searched values to its best val loss (darker is lower); faint "
                  "dashed or dotted lines are trials that ASHA stopped early, that diverged or that errored; the "
                  "best trial is outlined in gold. Choices are spaced evenly in the space's order; log-scaled "
                  "values on a log axis.", "",
                  "![Searched values and best val loss of every trial](parallel_coordinates.png)", ""]
    if len(time_plots.trial_spans(exp)):
        time_plots.optimisation_history(exp, out / "optimisation_history.png")
        time_plots.trial_timeline(exp, out / "trial_timeline.png")
        lines += ["## Optimisation history and timeline", "",
                  "![Best val loss per trial and best so far, by trial and by wall time](optimisation_history.png)",
                  "", "![When each trial ran, coloured by how it ended](trial_timeline.png)", ""]
    time_plots.anytime_plot(exp, out / "anytime.png")
    lines += ["## Anytime curve", "",
              "The lowest val loss found so far (what the search would have handed back, had it stopped there) "
              "against the epochs all trials had trained by then, those of trials stopped early included; dots are "
              "each epoch's val loss, coloured by how its trial ended.", "",
              "![Best val loss so far and every trial's epochs, against cumulative epochs](anytime.png)", ""]
    lines += ["## Hyperparameter importance", ""]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FewTrialsWarning)  # the caution below says it in the report
            table = methods(exp)
    except InputError as exc:
        lines += [f"Not computed: {exc}", ""]
    else:
        plots.importance_chart(table, out / "importance.png", f"Hyperparameter importance, {exp.name}")
        trials = table.attrs["trials"]
        caution = (f" **With {trials} trials these shares are rough (fANOVA wants about {FEW_TRIALS} or more): "
                   "read them as hints.**" if trials < FEW_TRIALS else "")
        top_fanova, top_ped = table["fanova"].idxmax(), table["ped_anova"].idxmax()
        differ = ("" if top_fanova == top_ped else f" The two methods disagree on what matters most "
                  f"(`{top_fanova}` against `{top_ped}`): fANOVA splits the variance of the loss over the whole "
                  "space, PED-ANOVA asks what sets the best 10 % of trials apart.")
        seeds = len(importance.FANOVA_SEEDS)
        lines += [f"On the best val loss of {trials} trials, by two of Optuna's evaluators: fANOVA (the mean share "
                  f"over {seeds} seeds of its random forest, ± their s.d.) and PED-ANOVA (Optuna's default, what "
                  "optuna-dashboard shows)." + differ + caution, "",
                  _table(table.reset_index().rename(columns={
                      "fanova": "fANOVA", "fanova_sd": "± s.d.", "ped_anova": "PED-ANOVA"})), "",
                  "![Hyperparameter importance](importance.png)", ""]
    lines += ["## Search settings", "", _table(pd.DataFrame(
        [{"setting": k, "value": exp.settings[k]} for k in SETTING_KEYS if k in exp.settings])), "",
        "Fixed config of every trial: " + ", ".join(f"`{k}={v}`" for k, v in exp.settings.get("base", {}).items())
        + ".", ""]
    storage.write_text(out / "report.md", "\n".join(lines))
    return out


def _in_experiment(exp: Experiment, path: Any) -> str:
    """A path final.json recorded, relative to the experiment when inside it, so that the report of a moved or
    copied experiment does not point at where it was; any other (an --export-dir copy) as recorded."""
    root = str((exp.summary or {}).get("experiment") or "").partition("?")[0]
    location = str(path).partition("?")[0]
    return location[len(root) + 1:] if root and location.startswith(root + "/") else str(path)


def _counts(exp: Experiment) -> str:
    counts = exp.trials["status"].value_counts()
    return counted(len(exp.trials), "trial") + " (" + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")"


def _best_table(exp: Experiment) -> pd.DataFrame:
    best = exp.best(TOP)
    table = best[["trial_id", *(config_column(h) for h in exp.hyperparameters), "best_val_loss", "best_epoch",
                  "best_val_accuracy", "best_val_auc", "last_epoch", "status", "wall_time_s"]]
    return table.rename(columns={**{config_column(h): h for h in exp.hyperparameters},
                                 "best_val_loss": "best val loss", "best_epoch": "at epoch", "last_epoch": "epochs",
                                 "best_val_accuracy": "val acc", "best_val_auc": "val AUC",
                                 "wall_time_s": "wall time (s)"})


def _pareto_section(exp: Experiment, out: Path) -> list[str]:
    """--objectives with more than val_loss: the non-dominated trials, what the pick rule chose, pareto.png."""
    if len(exp.objectives) < 2:
        return []
    from .pareto_plot import pareto_plot

    front = exp.pareto()
    pareto_plot(exp, out / "pareto.png")
    picked, rule = (exp.summary or {}).get("best_trial"), (exp.summary or {}).get("pick", "best")
    shown = front[["trial_id", *exp.objectives, *(config_column(h) for h in exp.hyperparameters)]].rename(
        columns={config_column(h): h for h in exp.hyperparameters})
    return ["## Pareto front", "", f"Objectives, all minimised: {', '.join(exp.objectives)} (val_loss: the best val "
            f"loss). {len(front)} of the trials {'is' if len(front) == 1 else 'are'} not dominated by any other; "
            f"`--pick {rule}` handed back `{picked}`.", "", _table(shown), "", "![Pareto front](pareto.png)", ""]


def _finalists_section(exp: Experiment) -> list[str]:
    """--finalists: each finalist's best val loss over its fresh seeds (mean ± s.d., each seed's value and best
    epoch), the winner marked; or why none won."""
    record, table = (exp.summary or {}).get("finalists"), exp.finalists
    if not record or table is None:
        return []
    seeds = ", ".join(map(str, record["seeds"]))
    lines = ["## Finalists", "", f"The top {counted(len(table), 'trial')} trained again with seeds {seeds} "
             "(validated, with early stopping, like search trials), ranked by the mean of their best val loss over "
             f"those seeds. Runs: `{_in_experiment(exp, record.get('experiment'))}`.", ""]
    if record.get("fallback"):
        lines += [f"**No finalist won** ({record['fallback']}): the search's best trial was retrained instead.", ""]
    else:
        lines += [f"The winner, `{record['winner']}`, was retrained on train + val for {record['retrain_epochs']} "
                  "epoch(s) (the median of its seeds' best epochs) and exported; its run "
                  f"`{record['threshold_run']}` (best val loss closest to its mean) chose the decision threshold.", ""]
    runs = [", ".join("failed" if loss is None else f"{loss:.4f} ({epoch})" for loss, epoch in zip(losses, epochs))
            for losses, epochs in zip(table["val_losses"], table["best_epochs"])]
    shown = pd.DataFrame({"trial": table["trial_id"], "winner": ["yes" if w else "" for w in table["winner"]],
                          **{h: table[h] for h in exp.hyperparameters},
                          "mean best val loss": table["mean_val_loss"], "s.d.": table["sd_val_loss"],
                          "per seed (best epoch)": runs, "in the search": table["search_val_loss"]})
    return lines + [_table(shown), ""]


def _final_section(exp: Experiment, out: Path) -> list[str]:
    summary, test = exp.summary, exp.final
    if summary is None:
        return []
    if "no_usable_trial" in summary:
        return ["## Final model", "", f"No usable trial: {summary['no_usable_trial']}. Nothing was retrained or "
                "exported.", ""]
    lines = ["## Final model", "", f"Best trial's config (val loss {summary['best_val_loss']:.4f} at epoch "
             f"{summary['best_epoch']}): " + ", ".join(
                 f"`{h}={summary['best_config'].get(h)}`" for h in exp.hyperparameters) + ".", ""]
    if test is None:
        return lines + ["Not retrained (run with --no-retrain): no test scores.", ""]
    other = summary.get("searched_model_test") or {}  # the best trial's own model, trained on train only
    ensemble = (summary.get("ensemble") or {}).get("test") or {}
    winner = (summary.get("finalists") or {}).get("winner")
    if winner == summary.get("best_trial"):  # its own model is then one of its finalist runs
        lines += ["It also won the finalists (see Finalists above).", ""]
    elif winner:
        config = next(entry["config"] for entry in summary["finalists"]["trials"] if entry["trial_id"] == winner)
        lines += [f"Retrained instead: the finalist winner `{winner}`'s config: "
                  + ", ".join(f"`{h}={config.get(h)}`" for h in exp.hyperparameters) + ".", ""]
    rows = [("test loss (BCE)", "loss"), ("test accuracy (logit > 0)", "accuracy"),
            ("test accuracy at the val-chosen threshold", "accuracy_at_threshold"), ("test AUC", "auc"),
            ("TAR at FAR 1e-2", "tar_at_far_0.01"), ("TAR at FAR 1e-3", "tar_at_far_0.001")]
    own = "the winner's finalist run (train only)" if winner else "best trial's model (train only)"
    final = summary.get("final") or {"policy": "retrain", "size": 1}  # older final.json: always a retrain
    handed_back = final_label(final["policy"], final["size"])
    columns = {handed_back: test, **({own: other} if other and final["policy"] != "trial" else {})}
    if ensemble:
        columns[f"ensemble of the top {counted(len(summary['ensemble']['members']), 'trial')}"] = ensemble
    table = pd.DataFrame([{"metric": label, **{name: _with_interval(scores, key) for name, scores in columns.items()}}
                          for label, key in rows])
    curves = [(test, handed_back), *([(other, own)] if "roc_fpr" in other else [])]
    roc = roc_figure(curves, out / "roc.png", f"Test ROC, {exp.name}")
    notes = []
    if "roc_fpr" not in other:
        notes.append("The ROC shows the retrained model only: this final.json has no ROC points of the best "
                     "trial's own model (written by an older version).")
    if operating_point(test) is None:
        notes.append("No threshold marked: this final.json does not record where the val-chosen threshold falls "
                     "on the test ROC (written by an older version).")
    else:
        chooser = "the winner's finalist run" if winner else "the best trial's model"
        notes.append(f"The dots mark where the decision threshold chosen on the val pairs (by {chooser}) puts each "
                     "model on its test ROC.")
    made = (f"{handed_back[0].upper()}{handed_back[1:]}" + ("" if final["policy"] in ("trial", "folds") else
                                                             f" for {summary.get('epochs')} epoch(s)"))
    return lines + [f"{made}, then scored once on the test pairs (95 % intervals over people in brackets); "
                    f"exported to `{_in_experiment(exp, summary.get('export'))}`. The val loss above won a "
                    "selection among the trials and is optimistic: quote the test figures.", "", _table(table), "",
                    f"![Test ROC curves]({roc.name})", "", " ".join(notes), ""]


def _with_interval(scores: dict[str, Any], key: str) -> Any:
    """A score, with its 95 % interval when final.json has one ("0.8123 [0.781, 0.842]")."""
    value, interval = scores.get(key, math.nan), scores.get(f"{key}_ci")
    return f"{value:.4f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else value



def _table(frame: pd.DataFrame) -> str:
    """A Markdown table (pandas' to_markdown needs the optional tabulate package)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.4g}"
        return "" if v is None or v is pd.NA else str(v).replace("|", "\\|")

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])
