import itertools

import pytest

from tests.support.images import push_image
from tests.support.mirror import MirrorProcess
from tests.support.registry import UpstreamRegistry


@pytest.fixture(scope="module")
def upstream():
    """
    A real reference registry (Debian's docker-registry) shared by a module's tests.
    """
    with UpstreamRegistry() as registry:
        yield registry


@pytest.fixture
def mirror(upstream):
    """
    daomirror under twistd, in front of C{upstream}, with an empty cache.
    """
    with MirrorProcess(upstream.url) as process:
        yield process


_names = itertools.count()


@pytest.fixture
def image(upstream):
    """
    A fresh single-platform image (busybox rootfs + a 3 MiB layer) in its own repository.
    """
    return push_image(upstream.url, f"library/img{next(_names)}", "v1", extra_layers=[3 * 1024 * 1024],
                      seed=next(_names))
