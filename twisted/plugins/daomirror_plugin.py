from twisted.application.service import ServiceMaker

daomirror = ServiceMaker(
    "daomirror",
    "daomirror.tap",
    "A pull-through cache (mirror) for Docker and OCI registries.",
    "daomirror",
)
