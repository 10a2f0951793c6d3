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


def test_a_minimal_config_anywhere_uses_the_bundled_weights(tmp_path):
    # The README's minimal config, copied outside the repository: no [model] table, so the
    # weights are the ones shipped with the code, not a models/ folder beside the config.
    readme = (REPO / "README.md").read_text()
    minimal = readme.split("so a file with only these is valid:\n\n```toml\n", 1)[1].split("```", 1)[0]
    config = load_config(write(tmp_path, minimal))
    assert config.model.weights == REPO / "models" / "cacnode-v1.pt" and config.model.weights.is_file()
    assert config.storage.directory == Path("/var/lib/cacnode")
    # a relative path given in the file is still the file's own folder's
    assert load_config(write(tmp_path, '[model]\nweights = "w.pt"\n')).model.weights == tmp_path / "w.pt"


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


def test_dicomweb_destination_beside_a_dimse_one(tmp_path):
    (tmp_path / "pacs.password").write_text("s3cret\n")
    config = load_config(write(tmp_path, """
[[destinations]]
ae_title = "PACS"
host = "127.0.0.1"
port = 4242
[[destinations]]
kind = "dicomweb"
url = "https://pacs.example/dicom-web/"
auth = "basic"
username = "cacnode"
password_file = "pacs.password"
ca_bundle = "hospital-ca.pem"
[[destinations]]
kind = "dicomweb"
url = "http://archive.local:8042/dicom-web"
auth = "bearer"
token = "t0ken"
"""))
    dimse, web, bearer = config.destinations
    assert dimse.kind == "dimse" and dimse.key == "PACS@127.0.0.1:4242"
    assert web.kind == "dicomweb" and web.key == "https://pacs.example/dicom-web"  # stable: no trailing slash
    assert web.password_file == tmp_path / "pacs.password" and web.ca_bundle == tmp_path / "hospital-ca.pem"
    assert web.tls_verify
    assert bearer.key == "http://archive.local:8042/dicom-web"
    # secrets stay out of keys and reprs (which reach logs and tracebacks)
    assert "t0ken" not in repr(config.destinations) and "t0ken" not in bearer.key


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('kind = "dicom"\nurl = "https://x"', r"destinations\[0\]\.kind: must be one of 'dimse', 'dicomweb'"),
        ('kind = "dicomweb"', r"destinations\[0\]: missing key\(s\) url"),
        ('kind = "dicomweb"\nurl = "https://x"\nae_title = "PACS"', r"destinations\[0\]: unknown key\(s\) ae_title"),
        ('ae_title = "PACS"\nhost = "h"\nport = 104\nurl = "https://x"', r"destinations\[0\]: unknown key\(s\) url"),
        ('kind = "dicomweb"\nurl = "ftp://x/dicom-web"', "destinations.url must be an http:// or https:// URL"),
        ('kind = "dicomweb"\nurl = "https://u:p@x/dicom-web"', "destinations.url must not hold a user name"),
        ('kind = "dicomweb"\nurl = "https://x/dicom-web?a=1"', "without query or fragment"),
        ('kind = "dicomweb"\nurl = "https://x"\nauth = "digest"', r"destinations\[0\]\.auth: must be one of"),
        ('kind = "dicomweb"\nurl = "https://x"\nauth = "basic"\npassword = "p"', "destinations.username is needed"),
        ('kind = "dicomweb"\nurl = "https://x"\nauth = "basic"\nusername = "u"',
         "needs exactly one of destinations.password or destinations.password_file"),
        ('kind = "dicomweb"\nurl = "https://x"\nauth = "bearer"\ntoken = "t"\ntoken_file = "f"',
         "needs exactly one of destinations.token or destinations.token_file"),
        ('kind = "dicomweb"\nurl = "https://x"\nusername = "u"\npassword = "p"',
         "destinations.username is set but auth is 'none'"),
        ('kind = "dicomweb"\nurl = "https://x"\nauth = "basic"\nusername = "u"\npassword = "p"\ntoken = "t"',
         "destinations.token is set but auth is 'basic'"),
        ('kind = "dicomweb"\nurl = "http://x"\nca_bundle = "ca.pem"', "apply to https only"),
        ('kind = "dicomweb"\nurl = "https://x"\nca_bundle = "ca.pem"\ntls_verify = false', "tls_verify is false"),
    ],
)
def test_bad_dicomweb_destination_is_a_one_line_error_naming_the_key(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(write(tmp_path, f"[[destinations]]\n{body}\n"))
    assert "\n" not in str(caught.value)


def test_the_same_destination_twice_is_an_error(tmp_path):
    entry = '[[destinations]]\nkind = "dicomweb"\nurl = "https://x/dicom-web"\n'
    with pytest.raises(ConfigError, match=r"destinations\[1\] is the same destination as destinations\[0\]"):
        load_config(write(tmp_path, entry + entry.replace("dicom-web", "dicom-web/")))
