"""
The daemon as an operator starts it: twistd with --config. A bad
configuration stops it before it listens, with one line naming the file and
the key, and a non-zero exit.
"""

import socket
import subprocess

import pytest

from tests.support.mirror import PROJECT, twistd_command
from tests.support.registry import free_port


def start(tmp_path, text):
    config = tmp_path / "daomirror.toml"
    config.write_text(text)
    return subprocess.run(
        twistd_command() + ["-n", "--pidfile=", "daomirror", "--config", str(config)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env={"PYTHONPATH": PROJECT, "PATH": "/usr/bin:/bin"},
    ), str(config)


@pytest.mark.parametrize("text, key", [
    ("[server]\nlisten = 5\n", "server.listen"),
    ("[server]\nlisten = 'tcp:notaport'\n", "server.listen"),
    ("[server]\nlisten = 'systemd:domain=INET:index=0'\n", "server.listen"),
    ("[bogus]\nx = 1\n", "bogus"),
    ("[storage]\ndriver = 'floppy'\n", "storage.driver"),
    ("[upstream]\nusername = 'u'\npassword_file = '/nonexistent'\n", "upstream.password_file"),
    ("[storage.filesystem]\nroot = '/proc/daomirror-cannot-be-here'\n", "storage.filesystem"),
])
def test_bad_config_exits_before_listening_with_one_line(tmp_path, text, key):
    port = free_port()
    result, path = start(tmp_path, f"{text}\n" if "listen" in text else f"[server]\nlisten = 'tcp:{port}'\n{text}")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith(f"daomirror: {path}: {key}"), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "starting on" not in result.stdout + result.stderr, "it never opened a port"


def test_missing_config_file(tmp_path):
    result = subprocess.run(
        twistd_command() + ["-n", "--pidfile=", "daomirror", "--config", str(tmp_path / "absent.toml")],
        capture_output=True, text=True, timeout=60, env={"PYTHONPATH": PROJECT, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert result.stderr.strip() == f"daomirror: {tmp_path / 'absent.toml'}: cannot read: No such file or directory"


def test_a_taken_port_is_one_line_and_exit_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result, path = start(tmp_path, f"[server]\nlisten = 'tcp:{port}:interface=127.0.0.1'\n"
                                       "[storage]\ndriver = 'memory'\n")
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert f"daomirror: {path}: server.listen: cannot listen on" in output
    assert "Address already in use" in output and "Traceback" not in output
