from pathlib import Path

import pytest

from lvtl.config import load_site_config
from lvtl.errors import ConfigError

SITES = Path(__file__).resolve().parents[1] / "sites"


@pytest.mark.parametrize("site,role", [("site-1", "model-owner"), ("site-2", "participant")])
def test_site_templates_load(site, role, monkeypatch):
    monkeypatch.delenv("LVTL_DATA_ROOT", raising=False)
    cfg = load_site_config(SITES / site / "site.toml")
    assert cfg.name == site and cfg.role == role and cfg.split_seed in (1, 2)
    assert cfg.preprocess.repair_radius == 5 and cfg.preprocess.spacing_mm == 1.0
    assert cfg.trusted_keys == SITES / site / "trusted_keys"


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
