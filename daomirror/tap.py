"""
twistd's view of daomirror: the C{--config} option and the service maker.

A bad configuration stops the daemon before it listens with one line on
stderr and exit status 1 (not twistd's usage text, which would bury it).
"""

import sys

from twisted.python import usage

from . import config as configuration
from .allocator import reuse_freed_memory
from .service import make_service

DEFAULT_CONFIG = "/etc/daomirror/daomirror.toml"


class Options(usage.Options):
    optParameters = [
        ["config", "c", DEFAULT_CONFIG, "The TOML configuration file."],
    ]


def makeService(options):
    try:
        config = configuration.load(options["config"])
        service = make_service(config)
    except configuration.ConfigError as e:
        sys.stderr.write(f"daomirror: {e}\n")
        raise SystemExit(1)
    reuse_freed_memory()
    return service
