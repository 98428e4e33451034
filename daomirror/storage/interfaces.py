"""
What the caching policy needs from storage, and no more.

Keys are relative slash-separated paths such as ``blobs/sha256/ab/ab12...``;
they are built only from validated references (DESIGN.md invariant 5).
Content-addressed objects are written through an L{IWriter}, which becomes
visible only after its bytes were verified against the expected digest
(invariants 1 and 2). Small mutable records (tags, repository links) are
replaced whole and atomically with L{IStorage.put}.
"""

from zope.interface import Attribute, Interface


class VerificationFailed(Exception):
    """
    The bytes written do not hash to the expected digest or have the wrong
    length; nothing was committed.
    """


class IStorage(Interface):
    """
    A place to keep blobs, manifests and the records about them.
    """

    def check():
        """
        Raise L{OSError} unless the storage can be used now (for readiness).
        """

    def stat(key):
        """
        The size in bytes of the object at C{key}, or C{None}.

        @rtype: L{Deferred} of L{int} or L{None}
        """

    def get(key):
        """
        The whole content of a small object, or C{None} if it is absent.

        @rtype: L{Deferred} of L{bytes} or L{None}
        """

    def put(key, data):
        """
        Replace the small object at C{key} with C{data}, atomically and
        durably. The caller vouches for the content: records, and manifests
        whose digest it has verified (a signed schema 1 manifest's digest
        does not cover all of its bytes, so a writer could not check it).

        @rtype: L{Deferred} firing when it is durable.
        """

    def produce(key, consumer, start, end):
        """
        Write bytes C{start} to C{end} (exclusive) of the object at C{key} into
        C{consumer}, registering a streaming producer so that the consumer
        paces the reading.

        @rtype: L{Deferred} firing when the range has been written.
        """

    def open_writer(key, digest):
        """
        Begin writing the content-addressed object C{key}, whose bytes must
        hash to C{digest} (a L{daomirror.reference.Digest}).

        @rtype: L{IWriter}
        """

    def delete(key):
        """
        Remove the object at C{key}, if present.

        @rtype: L{Deferred}
        """


class IWriter(Interface):
    """
    One object being written: invisible until verified and committed. It
    is a consumer: it may take bytes faster than it stores them, and pauses
    its registered producer while it is behind.
    """

    bytes_written = Attribute(
        "How many bytes are stored so far (readable with open_reader). A driver "
        "may keep a last partial block (under 4 KiB) back until verify()."
    )

    error = Attribute(
        "The error that stopped storing, or None; watchers are called when it is set. "
        "verify() then fails with it."
    )

    def registerProducer(producer, streaming):
        """
        The push producer (the upstream) to pause while storage is behind.
        """

    def unregisterProducer():
        """
        Forget the producer.
        """

    def write(data):
        """
        Append C{data}; hashing happens as the bytes pass.
        """

    def watch(callback):
        """
        Call C{callback()} whenever C{bytes_written} grows or C{error} is set.
        """

    def verify(size):
        """
        Stop writing and, once everything is stored, check the digest, and
        the length when C{size} is not C{None}.

        @return: a Deferred that fails with L{VerificationFailed} (everything
            is then discarded) if they do not match, or with the storage's
            own error if storing failed.
        """

    def commit():
        """
        Make the verified object visible under its key, durably and at once.

        @rtype: L{Deferred}
        """

    def abort():
        """
        Discard what was written. Safe to call at any time, more than once.
        """

    def open_reader():
        """
        A new binary file object that reads the bytes written so far, and the
        rest as they arrive; it stays readable after commit.
        """
