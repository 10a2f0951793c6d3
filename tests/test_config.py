"""config.toml loading: strict keys, typed values, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from cacnode.config import Config, load_config
from cacnode.settings import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_bundled_config_loads_and_matches_defaults_where_unset():
    config = load_config(REPO / "config.toml")
    assert config.scp.ae_title == "CACNODE"
    assert config.scoring.threshold_hu == 130.0
    assert config.scoring.weight_cutoffs_hu == (200.0, 300.0, 400.0)
    assert config.model.weights == REPO / "models" / "cacnode-v1.pt"


def test_empty_file_is_all_defaults(tmp_path):
    config = load_config(write(tmp_path, ""))
    default = Config()
    assert config.scoring == default.scoring
    assert config.scp == default.scp


def test_contract_keys_alone_are_a_valid_config(tmp_path):
    config = load_config(write(tmp_path, """
[scp]
ae_title = "NODE"
host = "127.0.0.1"
port = 11999
allowed_calling_aets = ["SCANNER"]
[series]
quiet_seconds = 5
[storage]
directory = "spool"
[[destinations]]
ae_title = "PACS"
host = "127.0.0.1"
port = 4242
[[destinations]]
ae_title = "ARCHIVE"
host = "127.0.0.1"
port = 4243
"""))
    assert config.scp.port == 11999
    assert config.scp.allowed_calling_aets == ("SCANNER",)
    assert config.series.quiet_seconds == 5.0
    assert [d.ae_title for d in config.destinations] == ["PACS", "ARCHIVE"]
    # Relative paths are relative to the config file's folder.
    assert config.storage.directory == tmp_path / "spool"


def test_unknown_key_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"scoring: unknown key\(s\) treshold_hu"):
        load_config(write(tmp_path, "[scoring]\ntreshold_hu = 130\n"))


def test_unknown_section_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown key.*scorring"):
        load_config(write(tmp_path, "[scorring]\n"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[scp]\nport = "11112"\n', "scp.port: expected an integer"),
        ("[scoring]\nconnectivity = 6\n", "scoring.connectivity: must be one of 4, 8"),
        ("[scoring]\nnormalise_increment = 1\n", "scoring.normalise_increment: expected true or false"),
        ("[scoring]\nweight_cutoffs_hu = [200, 300]\n", "scoring.weight_cutoffs_hu: expected 3 values"),
        ("[scoring]\nmin_area = -1\n", "min_area must be >= 0"),
        ("[[destinations]]\nae_title = \"PACS\"\n", r"destinations\[0\]: missing key\(s\) host, port"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[scp\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
