"""
The errors a client can see, as the OCI distribution spec names them.

Code raises a L{RegistryError}; the API turns it into the JSON error body
with its status and headers in one place.
"""

import json


class RegistryError(Exception):
    """
    An error answer: HTTP C{status}, OCI C{code}, a human C{message}, an
    optional C{detail} and extra response C{headers}.
    """

    def __init__(self, status, code, message, detail=None, headers=None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = headers or {}

    def body(self):
        error = {"code": self.code, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        return json.dumps({"errors": [error]}).encode()


def name_invalid(why):
    return RegistryError(400, "NAME_INVALID", "invalid repository name", why)


def tag_invalid(why):
    return RegistryError(400, "MANIFEST_INVALID", "invalid tag", why)


def digest_invalid(why):
    return RegistryError(400, "DIGEST_INVALID", "invalid digest", why)


def unsupported(why):
    return RegistryError(405, "UNSUPPORTED", "the operation is unsupported", why)


def not_found(path):
    return RegistryError(404, "UNSUPPORTED", "no such endpoint in the registry API", {"path": path})


def manifest_not_acceptable(media_type):
    return RegistryError(
        404, "MANIFEST_UNKNOWN", "manifest unknown in an acceptable media type",
        {"mediaType": media_type},
    )


def too_many_requests(retry_after):
    headers = {"Retry-After": retry_after} if retry_after else {}
    return RegistryError(429, "TOOMANYREQUESTS", "the upstream registry is rate-limiting", None, headers)


def unavailable(why, status=502):
    return RegistryError(status, "UNAVAILABLE", "the upstream registry is unavailable", why)


def storage_unavailable(why):
    return RegistryError(503, "UNAVAILABLE", "the mirror's storage is unavailable", why)


def upstream_timeout(why):
    return unavailable(why, status=504)
