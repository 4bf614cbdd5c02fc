"""Each search option is declared once, in searching.options: run_search.py's parser, ts.search's keywords, the
command line recorded in the experiment and the --resume rule are all made from that declaration."""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import shlex
from dataclasses import dataclass
from typing import Any

import pytest

import tune_siamese as ts
from tune_siamese.app import keywords, search_command
from tune_siamese.app.api import search_options, search_settings
from tune_siamese.core.errors import InputError
from tune_siamese.searching import options
from tune_siamese.searching.options import SearchOptions, declared, option_fields, resumable, value_type
from tune_siamese.searching.settings import settings_for

ACTIONS = {"value": argparse._StoreAction, "repeatable": argparse._AppendAction, "flag": argparse._StoreTrueAction,
           "count": argparse._CountAction, "boolean-optional": argparse.BooleanOptionalAction}


def other_value(field: dataclasses.Field[Any]) -> Any:
    """A value of the option other than its default, as its declaration allows."""
    option, of = declared(field), value_type(field)
    if option.kind == "repeatable":
        return ("lr=0.01", "augment=true")
    if option.kind == "count":
        return 2
    if of is bool:
        return not field.default
    if option.choices:
        return next(choice for choice in option.choices if choice != field.default)
    return {int: 7, float: 0.5, str: "some where"}[of]


def test_an_option_declared_once_is_on_the_command_line_and_a_keyword(monkeypatch, tmp_path):
    """One field with option(...) in SearchOptions is all an option needs: --help lists it in its group, the
    command line and ts.search take it (type-checked), the recorded command gives it, and --resume refuses it."""
    @dataclass(frozen=True)
    class WithWarmup(SearchOptions):
        warmup: int = options.option(0, options.WHAT, metavar="N",
                                     help="epochs of warm-up the search does not count (default: %(default)s)")

    monkeypatch.setattr(options, "SearchOptions", WithWarmup)
    parser = search_command.build_parser()
    group = next(g for g in parser._action_groups if g.title == options.WHAT)
    assert "--warmup" in [s for action in group._group_actions for s in action.option_strings]
    help_text = " ".join(parser.format_help().split())
    assert "--warmup N" in help_text and "epochs of warm-up the search does not count (default: 0)" in help_text
    assert search_command.parse_args(["--warmup", "2"]) == WithWarmup(warmup=2, argv=("--warmup", "2"))
    given = search_options({"warmup": 2})
    assert isinstance(given, WithWarmup) and given.warmup == 2 and given.command.endswith("--warmup 2")
    with pytest.raises(InputError, match="option warmup='2' must be a whole number"):
        search_options({"warmup": "2"})
    with pytest.raises(InputError, match="--warmup would be ignored"):
        settings_for(search_options({"resume": "ray_results/x", "warmup": 2}))
    def search(**options: Any) -> None: ...

    def resume(experiment: str, **options: Any) -> None: ...

    keywords.document(search, resume, ts.SearchResult)  # what ts.search's signature and help are made by
    assert inspect.signature(search).parameters["warmup"].annotation is int
    assert "\n    warmup: epochs of warm-up the search does not count (default: 0)\n" in search.__doc__
    assert "warmup" not in inspect.signature(resume).parameters  # it shapes the search
    settings, _ = search_settings(space="smoke", storage_path=str(tmp_path), name="w", warmup=3)
    assert settings.command.startswith("python run_search.py --space smoke") and settings.command.endswith(
        "--warmup 3")


def test_resume_refuses_every_option_that_shapes_the_search():
    """Options are search-shaping unless their declaration says per_run: each one given with --resume is refused
    by name (so an option added later is refused there too, not silently ignored); per_run ones are allowed, and
    one that grows the search (--num-samples) is judged by its value (tests/searching/test_grow.py)."""
    assert [f.name for f in option_fields() if declared(f).grows] == ["num_samples"]
    shaping = [f for f in option_fields() if not resumable(f)]
    assert len(shaping) >= 25
    for field in shaping:
        given = search_options({field.name: other_value(field)}).command_words()
        with pytest.raises(InputError, match=f"{options.flag(field.name)} would be ignored"):
            settings_for(search_command.parse_args(["--resume", "ray_results/x", *given]))
    per_run = search_command.parse_args(["--resume", "x", "--quiet", "--ensemble", "2", "--no-retrain"])
    assert per_run.search_shaping_given() == []


def test_the_parser_reads_each_option_as_declared():
    """The parser is made from the declaration: each option's flags, kind, type, default, choices, metavar, help
    and group, the groups in --help's order; no option is only the parser's."""
    parser = search_command.build_parser()
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert list(actions) == [f.name for f in option_fields()]
    group_of = {a.dest: g.title for g in parser._action_groups for a in g._group_actions}
    for field in option_fields():
        option, action = declared(field), actions[field.name]
        assert type(action) is ACTIONS[option.kind], field.name
        assert action.option_strings == [*([option.short] if option.short else []), options.flag(field.name),
                                         *(["--no-" + field.name.replace("_", "-")]
                                           if option.kind == "boolean-optional" else [])]
        assert group_of[field.name] == option.group and action.help == option.help
        assert (list(action.default) == list(field.default) if option.kind == "repeatable"
                else action.default == field.default), field.name
        if option.kind in ("value", "repeatable"):
            assert action.type is value_type(field) and action.metavar == option.metavar
            assert action.choices == option.choices
        # a kind fits its type: a flag is a bool, a count an int, a repeatable option a tuple of strings
        expected = {"flag": bool, "boolean-optional": bool, "count": int, "repeatable": str}.get(option.kind)
        assert expected is None or value_type(field) is expected, field.name
    titles = [g.title for g in parser._action_groups if any(a.dest != "help" for a in g._group_actions)]
    assert titles == [options.WHAT, options.SEARCHER, options.RESOURCES, options.RESULTS, options.AFTER,
                      options.CONSOLE]
    assert search_command.parse_args([]) == SearchOptions(argv=())
    assert options.FALLBACKS["num_samples"] == 8 and "(default: the preset's, else 8)" in actions["num_samples"].help


@pytest.mark.parametrize("field", option_fields(), ids=lambda f: f.name)
def test_a_keyword_gives_what_its_flag_gives_and_records_it(field):
    """ts.search(name=value) and the command line it records give the same options: the recorded command reruns
    the search."""
    value = other_value(field)
    given = search_options({field.name: value})
    assert getattr(given, field.name) == value
    words = shlex.split(given.command)
    assert words[:2] == ["python", "run_search.py"]
    assert search_command.parse_args(words[2:]) == dataclasses.replace(given, prog="run_search.py")
    if declared(field).kind == "boolean-optional":  # False is given too: --no-reproducible
        assert search_options({field.name: False}).command_words() == ["--no-" + field.name.replace("_", "-")]


def test_keywords_of_every_option_at_once_round_trip():
    values = {f.name: other_value(f) for f in option_fields()}
    given = search_options(values)
    assert {f.name: getattr(given, f.name) for f in option_fields()} == values
    assert search_command.parse_args(list(given.argv or ())) == dataclasses.replace(given, prog="run_search.py")
    # a dict for --set (True as the command line's true), an int for a float option, None for the default
    typed = search_options({"set": {"image_size": 96, "batchnorm": True}, "cpus_per_trial": 2, "name": None})
    parsed = search_command.parse_args(["--set", "image_size=96", "--set", "batchnorm=true", "--cpus-per-trial", "2"])
    assert dataclasses.replace(typed, argv=None, prog="run_search.py") == dataclasses.replace(parsed, argv=None)


@pytest.mark.parametrize(("keywords", "message"), [
    ({"num_samples": "x"}, "option num_samples='x' must be a whole number"),
    ({"num_samples": True}, "option num_samples=True must be a whole number"),
    ({"max_epochs": 2.5}, "option max_epochs=2.5 must be a whole number"),
    ({"cpus_per_trial": "2"}, "option cpus_per_trial='2' must be a number"),
    ({"gpus_per_trial": False}, "option gpus_per_trial=False must be a number"),
    ({"searcher": "nope"}, "option searcher='nope' must be one of tpe, random, gp, cmaes, qmc, nsga2"),
    ({"final": "best"}, "option final='best' must be one of retrain, trial, seeds, folds"),
    ({"reproducible": 3}, "option reproducible=3 must be True or False"),
    ({"no_retrain": 1}, "option no_retrain=1 must be True or False"),
    ({"name": 3}, "option name=3 must be a string"),
    ({"verbose": -1}, "option verbose=-1 must be a whole number >= 0"),
    ({"verbose": True}, "option verbose=True must be a whole number >= 0"),
    ({"set": "lr=0.1"}, "option set='lr=0.1' must be a dict or a list of \"KEY=VALUE\" strings"),
    ({"set": [("lr", 0.1)]}, "must be a dict or a list"),
    ({"num_sampels": 3}, "no option 'num_sampels'; did you mean num_samples\\?"),
])
def test_a_keyword_of_the_wrong_type_or_choice_is_one_line_before_anything_runs(monkeypatch, keywords, message):
    def run(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the search ran")

    monkeypatch.setattr(search_command, "run", run)
    with pytest.raises(InputError, match=message) as raised:
        ts.search(**keywords)
    assert "\n" not in str(raised.value) and str(raised.value).startswith("ts.search() ")


def test_search_without_console_is_quiet_and_returns_the_command_that_reruns_it(monkeypatch, tmp_path):
    """No live table (the progress line says it), and no --quiet the user did not ask for in the record."""
    ran: list[tuple[SearchOptions, bool]] = []

    def run(options: SearchOptions, ray_logs: bool) -> tuple[dict[str, Any], None]:
        ran.append((options, ray_logs))
        return {"experiment": "somewhere"}, None

    monkeypatch.setattr(search_command, "run", run)
    result = ts.search(num_samples=4, storage_path=tmp_path / "a b")
    options, ray_logs = ran[0]
    assert options.quiet and not ray_logs and options.storage_path == str(tmp_path / "a b")
    assert result.command == options.command == ("python run_search.py --num-samples 4 --storage-path "
                                                 f"{shlex.quote(str(tmp_path / 'a b'))}")
    assert ts.search(verbose=1).command.endswith("--verbose") and ran[-1] == (ran[-1][0], True)
    assert not ran[-1][0].quiet
    assert not ts.search(console=True).command.endswith("--quiet") and ran[-1][1]


def at_default(field: dataclasses.Field[Any]) -> list[str]:
    """Command-line words giving the option its default value ([] where words cannot: a flag, a count, None)."""
    option = declared(field)
    if option.kind in ("value", "boolean-optional") and field.default is not None:
        if option.kind == "boolean-optional":
            return [options.flag(field.name) if field.default else "--no-" + field.name.replace("_", "-")]
        return [options.flag(field.name), str(field.default)]
    return []


def test_resume_refuses_a_search_shaping_option_given_at_its_default():
    """`--resume EXP --space quick` resumed with the recorded space, exit 0, without a word, because quick is the
    default; ts.search(resume=..., space="quick") likewise. What counts is that the option was given."""
    shaping = [f for f in option_fields() if not resumable(f) and at_default(f)]
    assert {"space", "data", "seed", "storage_path", "cpus_per_trial"} <= {f.name for f in shaping}
    for field in shaping:
        parsed = search_command.parse_args(["--resume", "ray_results/x", *at_default(field)])
        assert getattr(parsed, field.name) == field.default
        with pytest.raises(InputError, match=f"{options.flag(field.name)} would be ignored"):
            settings_for(parsed)
        with pytest.raises(InputError, match=f"{options.flag(field.name)} would be ignored"):
            settings_for(search_options({"resume": "ray_results/x", field.name: field.default}))
    # None leaves a keyword out, as before; the options ts.resume may take are still taken
    assert search_options({"resume": "x", "space": None, "quiet": True}).search_shaping_given() == []
    assert search_command.parse_args(["--resume", "x", "--no-retrain", "-v"]).search_shaping_given() == []


def test_set_values_are_recorded_as_their_config_type(tmp_path):
    """--set lr=0.005 was recorded as the string "0.005" in search_settings.json and in each trial's params, so
    analysis could not average config/lr. Each --set value now takes its Config field's type."""
    settings, preset = settings_for(search_command.parse_args([
        "--space", "quick", "--set", "lr=0.005", "--set", "augment=true", "--set", "image_size=96",
        "--set", "width=1", "--storage-path", str(tmp_path), "--name", "typed"]))
    base = json.loads(json.dumps(dataclasses.asdict(settings)))["base"]
    assert (base["lr"], base["augment"], base["image_size"], base["width"]) == (0.005, True, 96, 1.0)
    assert [type(base[key]) for key in ("lr", "augment", "image_size", "width")] == [float, bool, int, float]
    assert settings.not_searched == ["lr", "width", "augment"] and "lr" not in preset.space
    keyword, _ = search_settings(space="quick", set={"lr": 0.005}, storage_path=str(tmp_path), name="typed2")
    assert keyword.base["lr"] == 0.005 and isinstance(keyword.base["lr"], float)


def test_settings_that_hold_set_values_as_strings_still_resume(tmp_path):
    """Experiments written before recorded --set values as strings; Config still reads them."""
    from tune_siamese.core.config import Config
    from tune_siamese.searching.settings import load_resume_settings

    settings, _ = settings_for(search_command.parse_args(["--space", "smoke", "--set", "lr=0.005",
                                                          "--storage-path", str(tmp_path), "--name", "old"]))
    saved = dataclasses.asdict(settings)
    saved["base"] = {**saved["base"], "lr": "0.005", "augment": "true"}
    (tmp_path / "old").mkdir(mode=0o755)
    (tmp_path / "old" / "search_settings.json").write_text(json.dumps(saved))
    (tmp_path / "old" / "search_settings.json").chmod(0o644)
    resumed, _ = settings_for(search_command.parse_args(["--resume", str(tmp_path / "old")]))
    assert load_resume_settings(str(tmp_path / "old")).base["lr"] == "0.005"
    config = Config.from_dict(resumed.base, source="search settings")
    assert (config.lr, config.augment) == (0.005, True)


# The options whose one value is a string (space also takes a dict or a Preset: a list is refused as a space)
STRING_OPTIONS = [f for f in option_fields() if value_type(f) is str and declared(f).kind == "value"
                  and f.name != "space"]


@pytest.mark.parametrize("field", STRING_OPTIONS, ids=lambda f: f.name)
def test_a_string_option_refuses_a_list(tmp_path, monkeypatch, field):
    """ts.search(storage_path=["/x"]) ran a whole search into a folder named "['/x']": a str option takes a str
    or a path only, refused in one line before anything is written."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=re.escape(f"ts.search() option {field.name}=['/x'] must be a string")):
        ts.search(**{field.name: ["/x"]})
    with pytest.raises(InputError, match="must be a string"):
        search_options({field.name: b"/x"})
    assert list(tmp_path.iterdir()) == []


def test_a_list_is_no_space(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=re.escape("ts.search(space=...) must be a preset name")):
        ts.search(space=["/x"], storage_path=str(tmp_path / "results"))
    assert list(tmp_path.iterdir()) == []
