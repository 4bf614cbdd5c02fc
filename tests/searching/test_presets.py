"""Every named search space builds valid Configs: its fixed values, its starting points and random draws."""
from __future__ import annotations

import numpy as np
import pytest

from search_spaces import PRESETS
from tune_siamese.core.config import Config
from tune_siamese.searching.spaces import get_preset


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_yields_valid_configs(name):
    preset = get_preset(name)
    for point in preset.points:
        assert set(point) == set(preset.space)
        Config.from_dict({**preset.fixed, **point}, source=f"{name} point")
    rng = np.random.default_rng(0)
    for _ in range(25):
        draw = {key: domain.sample(random_state=rng) for key, domain in preset.space.items()}
        Config.from_dict({**preset.fixed, **draw}, source=f"{name} draw")


def test_best_presets_differ_only_in_mined_pairs():
    best, mined = PRESETS["best"], PRESETS["best-mined"]
    assert best.space == mined.space and best.points == mined.points
    assert best.fixed.get("mined_pairs", 0) == 0 and mined.fixed["mined_pairs"] > 0
    assert {k: v for k, v in mined.fixed.items() if k != "mined_pairs"} == best.fixed


@pytest.mark.parametrize("key, values", [("drawn_pairs", [400, 800]), ("image_size", [72, 96]), ("data_seed", [0, 1])])
def test_a_space_that_searches_a_data_setting_is_refused(tmp_path, key, values):
    """The data are read once for the whole search: a trial drawn another data setting would train on data its
    config does not describe, so such a space is refused before anything runs."""
    from ray import tune

    import tune_siamese as ts
    from tune_siamese.core.errors import InputError

    space = {"lr": tune.loguniform(1e-4, 1e-2), key: tune.choice(values)}
    with pytest.raises(InputError, match=f"space searches data setting\\(s\\) {key}, which the whole search shares"):
        ts.search(space=space, storage_path=str(tmp_path))
    assert not any(tmp_path.iterdir())
