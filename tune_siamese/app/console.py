"""What a search prints: the line it starts with and the summary it ends with (the final model, its warnings,
the finalists). `summary_warnings` gives the warnings alone, for callers that print nothing."""
from __future__ import annotations

import json
from typing import Any

from tune_siamese.artifacts.provenance import SYNTHETIC, demonstration_note
from tune_siamese.core.names import ASHA_STOPPED, EXIT_NO_USABLE_TRIAL, counted


def print_start(settings: Any, on_cluster: bool = False) -> None:
    from tune_siamese.searching.gpu_sharing import sharing_warning
    from tune_siamese.searching.study import redact

    print(f"Experiment: {settings.experiment_path} ({counted(settings.num_samples, 'trial')}, "
          f"{settings.max_concurrent} at once)", flush=True)
    if getattr(settings, "grown_from", None):  # --resume --num-samples N: the new trials learn from the earlier ones
        print(f"Grown from {settings.grown_from[-1]} to {settings.num_samples} trials: the searcher suggests the "
              "new ones from every earlier trial in the study", flush=True)
    for key in settings.not_searched:
        value = settings.base[key]  # typed (augment=True): said as --set takes it
        said = str(value).lower() if isinstance(value, bool) else value
        print(f"--set {key}={said} fixes {key}, which the space searches: not searched", flush=True)
    if settings.study_storage:
        print(f"Optuna study {settings.study_name!r} in {redact(settings.study_location)}", flush=True)
    if settings.mlflow:
        print(f"MLflow experiment {settings.name!r} in {redact(settings.mlflow)}", flush=True)
    warning = sharing_warning(settings.gpus_per_trial, on_cluster)  # trials sharing a GPU without MPS take turns
    if warning:
        print(warning, flush=True)


def chance_warning(who: str, check: dict[str, Any]) -> str | None:
    """The summary's line for a model whose AUC is no better than chance (metrics.chance_check), else None."""
    if not check["no_better_than_chance"]:
        return None
    pairs = check["pairs"]
    return (f"WARNING: {who} is no better than chance: {check['scored_on']} AUC {check['auc']:.4f} is at most "
            f"{check['chance_bound']:.4f}, which a model without any signal exceeds one time in 20 on "
            f"{pairs['same']} same- and {pairs['different']} different-person pairs")


def print_summary(summary: dict[str, Any], preset: Any, settings: Any, mlflow_run: str = "",
                  total_seconds: float | None = None) -> None:
    if "no_usable_trial" in summary:  # one line: there is nothing else to say
        print(f"\nNo usable trial: {summary['no_usable_trial']}; nothing was retrained or exported "
              f"(exit {EXIT_NO_USABLE_TRIAL}). Analyse it: python -m analysis {settings.experiment_path}")
        return
    if "front" in summary:  # a multi-objective search: what it minimised and which point of the front was taken
        print(f"\nPareto front over {', '.join(summary['objectives'])}: {counted(len(summary['front']), 'trial')} "
              f"({', '.join(entry['trial_id'] for entry in summary['front'])}); --pick {summary['pick']} took "
              f"{summary['best_trial']}")
    print("\n{} configuration (val loss {:.4f} at epoch {}; optimistic: it won a selection among {}, "
          "quote the test figures):".format("Picked" if summary.get("pick", "best") != "best" else "Best",
                                              summary["best_val_loss"], summary["best_epoch"],
                                              counted(summary["trials"], "trial")))
    print(json.dumps({k: summary["best_config"][k] for k in sorted(preset.space)}, indent=2))
    if "finalists" in summary:
        print_finalists(summary, preset)
    if "test" in summary:
        print_final(summary)
    elif "chance" in summary:  # --no-retrain: the best trial's own val AUC
        print_warnings(summary, "the best trial's own model")
    if "ensemble" in summary:
        ens = summary["ensemble"]
        print(f"Ensemble of the top {len(ens['members'])} trials' own models; test: {test_line(ens['test'])}; "
              f"exported to {ens['export']}")
        print_warnings(ens, "the ensemble")
    if "identity_overlap" in summary:
        print(overlap_warning(summary["identity_overlap"]))
    # asha_stopped (the analysis's status) is whatever --scheduler stopped: ASHA, PASHA or the Pareto rule
    statuses = ", ".join(f"{count} {'stopped early' if status == ASHA_STOPPED else status.replace('_', ' ')}"
                         for status, count in summary["trial_statuses"].items())
    wall = summary["wall_seconds"]
    print(f"Trials: {summary['trials']} ({statuses}); best: {summary['best_trial']}")
    print(wall_line(wall, total_seconds))
    print(f"Analyse it: python -m analysis {settings.experiment_path}")
    if mlflow_run:
        from tune_siamese.searching.study import redact

        print(f"MLflow: run {mlflow_run} (the search; its trials are child runs) in experiment {settings.name!r}, "
              f"{redact(settings.mlflow)}")
    if settings.base.get("data") == SYNTHETIC and "test" in summary:
        print(demonstration_note())


def wall_line(wall: dict[str, Any], total_seconds: float | None) -> str:
    """The wall times of the run's parts, which add up to its whole when `total_seconds` is known: what is not
    searching, finalists or the final model is start-up (imports, data, Ray) and the summary."""
    parts = [("search", wall["search"])]
    if "finalists" in wall:
        parts.append(("finalists", wall["finalists"]))
    parts.append(("final model, test and export", wall["retrain_test_export"]))
    if total_seconds is not None:
        parts.insert(0, ("start-up (data, Ray)", max(0.0, total_seconds - sum(seconds for _, seconds in parts))))
    line = "Wall time: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in parts)
    if total_seconds is not None:
        line += f"; {total_seconds:.0f} s in all" + (" (this invocation, which resumed the search)"
                                                      if wall.get("resumed") else "")
    return line


def test_line(test: dict[str, Any]) -> str:
    """Test scores, each with its 95 % interval (people resampled) where final.json has one."""
    def score(name: str, label: str) -> str:
        low_high = test.get(f"{name}_ci")
        interval = f" [{low_high[0]:.3f}, {low_high[1]:.3f}]" if low_high else ""
        return f"{label} {test[name]:.3f}{interval}"
    names = [("accuracy", "accuracy"), ("accuracy_at_threshold", "at the val threshold"), ("auc", "AUC"),
             ("tar_at_far_0.01", "TAR at FAR 1e-2"), ("tar_at_far_0.001", "1e-3")]
    return ", ".join(score(name, label) for name, label in names if name in test)


def describe_final(summary: dict[str, Any]) -> str:
    """One sentence on what was handed back (--final)."""
    record, epochs = summary["final"], summary["epochs"]
    members = record["members"]
    if record["policy"] == "trial":
        return f"The best trial's own model (trained on the train part, epoch {summary['best_epoch']})"
    if record["policy"] == "retrain":
        return f"Retrained on train+val for {epochs} epochs (node {(members[0]['node'] or '')[:12]})"
    if record["policy"] == "seeds":
        seeds = ", ".join(str(m["seed"]) for m in members)
        return f"{len(members)} models retrained on train+val for {epochs} epochs with seeds {seeds}, averaged"
    stops = ", ".join(str(m["best_epoch"]) for m in members)
    return (f"{len(members)} models on identity-disjoint folds of train+val, each stopped on its own fold (best "
            f"epochs {stops}), averaged; threshold from their out-of-fold scores")


def print_final(summary: dict[str, Any]) -> None:
    print(f"{describe_final(summary)}.\nTest (95 % intervals over people): {test_line(summary['test'])}")
    print(f"Exported to {summary['export']}" + (f" and {summary['export_copy']}" if "export_copy" in summary
                                                 else ""))
    print_warnings(summary, "the final model")


def print_warnings(scored: dict[str, Any], who: str) -> None:
    for line in warning_lines(scored, who):
        print(line)


def warning_lines(scored: dict[str, Any], who: str) -> list[str]:
    """WARNING lines for the final record's verdicts (final.finish.judged): an AUC no better than chance, a
    threshold that rejects all."""
    lines = [chance_warning(who, scored["chance"]) if "chance" in scored else None,
             f"WARNING: {who}: {scored['threshold_note']}" if "threshold_note" in scored else None]
    return [line for line in lines if line]


def overlap_warning(overlap: dict[str, Any]) -> str:
    return (f"WARNING: {overlap['shared_identities']} of the {overlap['test_identities']} test identities also "
            "appear in training (allow_identity_overlap): the test scores above overstate verification of "
            "unseen people")


def summary_warnings(summary: dict[str, Any]) -> list[str]:
    """Every WARNING line print_summary prints, for callers that print nothing (ts.search)."""
    lines = warning_lines(summary, "the final model" if "test" in summary else "the best trial's own model")
    if "ensemble" in summary:
        lines += warning_lines(summary["ensemble"], "the ensemble")
    if "identity_overlap" in summary:
        lines.append(overlap_warning(summary["identity_overlap"]))
    return lines


def print_finalists(summary: dict[str, Any], preset: Any) -> None:
    """One line per finalist (best val loss over its seeds, mean ± s.d.; the winner marked), then what is retrained."""
    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    record = summary["finalists"]
    seeds = ", ".join(map(str, record["seeds"]))
    print(f"\nFinalists: the top {len(record['trials'])} trials trained again with seeds {seeds} "
          "(best val loss, mean ± s.d. over the seeds):")
    for entry in record["trials"]:
        runs = ", ".join(f"{number(loss)} at epoch {epoch}" if loss is not None else str(failed)
                         for loss, epoch, failed in zip(entry["val_losses"], entry["best_epochs"], entry["failed"]))
        mark = "  <- winner" if entry["winner"] else ""
        print(f"  {'*' if entry['winner'] else ' '} {entry['trial_id']}: {number(entry['mean_val_loss'])} ± "
              f"{number(entry['sd_val_loss'])} ({runs}; in the search {entry['search_val_loss']:.4f}){mark}")
    if record["fallback"]:
        print(f"No finalist wins ({record['fallback']}): the search's best trial is retrained instead.")
        return
    winner = next(entry for entry in record["trials"] if entry["winner"])
    same = winner["trial_id"] == summary["best_trial"]
    print(f"Retrained: the winner's configuration{' (the best trial above)' if same else ''}, for "
          f"{record['retrain_epochs']} epochs (the median of its seeds' best epochs; threshold from its run "
          f"{record['threshold_run']}){'' if same else ':'}")
    if not same:
        print(json.dumps({k: winner["config"][k] for k in sorted(preset.space)}, indent=2))
