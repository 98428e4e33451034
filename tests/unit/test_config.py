"""
Configuration parsing: defaults, and one clear error per mistake.
"""

import os

import pytest

from daomirror import config

DOCUMENTED = os.path.join(os.path.dirname(__file__), "..", "..", "etc", "daomirror.toml")


def write(tmp_path, text):
    path = tmp_path / "daomirror.toml"
    path.write_text(text)
    return str(path)


def test_documented_default_config_loads():
    loaded = config.load(DOCUMENTED)
    assert loaded.server.listen == ("tcp:5000",)
    assert loaded.upstream.url == "https://registry-1.docker.io"
    assert loaded.storage.driver == "filesystem"
    assert loaded.storage.options["root"] == "/var/cache/daomirror"


def test_issue_example(tmp_path):
    loaded = config.load(write(tmp_path, """
[server]
listen = ["tcp:5000", "tcp:5001:interface=127.0.0.1"]
[upstream]
url = "http://127.0.0.1:5000/"
[storage]
driver = "memory"
"""))
    assert loaded.server.listen == ("tcp:5000", "tcp:5001:interface=127.0.0.1")
    assert loaded.upstream.url == "http://127.0.0.1:5000"
    assert loaded.storage.driver == "memory"


def test_empty_file_gives_defaults(tmp_path):
    loaded = config.load(write(tmp_path, ""))
    assert loaded.server.listen == config.DEFAULT_LISTEN
    assert loaded.storage.options["root"] == config.DEFAULT_FILESYSTEM_ROOT


def test_credentials_from_password_file(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    loaded = config.load(write(tmp_path, f'[upstream]\nusername = "bob"\npassword_file = "{secret}"\n'))
    assert (loaded.upstream.username, loaded.upstream.password) == ("bob", "s3cret")
    assert "s3cret" not in repr(loaded)


@pytest.mark.parametrize("text, key, problem", [
    ("[server]\nlisten = 5000\n", "server.listen", "must be a string or a list"),
    ("[server]\nlisten = []\n", "server.listen", "at least one"),
    ("[server]\nport = 1\n", "server.port", "unknown key"),
    ("[nonsense]\n", "nonsense", "unknown key"),
    ("[upstream]\nurl = 'ftp://x'\n", "upstream.url", "http:// or https://"),
    ("[upstream]\nurl = 'https://x/v2'\n", "upstream.url", "no path"),
    ("[upstream]\nurl = 'https://user:pw@x'\n", "upstream.url", "must not hold credentials"),
    ("[upstream]\nusername = 'bob'\n", "upstream.password", "missing"),
    ("[upstream]\nusername = 'u'\npassword_file = '/nonexistent/secret'\n", "upstream.password_file", "cannot read"),
    ("[upstream]\nusername = 'u'\npassword = 'p'\npassword_file = '/x'\n", "upstream.password_file", "not both"),
    ("[storage]\ndriver = 'floppy'\n", "storage.driver", "unknown driver 'floppy'"),
    ("[storage]\ndriver = 1\n", "storage.driver", "must be a string"),
    ("[storage.filesystem]\nroot = true\n", "storage.filesystem.root", "must be a string, not true or false"),
    ("[storage.filesystem]\nroots = '/x'\n", "storage.filesystem.roots", "unknown key"),
    ("[storage.floppy]\n", "storage.floppy", "unknown key"),
    ("[storage]\ndrivr = 'memory'\n", "storage.drivr", "unknown key"),
    ("[cache]\nmax_size = '5GB'\n", "cache.max_size", "unknown key"),
    ("[cache]\ntag_ttl = 'soon'\n", "cache.tag_ttl", "is not a duration"),
])
def test_errors_name_file_and_key(tmp_path, text, key, problem):
    path = write(tmp_path, text)
    with pytest.raises(config.ConfigError) as e:
        config.load(path)
    assert e.value.key == key
    assert problem in e.value.problem
    assert str(e.value).startswith(f"{path}: {key}: ")
    assert "\n" not in str(e.value)


def test_tag_ttl(tmp_path):
    assert config.load(write(tmp_path, "")).cache.tag_ttl == 300
    assert config.load(write(tmp_path, "[cache]\ntag_ttl = '1h30m'\n")).cache.tag_ttl == 5400
    assert config.load(write(tmp_path, "[cache]\ntag_ttl = 0\n")).cache.tag_ttl == 0


def test_missing_file(tmp_path):
    with pytest.raises(config.ConfigError) as e:
        config.load(str(tmp_path / "absent.toml"))
    assert "cannot read" in str(e.value)


def test_not_toml(tmp_path):
    with pytest.raises(config.ConfigError) as e:
        config.load(write(tmp_path, "[server\n"))
    assert "not valid TOML" in str(e.value)


def test_upstream_timeouts_and_ca_file(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n...\n")
    loaded = config.load(write(tmp_path, f"""
[upstream]
ca_file = "{ca}"
connect_timeout = "5s"
headers_timeout = "2m"
idle_timeout = 90
"""))
    assert loaded.upstream.ca_file == str(ca)
    assert (loaded.upstream.connect_timeout, loaded.upstream.headers_timeout, loaded.upstream.idle_timeout) == (
        5.0, 120.0, 90.0)


@pytest.mark.parametrize("text, problem", [
    ("connect_timeout = '5 parsecs'", "is not a duration"),
    ("idle_timeout = 0", "more than zero"),
    ("headers_timeout = true", "must be a duration"),
    ("ca_file = '/nonexistent/ca.pem'", "cannot read"),
])
def test_bad_upstream_settings(tmp_path, text, problem):
    with pytest.raises(config.ConfigError) as e:
        config.load(write(tmp_path, f"[upstream]\n{text}\n"))
    assert problem in e.value.problem


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("5m", 300), ("1h30m", 5400), ("7d", 604800), (300, 300), ("0", 0), ("250ms", 0.25),
])
def test_durations(text, seconds):
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5x", "", "m5", "5 m", "1h 30m", -1, True, 1.5])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        config.parse_duration(text)
