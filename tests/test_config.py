from pathlib import Path

import pytest

from lvtl.config import Federation, UpdateFilter, load_site_config
from lvtl.errors import ConfigError

SITES = Path(__file__).resolve().parents[1] / "sites"


@pytest.mark.parametrize("site,role,sharing", [("site-1", "model-owner", False),
                                               ("site-2", "participant", False),
                                               ("site-3", "participant", True)])
def test_site_templates_load(site, role, sharing, monkeypatch):
    monkeypatch.delenv("LVTL_DATA_ROOT", raising=False)
    cfg = load_site_config(SITES / site / "site.toml")
    assert cfg.name == site and cfg.role == role and cfg.split_seed == int(site[-1])
    assert cfg.preprocess.repair_radius == 5 and cfg.preprocess.spacing_mm == 1.0
    assert cfg.trusted_keys == SITES / site / "trusted_keys"
    assert cfg.data_root == Path(f"/data/lvtl/{site}")
    assert cfg.federation == Federation(allow_weight_sharing=sharing)


def test_environment_overrides_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("LVTL_DATA_ROOT", str(tmp_path))
    assert load_site_config(SITES / "site-2" / "site.toml").data_root == tmp_path


@pytest.mark.parametrize("text,words", [
    ('[site]\nname = "s"\n[data]\nrooot = "x"\n', ["rooot", "[data]", "root"]),
    ('[site]\nname = "s"\nrole = "boss"\n', ["boss", "model-owner, participant"]),
    ('[site]\nname = "s"\n[preprocess]\nrepair_mode = "4d"\n', ["4d", "2d, 3d"]),
    ('[site]\nname = "s"\n[extra]\n', ["[extra]"]),
    ('[data]\nroot = "x"\n', ["name is required"]),
    ('[site\n', ["not valid TOML"]),
])
def test_bad_config_names_file_and_problem(tmp_path, text, words):
    path = tmp_path / "site.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_site_config(path)
    assert str(path) in str(err.value)
    for w in words:
        assert w in str(err.value)


def test_federation_is_off_unless_the_site_turns_it_on(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text('[site]\nname = "s"\n')
    assert load_site_config(path).federation == Federation(
        allow_weight_sharing=False, update_filter=UpdateFilter.NONE, filter_args=())
    path.write_text('[site]\nname = "s"\n[federation]\nallow_weight_sharing = true\n'
                    'update_filter = "percentile"\nfilter_args = { percentile = 10, '
                    'gamma = 0.01 }\n')
    assert load_site_config(path).federation == Federation(
        allow_weight_sharing=True, update_filter=UpdateFilter.PERCENTILE,
        filter_args=(("gamma", 0.01), ("percentile", 10)))


@pytest.mark.parametrize("section,words", [
    ('allow_weight_sharing = "yes"', ["allow_weight_sharing", "true or false"]),
    ("allow_weight_sharing = 1", ["allow_weight_sharing", "true or false"]),
    ('update_filter = "percentil"', ["[federation]", "'percentil'",
                                     "did you mean 'percentile'",
                                     "none, percentile, svt, exclude_vars"]),
    ("update_filter = 3", ["[federation]", "update_filter"]),
    ("filter_args = { percentile = 10 }", ["filter_args given without an update_filter"]),
    ('update_filter = "svt"\nfilter_args = 0.1', ["filter_args must be a table"]),
    ('update_filter = "svt"\nfilter_args = { epsilon = [0.1] }', ["filter_args must be a table"]),
    ('allow_weight_sharing = true\nshare = true', ["share", "[federation]"]),
])
def test_bad_federation_names_file_and_problem(tmp_path, section, words):
    path = tmp_path / "site.toml"
    path.write_text(f'[site]\nname = "s"\n[federation]\n{section}\n')
    with pytest.raises(ConfigError) as err:
        load_site_config(path)
    assert str(err.value).startswith(f"{path}: ")
    for w in words:
        assert w in str(err.value)
