#!/usr/bin/env python3
"""Stand ``twisted_relay.py`` in daomirror's place in a benchmark that starts daomirror.

Why: to measure, in the same slot of the same benchmark, what the simplest
Twisted program gets out of this machine, next to what daomirror gets. A
benchmark that runs ``$DAOMIRROR_TWISTD -n --pidfile= daomirror --config
FILE`` (``side_by_side.py`` and the planners' ``bench.py`` do) gets the relay
instead, listening where daomirror would and fetching from the same
upstream. With ``RELAY_STORE=1`` it also hashes every body and writes it
under the configured storage root, as a verifying cache must::

    DAOMIRROR_TWISTD=$PWD/benchmarks/relay_as_daomirror.py .venv/bin/python benchmarks/side_by_side.py
    RELAY_STORE=1 DAOMIRROR_TWISTD=$PWD/benchmarks/relay_as_daomirror.py .venv/bin/python benchmarks/side_by_side.py

Only the blob rows mean anything then: the relay serves blobs and nothing
else, and it coalesces nothing.
"""

import os
import re
import sys
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    if "--config" not in sys.argv[:-1]:
        sys.exit(__doc__)  # started by hand, not in twistd's place
    config_path = sys.argv[sys.argv.index("--config") + 1]
    with open(config_path, "rb") as f:
        config = tomllib.load(f)
    listen = config["server"]["listen"]
    listen = listen[0] if isinstance(listen, list) else listen
    port = re.match(r"tcp:(?:port=)?(\d+)", listen).group(1)
    command = [os.path.join(HERE, "twisted_relay.py"), "--port", port, "--upstream", config["upstream"]["url"]]
    if os.environ.get("RELAY_STORE"):
        root = config["storage"]["filesystem"]["root"]
        os.makedirs(root, exist_ok=True)
        command += ["--store", root]
    venv_python = os.path.join(os.path.dirname(HERE), ".venv", "bin", "python")
    python = venv_python if os.path.exists(venv_python) else sys.executable
    os.execv(python, [python, *command])


if __name__ == "__main__":
    main()
