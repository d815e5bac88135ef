"""``lvtl site check``: one line per finding, non-zero on any problem."""

import subprocess
import sys
from pathlib import Path

import pytest

from lvtl.artifact import keygen
from lvtl.sitecheck import Account, check_site
from lvtl.synth.profiles import draw_case
from lvtl.synth.site import write_case

SERVICE = Account("lvtl-client", 4242, frozenset({4242}))  # an unprivileged service account


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_case(draw_case("site-2", 0), root)
    return root


@pytest.fixture
def site(tmp_path, data):
    """A well-set-up site: config, one case, a pinned key, all owned by root and not writable
    by the service account."""
    (tmp_path / "data").symlink_to(data)
    kid = keygen(tmp_path / "owner")
    (tmp_path / "trusted").mkdir()
    (tmp_path / "owner" / f"{kid}.pub.pem").rename(tmp_path / "trusted" / f"{kid}.pub.pem")
    cfg = tmp_path / "site.toml"
    cfg.write_text('[site]\nname = "site-2"\n[data]\nroot = "data"\ncache = "cache"\n'
                   f'[trust]\nkeys = "trusted"\nrevoked = ["{"0" * 16}"]\n'
                   'min_version = "1.0.0"\n')
    for p in (cfg, tmp_path, tmp_path / "trusted", *(tmp_path / "trusted").iterdir()):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return cfg


def test_a_well_set_up_site_passes(site):
    found = check_site(site, SERVICE)
    assert all(f.ok for f in found), [f.line() for f in found]
    text = "\n".join(f.line() for f in found)
    assert "1 case folder(s)" in text and "1 pinned key(s)" in text
    assert "minimum model version 1.0.0" in text and "cannot change" in text


def test_a_trust_folder_the_client_can_change_is_a_problem(site):
    (site.parent / "trusted").chmod(0o777)
    bad = [f for f in check_site(site, SERVICE) if not f.ok]
    assert [f.what for f in bad] == [f"account lvtl-client can change {site.parent / 'trusted'}"]


def test_root_is_reported_as_able_to_change_everything(site):
    bad = [f for f in check_site(site, Account("root", 0, frozenset({0}))) if not f.ok]
    assert len(bad) == 1 and "is root" in bad[0].what


@pytest.mark.parametrize("edit,words", [
    (lambda t: t.replace('min_version = "1.0.0"\n', ""), ["min_version is required"]),
    (lambda t: t.replace('root = "data"', 'root = "nowhere"'), ["nowhere", "not a folder"]),
    (lambda t: t.replace('keys = "trusted"', 'keys = "nokeys"'), ["nokeys"]),
])
def test_each_problem_is_one_line(site, edit, words):
    site.write_text(edit(site.read_text()))
    bad = [f.line() for f in check_site(site, SERVICE) if not f.ok]
    assert len(bad) == 1 and bad[0].startswith("PROBLEM"), bad
    for w in words:
        assert w in bad[0]


def test_cli_exits_non_zero_on_a_problem(site):
    lvtl = [sys.executable, "-m", "lvtl.cli", "site", "check", "--config", str(site)]
    r = subprocess.run([*lvtl, "--account", "nobody"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("\n") == len(r.stdout.strip().splitlines()) and "PROBLEM" not in r.stdout
    (Path(site).parent / "trusted").chmod(0o777)
    r = subprocess.run([*lvtl, "--account", "nobody"], capture_output=True, text=True)
    assert r.returncode == 1 and "PROBLEM account nobody can change" in r.stdout
