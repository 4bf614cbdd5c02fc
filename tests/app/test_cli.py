"""`tune-siamese` train / evaluate / verify end to end, and one-line exit-2 errors for bad input."""
from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import hashlib
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO, SMALL_DATA

from tune_siamese.app import cli
from tune_siamese.artifacts.checkpoint import (
    as_trained,
    export_ensemble,
    export_model,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from tune_siamese.core.config import Config
from tune_siamese.data import decode_image, load_data, parse_pair_list
from tune_siamese.training.engine import fit
from tune_siamese.training.metrics import best_threshold, pair_metrics
from tune_siamese.training.model import EnsembleNet, build_model
from tune_siamese.training.scoring import images_on, predict, validation_logits

TINY = {"image_size": 72, "width": 0.0625, "init": "torch", "batchnorm": True, "lr": 3e-3, "max_epochs": 3,
        "device": "cpu", "threads": 1}


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One `train --export` run on a quarter of the synthetic pairs (SMALL_DATA: 495 train, 55 val, 250 test), 1
    epoch (set on the command line over the file's 3)."""
    root = tmp_path_factory.mktemp("cli")
    config_file = root / "tiny.json"
    config_file.write_text(json.dumps(TINY))
    out = root / "run"
    stdout, stderr = io.StringIO(), io.StringIO()  # capsys is function-scoped: capture by hand
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(["train", "--data", "synthetic", "--config", str(config_file), "--out", str(out),
                         "--set", "max_epochs=1", "--set", "seed=3", "--set", SMALL_DATA[0], "--export"])
    assert code == 0, stderr.getvalue()
    return {"out": out, "summary": json.loads(stdout.getvalue()), "root": root, "stderr": stderr.getvalue()}


def test_train_prints_each_epoch(trained):
    epoch_lines = [line for line in trained["stderr"].splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 1 and epoch_lines[0].startswith("epoch 1/1, train loss ")
    assert "val loss" in epoch_lines[0] and "val AUC" in epoch_lines[0]


def test_train_writes_checkpoint_and_metrics(trained):
    out, summary = trained["out"], trained["summary"]
    state = load_checkpoint(out / "checkpoint.pt")
    assert set(state) == {"model", "config", "threshold_logit", "trained_people"}
    assert state["config"]["max_epochs"] == 1 and state["config"]["seed"] == 3  # --set over the file
    assert state["config"]["lr"] == 3e-3 and state["config"]["data"] == "synthetic"  # the file, --data
    assert state["threshold_logit"] == summary["threshold_logit"]
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and rows[0]["epoch"] == "1"
    assert {"train_loss", "val_loss", "val_auc", "val_accuracy", "lr"} <= set(rows[0])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["auc"] == pytest.approx(summary["test"]["auc"])
    assert metrics["data"]["test_pairs"] == 250 and metrics["config"]["width"] == 0.0625
    assert summary["epochs"] == 1 and 0.0 <= summary["test"]["accuracy_at_threshold"] <= 1.0
    assert (out / "export" / "SHA256SUMS").is_file() and summary["export"] == str(out / "export")


def test_train_records_whom_the_model_trained_on(trained, tiny_config):
    """checkpoint.pt and the export hold a salted SHA-256 digest of each train and val person, not the names."""
    people = load_data(tiny_config(drawn_pairs=800)).training_people
    export = trained["out"] / "export"
    assert "identities.json" in (export / "SHA256SUMS").read_text()
    records = [json.loads((export / "identities.json").read_text()),
               load_checkpoint(trained["out"] / "checkpoint.pt")["trained_people"]]
    for record in records:
        salt = bytes.fromhex(record["salt"])
        assert record["digests"] == sorted(hashlib.sha256(salt + name.encode()).hexdigest() for name in people)
        assert record["people"] == len(people) > 300 and "synthetic_" not in json.dumps(record)


def test_evaluate_checkpoint_reproduces_the_test_metrics(trained, capsys):
    code, out, _ = run_main(["evaluate", trained["out"] / "checkpoint.pt", "--data", "synthetic"], capsys)
    assert code == 0
    result = json.loads(out)
    test = trained["summary"]["test"]
    assert result["n_pairs"] == 250
    assert result["auc"] == pytest.approx(test["auc"], abs=1e-6)
    assert result["accuracy_at_threshold"] == pytest.approx(test["accuracy_at_threshold"])
    assert result["threshold_logit"] == trained["summary"]["threshold_logit"]


def test_evaluate_export_on_a_pair_list(trained, fake_lfw, capsys):
    code, out, _ = run_main(["evaluate", trained["out"] / "export", "--data", fake_lfw,
                             "--pairs", fake_lfw / "pairsDevTest.txt"], capsys)
    assert code == 0
    result = json.loads(out)
    assert result["n_pairs"] == 4 and 0.0 <= result["accuracy_at_threshold"] <= 1.0


def test_evaluate_on_other_data_leaves_the_count_of_drawn_pairs_behind(trained, fake_lfw, capsys):
    """A model trained on drawn pairs (here a quarter of the synthetic faces) scored the test pairs of an LFW folder:
    refused, "drawn_pairs=800: ... has pair lists", an option the user had not given. The count belongs to the data
    it drew from; on the same data it stays, so the test pairs are the ones its training left out."""
    checkpoint = trained["out"] / "checkpoint.pt"
    code, printed, err = run_main(["evaluate", checkpoint, "--data", fake_lfw], capsys)
    assert code == 0, err
    assert json.loads(printed)["n_pairs"] == 4 and json.loads(printed)["data"] == str(fake_lfw)
    code, printed, _ = run_main(["evaluate", checkpoint, "--data", "synthetic"], capsys)
    assert code == 0 and json.loads(printed)["n_pairs"] == 250


def test_evaluate_pairs_refuses_people_the_model_trained_on(trained, fake_lfw, tiny_config, tmp_path, capsys):
    """Scoring pairsDevTrain.txt with a model trained on it used to give a number, exit 0."""
    out = tmp_path / "run"
    code, _, err = run_main(["train", "--data", fake_lfw, "--config", trained["root"] / "tiny.json", "--set",
                             "max_epochs=1", "--out", out, "--export"], capsys)
    assert code == 0, err
    people = load_data(tiny_config(data=str(fake_lfw))).training_people  # of the 7 people of DevTrain
    assert len(people) >= 5
    listed = fake_lfw / "pairsDevTrain.txt"
    first = next(p.line for p in parse_pair_list(listed)[0] if {p.name_a, p.name_b} & set(people))
    text = (f"{listed}:{first}: {len(people)} of the 7 identities in these pairs are among the {len(people)} people "
            f"the model trained or was selected on (e.g. {', '.join(people[:3])}); the score would not measure "
            f"unseen people")
    for source in (out / "export", out / "checkpoint.pt"):
        evaluate = ["evaluate", source, "--data", fake_lfw, "--pairs", listed]
        code, printed, err = run_main(evaluate, capsys)
        assert code == 2 and printed == "" and err.count("\n") == 1, err
        assert err == f"tune-siamese: error: {text}. --allow-identity-overlap scores it anyway\n"
        code, printed, err = run_main([*evaluate, "--allow-identity-overlap"], capsys)
        assert code == 0 and err == f"warning: {text}; scored anyway (--allow-identity-overlap)\n"
        assert json.loads(printed)["identity_overlap"] == {"shared_identities": len(people), "identities": 7,
                                                           "examples": people[:3]}
        code, printed, err = run_main(["evaluate", source, "--data", fake_lfw, "--pairs",
                                       fake_lfw / "pairsDevTest.txt"], capsys)
        assert code == 0 and err == "" and "identity_overlap" not in json.loads(printed)


def test_evaluate_data_checks_the_people_the_model_trained_on(tiny_config, tmp_path, capsys):
    """The default mode (the test pairs of --data) against the record of an export, single or ensemble; an export
    from before the record is scored with a warning."""
    config = tiny_config()
    data = load_data(config)
    seen = sorted({data.names[i] for i in data.identities_of(data.test[:100])})  # as if trained on some test people
    torch.manual_seed(0)
    models = [build_model(config) for _ in range(2)]
    single = export_model(models[0], config, tmp_path / "export", trained_people=seen)
    ensemble = export_ensemble(EnsembleNet(models, [config, config]), tmp_path / "ensemble", trained_people=seen)
    test_people = len(data.identities_of(data.test))
    for source in (single, ensemble):
        code, printed, err = run_main(["evaluate", source, "--data", "synthetic"], capsys)
        assert code == 2 and printed == "" and err.count("\n") == 1, err
        assert err.startswith(f"tune-siamese: error: synthetic: {len(seen)} of the {test_people} identities in the "
                              f"test pairs are among the {len(seen)} people the model trained or was selected on")
    old = export_model(models[0], config, tmp_path / "old")
    code, printed, err = run_main(["evaluate", old, "--data", "synthetic"], capsys)
    assert code == 0 and json.loads(printed)["n_pairs"] == 1000
    assert err == f"warning: {old} records no training identities (written before they were recorded): cannot " \
                  f"check the evaluated people against them\n"


def test_evaluate_and_verify_a_trial_state_use_its_best_epoch_and_val_threshold(tiny_config, tmp_path, make_image,
                                                                                 capsys):
    """A search trial's state.pt used to be scored with its last epoch's weights at threshold 0."""
    config = tiny_config(max_epochs=2)
    data = load_data(config)
    states = []
    fit(config, dataclasses.replace(data, train=data.train[:300]),
        on_epoch=lambda metrics, state: states.append(copy.deepcopy(state())))
    state = states[-1]
    torch.manual_seed(7)
    state["model"] = build_model(config).state_dict()  # the last epoch's weights: here far off the best epoch's
    path = tmp_path / "trial_0001" / "checkpoint_000001" / "state.pt"
    save_checkpoint(state, path)

    best = build_model(config)
    best.load_state_dict(state["best_model"])
    best = as_trained(best, config)
    images = images_on(torch.device("cpu"), data.images)
    threshold = best_threshold(*validation_logits(best, images, data, config))
    expected = pair_metrics(data.test[:, 2], predict(best, images, data.test, config), threshold)

    code, printed, err = run_main(["evaluate", path, "--device", "cpu"], capsys)
    assert code == 0, err
    result = json.loads(printed)
    assert result["threshold_logit"] == pytest.approx(threshold, abs=1e-6) and threshold != 0.0
    assert result["auc"] == pytest.approx(expected["auc"], abs=1e-6)
    assert result["best_epoch"] == state["best_epoch"] and result["threshold_from"] == "validation pairs"
    assert err.startswith(f"note: {path}: a search trial's state: scoring its best epoch ({state['best_epoch']})")
    a, b = make_image(tmp_path / "a.png", seed=1), make_image(tmp_path / "b.png", seed=2)
    code, printed, err = run_main(["verify", path, a, b], capsys)
    assert code == 0 and json.loads(printed)["threshold_logit"] == pytest.approx(threshold, abs=1e-6)


def test_evaluate_one_shot(trained, identity_folder, capsys):
    argv = ["evaluate", trained["out"] / "export", "--one-shot", identity_folder, "--ways", 4, "--trials", 30,
            "--seed", 1]
    code, out, _ = run_main(argv, capsys)
    assert code == 0
    result = json.loads(out)
    assert result["ways"] == 4 and result["trials"] == 30 and 0.0 <= result["accuracy"] <= 1.0
    assert json.loads(run_main(argv, capsys)[1]) == result  # seeded


def test_verify_two_images(trained, tmp_path, make_image, capsys):
    a = make_image(tmp_path / "a.jpg", seed=1, size=60)
    b = make_image(tmp_path / "b.png", seed=2, size=90, mode="RGB")
    export = trained["out"] / "export"
    code, out, _ = run_main(["verify", export, a, b], capsys)
    assert code == 0
    result = json.loads(out)
    assert 0.0 < result["probability_same"] < 1.0
    assert result["same_person"] == (result["logit"] >= result["threshold_logit"])
    # the same numbers by hand: decode like the data layer, score with the loaded model in float32 (as verify does)
    model, config, threshold = load_model(export)
    images = np.stack([decode_image(p, config.image_size, config.crop) for p in (a, b)])
    fp32 = config.replace(precision="fp32")
    logit = predict(model, images_on(torch.device("cpu"), images), np.array([[0, 1, 0]]), fp32)[0]
    assert result["logit"] == pytest.approx(logit, abs=1e-5) and result["threshold_logit"] == threshold


def test_help_explains_every_command(capsys):
    for command, option in (("train", "--set"), ("evaluate", "--one-shot"), ("verify", "EXPORT_DIR")):
        code, out, _ = run_main([command, "--help"], capsys)
        assert code == 0 and option in out


@pytest.fixture
def bad_inputs(tmp_path, trained, make_image, fake_lfw):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"lr": 0.1,\n "width": }\n')
    tampered = tmp_path / "tampered"
    shutil.copytree(trained["out"] / "export", tampered)
    (tampered / "config.json").write_text((tampered / "config.json").read_text().replace('"lr"', ' "lr"'))
    image = make_image(tmp_path / "a.jpg", seed=0)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"nope" * 10)
    repeated = tmp_path / "repeated.txt"
    repeated.write_text("2\nPerson_I\t1\t2\nPerson_I\t2\t1\nPerson_I\t1\tPerson_J\t2\nPerson_I\t1\tPerson_J\t1\n")
    return {"bad_json": bad_json, "tampered": tampered, "image": image, "garbage": garbage,
            "ckpt": trained["out"] / "checkpoint.pt", "export": trained["out"] / "export", "lfw": fake_lfw,
            "repeated": repeated}


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "synthetic", "--set", "optimizer=rmsprop"], "optimizer='rmsprop' is not one of"),
    (["train", "--data", "synthetic", "--set", "epochs=3"], "unknown option(s) epochs"),
    (["train", "--data", "synthetic", "--set", "lr"], "--set 'lr' must look like KEY=VALUE"),
    (["train", "--data", "synthetic", "--set", "batch_size=big"], "batch_size='big' is not a valid int"),
    (["train", "--data", "synthetic", "--set", "device=gpu"], "option device='gpu'"),
    (["train", "--data", "{tmp}/nowhere"], "data folder not found"),
    (["train", "--data", "synthetic", "--config", "{bad_json}"], "bad.json:2: not valid JSON"),
    (["train", "--data", "synthetic", "--config", "{tmp}/none.json"], "config file not found"),
    (["train", "--config", "{bad_json}"], "required: --data"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["evaluate", "{tmp}/none.pt", "--data", "synthetic"], "checkpoint not found"),
    (["evaluate", "{garbage}", "--data", "synthetic"], "not a loadable checkpoint"),
    (["evaluate", "{tampered}", "--data", "synthetic"], "checksum mismatch for config.json"),
    (["evaluate", "{ckpt}", "--pairs", "{tmp}/pairs.txt"], "--pairs needs --data"),
    (["evaluate", "{ckpt}", "--data", "{tmp}", "--pairs", "{tmp}/pairs.txt"], "pair list not found"),
    (["evaluate", "{ckpt}", "--one-shot", "{tmp}", "--ways", "1"], "--ways: 1 is less than 2"),
    (["evaluate", "{ckpt}", "--one-shot", "{tmp}"], "identity folder needs at least 4 identities"),
    (["evaluate", "{ckpt}", "--one-shot", "{tmp}", "--pairs", "x"], "not allowed with argument"),
    (["evaluate", "{export}", "--data", "{lfw}", "--pairs", "{repeated}"],
     "repeated.txt:3: the evaluated pairs hold 0 self-pair(s) (one image twice) and 1 duplicate(s)"),
    (["verify", "{export}", "{image}", "{tmp}/missing.jpg"], "missing.jpg: image not found"),
    (["verify", "{export}", "{image}", "{lfw}"], "lfw: is a folder, not an image"),
    (["verify", "{export}", "{image}", "{garbage}"], "garbage.jpg: unreadable or corrupt image"),
    (["verify", "{export}", "{image}"], "required: B"),
])
def test_bad_input_exits_2_with_one_line(argv, message, bad_inputs, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, **bad_inputs) for a in argv]
    code, out, err = run_main(argv + ["--out", tmp_path / "run"] if argv[0] == "train" else argv, capsys)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("tune-siamese: error: "), err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before any training


def test_output_folder_holding_a_run_is_refused(trained, capsys):
    code, _, err = run_main(["train", "--data", "synthetic", "--out", trained["out"]], capsys)
    assert code == 2 and "already holds a run" in err


def test_module_entry_point_reports_bad_input_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tune_siamese", "train", "--data", "synthetic", "--set",
                             "optimizer=rmsprop", "--out", str(tmp_path / "run")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == ("tune-siamese: error: command line: option optimizer='rmsprop' is not one "
                                     "of sgd, adam, adamw")



def test_version_help_and_a_bad_train_option_answer_without_loading_torch():
    probe = ("import contextlib, io, sys\nfrom tune_siamese.app import cli\nout = io.StringIO()\n"
             "with contextlib.redirect_stdout(out):\n    codes = [cli.main(['--version']), cli.main(['--help']), "
             "cli.main(['train', '--data', 'synthetic', '--set', 'optimizer=rmsprop'])]\n"
             "print(codes, 'torch' in sys.modules, out.getvalue().splitlines()[0])")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[0, 0, 2] False tune-siamese 0.5.0", done.stderr[-2000:]
    assert "option optimizer='rmsprop' is not one of" in done.stderr


def test_search_help_and_a_misspelt_option_import_neither_ray_nor_torch():
    """Quick feedback: the heavy imports wait for the search. The presets listed under --help are read from
    search_spaces' source; they say what describe() says."""
    from search_spaces import describe
    from tune_siamese.app.search_command import preset_lines

    probe = ("import contextlib, io, sys\nfrom tune_siamese.app import search_command\nout = io.StringIO()\n"
             "with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):\n"
             "    try:\n        search_command.main(['--help'])\n    except SystemExit:\n        pass\n"
             "    code = search_command.main(['--num-samplez', '3'])\n"
             "heavy = sorted({'ray', 'torch', 'optuna'} & set(sys.modules))\n"
             "print(code, heavy, 'presets (--space):' in out.getvalue())")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "2 [] True", done.stderr[-2000:]
    assert preset_lines() == describe()


def test_tune_siamese_search_is_run_search(tmp_path, capsys):
    """The same command under another name; the installed console script runs a whole search in
    tests/searching/test_search.py (the late Ctrl-C), which checks its console and recorded command."""
    from tune_siamese.app import cli

    assert cli.main(["search", "--space", "smoke", "--num-samples", "0", "--storage-path", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("tune-siamese search: error: option --num-samples=0 must be >= 1")
    with pytest.raises(SystemExit) as helped:
        cli.main(["search", "--help"])
    assert helped.value.code == 0 and capsys.readouterr().out.startswith("usage: tune-siamese search")


def test_search_help_groups_its_options_and_shows_every_default(capsys):
    """run_search.py --help: options in groups; every option that takes a value says its default."""
    import argparse

    from tune_siamese.app.search_command import build_parser

    parser = build_parser()
    groups = {group.title: group._group_actions for group in parser._action_groups if group._group_actions}
    assert len(groups) >= 6
    assert sum(len(actions) for actions in groups.values()) == len(parser._actions)  # each option in one group
    silent = (argparse._StoreTrueAction, argparse._CountAction, argparse._HelpAction, argparse._AppendAction)
    for action in parser._actions:
        if not isinstance(action, silent) and action.dest != "resume":
            assert "default" in action.help, action.dest
    text = parser.format_help()
    assert "(default: 0)" in text and "(default: ray_results)" in text and "else 8)" in text


def test_config_fields_lists_each_field_with_its_type_default_and_rule(capsys):
    code, out, _ = run_main(["config-fields"], capsys)
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert code == 0 and set(lines) == {f.name for f in dataclasses.fields(Config)}
    assert lines["lr"].split()[1:3] == ["float", "0.0001"] and "[> 0]" in lines["lr"]
    assert "[one of sgd, adam, adamw]" in lines["optimizer"] and "[in [0, 0.5)]" in lines["label_smoothing"]


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Config) if f.metadata["rule"]])
def test_each_listed_rule_is_the_rule_enforced(field):
    """A field's listed rule is what Config enforces: its edge values are accepted or refused as the rule says."""
    from tune_siamese.core.config import obeys
    from tune_siamese.core.errors import InputError

    rule = Config.__dataclass_fields__[field].metadata["rule"]
    edges = [0.0, 1.0, 0.5, -1.0] if rule.startswith(("(", "[")) else [0.0, -1.0, 1.0]
    for value in edges:
        kind = Config.__dataclass_fields__[field].type
        candidate = int(value) if kind == "int" else value
        if kind == "int" and candidate != value:
            continue
        if field == "input_size" and candidate:  # a nonzero input_size must also be at least 72
            candidate = 96
        others = {} if field == "input_size" else {"input_size": 96}  # the net's own minimum apart
        try:
            Config.from_dict({**others, field: candidate})
            accepted = True
        except InputError:
            accepted = False
        assert accepted == obeys(candidate, rule), (field, candidate)


def test_a_misspelt_set_field_gets_a_suggestion(capsys):
    code, _, err = run_main(["train", "--data", "synthetic", "--set", "learning_rte=0.1"], capsys)
    assert code == 2 and "learning_rte" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_main(["train", "--data", "synthetic", "--set", "batch_sise=8"], capsys)
    assert "did you mean batch_size?" in err and "config-fields" in err


def test_evaluate_out_writes_a_report(trained, fake_lfw, tmp_path, capsys):
    """evaluate --out: metrics.json rounded with TAR at FAR 1e-2 and 1e-3 and intervals, the ROC points and a
    log-FAR ROC picture; a file where the folder should be is refused before scoring."""
    out = tmp_path / "report"
    code, printed, _ = run_main(["evaluate", str(trained["out"] / "checkpoint.pt"), "--out", str(out)], capsys)
    assert code == 0
    written = json.loads((out / "metrics.json").read_text())
    full = json.loads(printed)
    assert written["auc"] == round(full["auc"], 4) and written["tar_at_far_0.001"] == round(full["tar_at_far_0.001"], 4)
    assert {"tar_at_far_0.01", "tar_at_far_0.01_ci", "auc_ci"} <= set(written)
    assert (out / "roc.csv").read_text().startswith("fpr,tpr\n") and (out / "roc.png").stat().st_size > 10_000
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_main(["evaluate", str(trained["out"] / "checkpoint.pt"), "--out", str(blocker)], capsys)
    assert code == 2 and "--out must be a folder" in err


def test_the_summarys_wall_times_add_up_and_the_live_table_drops_misleading_lines(capsys):
    from tune_siamese.app.console import wall_line
    from tune_siamese.searching.live_table import live_table

    line = wall_line({"search": 10.0, "finalists": 3.0, "retrain_test_export": 5.0}, 20.0)
    assert line == ("Wall time: start-up (data, Ray) 2 s, search 10 s, finalists 3 s, final model, test and export "
                    "5 s; 20 s in all")
    table = live_table(["lr"])
    table._progress_str = lambda trials, done, *info: "\n".join(
        ["== Status ==", "Using AsyncHyperBand: num_stopped=3", "Bracket: Iter 1.000: -0.69", *info,
         "Result logdir: /tmp/ray/session_x/driver_artifacts", "Number of trials: 3/3 (3 TERMINATED)"])
    table.report([], True, "Logical resource usage: 1.0/2 CPUs")
    shown = capsys.readouterr().out
    assert "Logical resource usage" in shown and "Number of trials: 3/3" in shown
    assert "AsyncHyperBand" not in shown and "Bracket" not in shown and "Result logdir" not in shown


MISSPELT = [
    (["--num-sample", "3"], "run_search.py: error: unrecognized arguments: --num-sample 3; did you mean --num-samples? "
                            "(see run_search.py --help)"),
    (["--num-samplez=3"], "run_search.py: error: unrecognized arguments: --num-samplez=3; did you mean "
                          "--num-samples? (see run_search.py --help)"),
    (["search", "--max-epoch", "3"], "tune-siamese search: error: unrecognized arguments: --max-epoch 3; did you "
                                     "mean --max-epochs? (see tune-siamese search --help)"),
]


@pytest.mark.parametrize("argv, line", MISSPELT)
def test_an_abbreviated_or_misspelt_option_is_refused_with_the_one_meant(argv, line, capsys):
    """argparse's abbreviations would take --num-sample for --num-samples and start a search on a guess."""
    from tune_siamese.app import cli, search_command

    assert (cli.main(argv) if argv[0] == "search" else search_command.main(argv)) == 2
    assert capsys.readouterr().err.splitlines() == [line]
