"""
Where things live in storage: the one module that knows the key layout.

Blobs and manifests are content-addressed and shared by every repository;
per-repository records say which tags point where and which content was
fetched for (or confirmed upstream in) that repository.
"""


def blob(digest):
    return f"blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"


def manifest(digest):
    return f"manifests/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"


def manifest_media_type(digest):
    return manifest(digest) + ".type"


def blob_link(name, digest):
    return f"repositories/{name}/_blobs/{digest.algorithm}/{digest.hex}"


def manifest_link(name, digest):
    return f"repositories/{name}/_manifests/{digest.algorithm}/{digest.hex}"


def tag(name, tag):
    return f"repositories/{name}/_tags/{tag}"
