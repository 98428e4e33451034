"""
daomirror: a pull-through cache for Docker and OCI container registries.
"""

__version__ = "0.1.0"
