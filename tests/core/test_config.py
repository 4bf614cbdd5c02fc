"""Config: validation names the option, types are coerced, JSON round-trips."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tune_siamese.core.config import Config
from tune_siamese.core.errors import InputError


def test_unknown_key_is_refused_and_named():
    with pytest.raises(InputError, match=r"my\.json: unknown option\(s\) learning_rate"):
        Config.from_dict({"learning_rate": 0.1}, source="my.json")


def test_bad_choice_names_the_option():
    with pytest.raises(InputError, match=r"optimizer='rmsprop' is not one of sgd, adam, adamw"):
        Config.from_dict({"optimizer": "rmsprop"})
    with pytest.raises(InputError, match="option val_split"):
        Config(val_split="sideways")


@pytest.mark.parametrize("values, message", [
    ({"lr": 0}, "option lr=0"),
    ({"val_fraction": 1.0}, "option val_fraction"),
    ({"dropout": 1.0}, "option dropout"),
    ({"image_size": 64}, "too small"),
    ({"image_size": 105, "input_size": 60}, "option input_size=60"),
    ({"crop": 1.5}, "option crop"),
    ({"zoom": 0.0}, "option zoom"),
    ({"head": "cosine"}, "option head"),
    ({"mined_pairs": -1}, "option mined_pairs"),
])
def test_out_of_range_values_name_the_option(values, message):
    with pytest.raises(InputError, match=message):
        Config.from_dict(values)


def test_type_coercion():
    config = Config.from_dict({"lr": "3e-4", "batch_size": "64", "max_epochs": np.int64(7), "width": np.float32(0.5),
                               "batchnorm": "true", "augment": "0", "tta_flip": np.bool_(True), "patience": 4.0})
    assert config.lr == pytest.approx(3e-4) and type(config.lr) is float
    assert config.batch_size == 64 and type(config.batch_size) is int
    assert config.max_epochs == 7 and type(config.max_epochs) is int  # numpy scalars from Tune become Python
    assert config.width == 0.5 and type(config.width) is float
    assert config.batchnorm is True and config.augment is False and config.tta_flip is True
    assert config.patience == 4 and type(config.patience) is int


@pytest.mark.parametrize("values, message", [
    ({"batch_size": 2.5}, "option batch_size=2.5 is not a valid int"),
    ({"batchnorm": "maybe"}, "option batchnorm='maybe' is not a valid bool"),
    ({"lr": "fast"}, "option lr='fast' is not a valid float"),
])
def test_uncoercible_values_name_the_option(values, message):
    with pytest.raises(InputError, match=message):
        Config.from_dict(values)


def test_json_round_trip(tmp_path):
    config = Config(optimizer="sgd", lr=0.05, batchnorm=True, width=0.25, data="/some/folder", tta_flip=True)
    path = tmp_path / "config.json"
    config.save(path)
    assert json.loads(path.read_text())["optimizer"] == "sgd"
    assert Config.load(path) == config
    assert config.replace(lr=0.1).lr == 0.1 and config.lr == 0.05


def test_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        Config.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "lr": 0.1,\n  oops\n}\n')
    with pytest.raises(InputError, match=re.escape(f"{bad}:3: not valid JSON")):
        Config.load(bad)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(InputError, match="one JSON object"):
        Config.load(listed)
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"epochs": 3}')
    with pytest.raises(InputError, match=re.escape(f"{unknown}: unknown option(s) epochs")):
        Config.load(unknown)
