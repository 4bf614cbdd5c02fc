"""`tune-siamese` command line: train one configuration, evaluate a model, verify a pair of images, finalize a
search, list the Config fields.

Bad input of any kind (options, config files, data, models) ends with one line on stderr and exit code 2,
always before training starts; a diverged training run ends with exit code 1.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from tune_siamese import __version__
from tune_siamese.core.config import Config, parse_overrides
from tune_siamese.core.errors import InputError, OneLineParser
from tune_siamese.core.names import FINAL_POLICIES

PROG = "tune-siamese"


def _data_help(default: str) -> str:
    return (f"'synthetic' (procedural faces, offline), 'lfw' (torchvision download) or a folder: LFW/LFW-a with "
            f"pairsDevTrain.txt + pairsDevTest.txt or pairs.txt, or one sub-folder of images per identity; "
            f"{default}")


def _at_least(low: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is less than {low}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Koch-style Siamese networks for face verification: search "
                           "hyperparameters, train one configuration, evaluate a trained model, or verify a pair of "
                           "images.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    sub.add_parser("search", add_help=False, help="hyperparameter search, retrain, test and export (the same as "
                   "run_search.py; `tune-siamese search --help` lists its options)")

    train = sub.add_parser("train", help="train one configuration, then test it",
                           description="Train with early stopping on validation loss, pick the decision threshold "
                           "on validation pairs, score the test pairs, and write checkpoint.pt, metrics.csv "
                           "(one row per epoch) and metrics.json into --out.")
    train.add_argument("--data", required=True, metavar="PATH|synthetic|lfw", help=_data_help("required"))
    train.add_argument("--config", metavar="FILE.json",
                       help="JSON object of Config options (default: the built-in defaults); --data and --set "
                            "override it")
    train.add_argument("--out", metavar="DIR", help="output folder (default: runs/train-<timestamp>); must not "
                       "already hold a run")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                       help="override one Config option, e.g. --set lr=3e-4 --set batchnorm=true (repeatable)")
    train.add_argument("--export", action="store_true",
                       help="also write an export folder (safetensors, graph, config, checksums) to OUT/export, "
                            "usable by `verify`")

    evaluate = sub.add_parser("evaluate", help="score a trained model on test pairs, a pair list or one-shot",
                              description="Score a checkpoint file or an export folder. Default: the test pairs of "
                              "--data (loaded with the model's own image settings), at the model's stored "
                              "decision threshold (a search trial's state.pt: its best epoch, at the threshold chosen "
                              "on its validation pairs). Pairs of people the model trained on are refused. --pairs "
                              "scores an LFW pair list instead (no self-pairs or duplicates); --one-shot runs "
                              "Koch's N-way one-shot evaluation: seeded random trials on an identity-folder dataset, "
                              "or Lake's fixed 20-way Omniglot runs (all_runs/runNN/class_labels.txt).")
    evaluate.add_argument("source", metavar="SOURCE", help="checkpoint file (checkpoint.pt) or export folder")
    evaluate.add_argument("--data", metavar="PATH|synthetic|lfw",
                          help=_data_help("default: the data the model was trained on"))
    mode = evaluate.add_mutually_exclusive_group()
    mode.add_argument("--pairs", metavar="FILE", help="LFW pair list (pairsDevTest.txt format: header N, N same "
                      "then N different lines); images come from --data's LFW folder")
    mode.add_argument("--one-shot", metavar="ROOT", dest="one_shot",
                      help="identity-folder dataset (one sub-folder of images per identity) for N-way one-shot, "
                           "or Lake's Omniglot one-shot runs: the all_runs folder (runNN/class_labels.txt, "
                           "training/, test/) or a folder holding it; the layout is detected")
    # Default None: an explicit --ways/--trials/--seed is refused for the fixed runs, which these do not apply to.
    evaluate.add_argument("--ways", type=_at_least(2), help="candidates per one-shot trial (default 20; identity "
                          "folders only)")
    evaluate.add_argument("--trials", type=_at_least(1), help="one-shot trials (default 400; identity folders only)")
    evaluate.add_argument("--seed", type=int, help="seed that draws the one-shot trials (default 0; identity "
                          "folders only)")
    evaluate.add_argument("--allow-identity-overlap", action="store_true", dest="allow_identity_overlap",
                          help="score pairs of people the model trained or was selected on (by default refused, "
                               "as the search refuses such test pairs), with a warning that the JSON records")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default auto)")
    evaluate.add_argument("--out", metavar="DIR", help="also write a report there: metrics.json (rounded, TAR at FAR "
                          "1e-2 and 1e-3, 95 %% intervals), roc.csv and roc.png (FAR on a log axis, TAR at those FARs "
                          "and the model's threshold marked)")

    finalize = sub.add_parser("finalize", help="another final model from a finished search, without searching",
                              description="Build, test and export another final model from a finished search's "
                              "best configuration: final-NAME.json and export-NAME/ in the experiment (NAME: the "
                              "policy, with K for seeds and folds), beside final.json and export/, never over "
                              "them; with the search's MLflow store, a run there too. Works on a storage URI too. "
                              "Exit status: 0 done; 2 bad input, or a write that failed (a full disk: nothing "
                              "half-written); 3 the final model diverged (its record says so, nothing exported); "
                              "130 Ctrl-C, 143 SIGTERM.")
    finalize.add_argument("experiment", metavar="EXPERIMENT", help="the search's experiment folder or URI")
    finalize.add_argument("--final", required=True, choices=FINAL_POLICIES,
                          help="retrain, trial, seeds or folds (as run_search.py --final)")
    finalize.add_argument("--final-size", type=_at_least(1), metavar="K",
                          help="models in a seeds or folds final model (default 3)")
    finalize.add_argument("--pick", metavar="RULE",
                          help="another point of a multi-objective search's Pareto front: best or smallest-within=D "
                               "(default: the search's --pick); a rule other than best is part of NAME")
    finalize.add_argument("--address", help="Ray cluster to join (as run_search.py; default: a new local Ray)")
    finalize.add_argument("--connect-timeout", type=float, default=30.0, metavar="SECONDS",
                          help="give up joining a cluster after this long (default 30)")

    verify = sub.add_parser("verify", help="same person or not, for two image files",
                            description="Decode both images exactly as training data is decoded (grayscale, the "
                            "model's crop and image size), score the pair and compare the logit with the stored "
                            "decision threshold.")
    verify.add_argument("source", metavar="EXPORT_DIR", help="export folder (or checkpoint file)")
    verify.add_argument("image_a", metavar="A", help="first image file")
    verify.add_argument("image_b", metavar="B", help="second image file")

    sub.add_parser("config-fields", help="every Config field --set (and --config) can set: type, default, rule",
                   description="The fields of Config, the one configuration from the command line to the export: "
                   "what `--set KEY=VALUE` and a --config JSON file may set.")
    return parser


def print_config_fields() -> int:
    from tune_siamese.core.config import field_table

    rows = field_table()
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for name, kind, default, rule, meaning in rows:
        constraint = f" [{rule}]" if rule else ""
        print(f"{name:<{widths[0]}}  {kind:<{widths[1]}}  {default:<{widths[2]}}  {meaning}{constraint}")
    return 0


def build_config(config_file: str | None, data: str | None, overrides: Sequence[str]) -> Config:
    """File values, then --data, then --set; every layer is validated by Config.from_dict."""
    base = Config.load(config_file) if config_file else Config()
    changes: dict[str, Any] = parse_overrides(overrides)
    if data is not None:
        changes = {"data": data, **changes}
    return Config.from_dict({**base.to_dict(), **changes}, source="command line")


def train_output(out: str | None) -> Path:
    """--out, or runs/train-<timestamp>; refused when it is a file or already holds a run."""
    path = Path(out) if out else Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
    if path.exists() and not path.is_dir():
        raise InputError("output path exists and is not a folder", path)
    if path.is_dir() and any((path / name).exists() for name in ("checkpoint.pt", "metrics.json")):
        raise InputError("output folder already holds a run; choose another --out", path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tune-siamese` console script and of `python -m tune_siamese`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["search"]:  # run_search.py's own parser and recipe: one implementation of the search
        from tune_siamese.app.search_command import main as search_main

        return search_main(argv[1:], prog=f"{PROG} search")
    try:
        args = build_parser().parse_args(argv)
        if args.command == "config-fields":
            return print_config_fields()
        if args.command == "finalize":
            from tune_siamese.app.finalize_command import cmd_finalize

            return cmd_finalize(args)
        if args.command == "train":  # a bad option or --out answers before torch loads, in a moment
            config, out = build_config(args.config, args.data, args.overrides), train_output(args.out)
        from tune_siamese.app import commands  # torch and the rest load only now: --help and --version stay quick

        if args.command == "train":
            return commands.cmd_train(config, out, args.export)
        return {"evaluate": commands.cmd_evaluate, "verify": commands.cmd_verify}[args.command](args)
    except InputError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
