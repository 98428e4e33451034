import pytest

from tests.support.clients import PrivateDockerd
from tests.support.mirror import MirrorProcess
from tests.support.registry import UpstreamRegistry


@pytest.fixture(scope="module")
def upstream():
    with UpstreamRegistry() as registry:
        yield registry


@pytest.fixture(scope="module")
def mirror(upstream):
    with MirrorProcess(upstream.url) as process:
        yield process


@pytest.fixture(scope="module")
def dockerd(mirror):
    """
    A private dockerd whose registry mirror is daomirror: names on docker.io
    (library/busybox, team/tools/cli) are pulled through it, and with no
    internet here its fallback to Docker Hub can only fail.
    """
    with PrivateDockerd(mirror.url) as daemon:
        yield daemon
