"""
Storage drivers, found by the name given in ``[storage] driver``.

Adding a driver means adding a module and a line to L{DRIVERS} (and its
options to L{daomirror.config.DRIVER_OPTIONS}); nothing that handles requests
changes.
"""

from importlib import import_module

from zope.interface.verify import verifyObject

from .interfaces import IStorage, IWriter, VerificationFailed

DRIVERS = {
    "filesystem": "daomirror.storage.filesystem:FilesystemStorage",
    "memory": "daomirror.storage.memory:MemoryStorage",
}


def make_storage(driver, options):
    """
    Build the driver named C{driver} from its validated C{options}.
    """
    module_name, _, class_name = DRIVERS[driver].partition(":")
    storage = getattr(import_module(module_name), class_name).from_options(options)
    verifyObject(IStorage, storage)
    return storage


__all__ = ["IStorage", "IWriter", "VerificationFailed", "make_storage", "DRIVERS"]
