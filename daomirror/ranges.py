"""
Single byte ranges of a blob (RFC 9110 section 14), as clients resuming a
layer download ask for them. Multiple ranges are answered with the whole
blob, which the RFC allows.
"""

import re

_SINGLE = re.compile(r"bytes=(\d*)-(\d*)", re.IGNORECASE)  # the unit is case-insensitive (RFC 9110 14.1)


class Unsatisfiable(Exception):
    """
    The range starts beyond the blob: answer 416 with C{bytes */SIZE}.
    """


def requested_range(range_header, if_range, etag, size):
    """
    The C{(start, end)} (end exclusive) to send, or None for the whole blob.

    @param if_range: the If-Range header; a validator other than our ETag
        means the client's partial copy is of something else: send it all.
    """
    if range_header is None or (if_range is not None and if_range.strip() != etag):
        return None
    match = _SINGLE.fullmatch(range_header.strip().replace(" ", ""))
    if match is None:
        return None  # several ranges, another unit, or nonsense: the whole blob
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        suffix = int(last)
        if suffix == 0:
            raise Unsatisfiable()
        return max(0, size - suffix), size
    start = int(first)
    end = size if not last else int(last) + 1
    if last and end <= start:
        return None  # an invalid range is ignored
    if start >= size:
        raise Unsatisfiable()
    return start, min(end, size)
