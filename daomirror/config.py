"""
The configuration file: TOML parsed into immutable objects.

All defaults live here. Every mistake becomes one L{ConfigError} naming the
file, the key and what is wrong, so that the daemon can stop before it
listens with a single readable line.
"""

import re
import tomllib
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import urlsplit

DEFAULT_LISTEN = ("tcp:5000",)
DEFAULT_UPSTREAM = "https://registry-1.docker.io"
DEFAULT_DRIVER = "filesystem"
DEFAULT_FILESYSTEM_ROOT = "/var/cache/daomirror"
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_HEADERS_TIMEOUT = 60.0
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_TAG_TTL = 300.0

# The options each storage driver takes: name -> (type, default or REQUIRED).
REQUIRED = object()
DRIVER_OPTIONS = {
    "filesystem": {"root": (str, DEFAULT_FILESYSTEM_ROOT)},
    "memory": {},
}


class ConfigError(Exception):
    """
    The configuration is unusable; C{str()} is the one line to show.
    """

    def __init__(self, path, key, problem):
        super().__init__(f"{path}: {key}: {problem}" if key else f"{path}: {problem}")
        self.path = path
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class ServerConfig:
    listen: tuple = DEFAULT_LISTEN


@dataclass(frozen=True)
class UpstreamConfig:
    url: str = DEFAULT_UPSTREAM
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    headers_timeout: float = DEFAULT_HEADERS_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT


@dataclass(frozen=True)
class StorageConfig:
    driver: str = DEFAULT_DRIVER
    options: MappingProxyType = field(
        default_factory=lambda: MappingProxyType({"root": DEFAULT_FILESYSTEM_ROOT})
    )


@dataclass(frozen=True)
class CacheConfig:
    tag_ttl: float = DEFAULT_TAG_TTL  # seconds a tag is served without asking upstream; 0: always ask


@dataclass(frozen=True)
class Config:
    path: str
    server: ServerConfig
    upstream: UpstreamConfig
    storage: StorageConfig
    cache: CacheConfig = CacheConfig()


def load(path):
    """
    Read and validate the TOML file at C{path}; raise L{ConfigError}.
    """
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise ConfigError(path, None, f"cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, None, f"not valid TOML: {e}") from None
    return parse(raw, path)


def parse(raw, path="<config>"):
    """
    Validate an already-decoded TOML document.
    """
    section = _Section(raw, path, "")
    config = Config(
        path=path,
        server=_server(section.table("server")),
        upstream=_upstream(section.table("upstream")),
        storage=_storage(section.table("storage")),
        cache=_cache(section.table("cache")),
    )
    section.done()
    return config


class _Section:
    """
    One TOML table being read; remembers which keys were used so that any
    key left over is reported as unknown.
    """

    def __init__(self, table, path, prefix):
        self._table = table
        self._path = path
        self._prefix = prefix
        self._seen = set()

    def key(self, name):
        return f"{self._prefix}{name}"

    def error(self, name, problem):
        return ConfigError(self._path, self.key(name), problem)

    def get(self, name, kind, default):
        self._seen.add(name)
        if name not in self._table:
            if default is REQUIRED:
                raise self.error(name, "is required")
            return default
        value = self._table[name]
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            raise self.error(name, f"must be {_expected(kind)}, not {_describe(value)}")
        return value

    def table(self, name):
        value = self.get(name, dict, {})
        return _Section(value, self._path, self.key(name) + ".")

    def names(self):
        return list(self._table)

    def done(self):
        for name in self._table:
            if name not in self._seen:
                raise self.error(name, "unknown key")


_KIND_NAMES = {str: "a string", dict: "a table", int: "an integer", bool: "true or false", list: "a list"}
_KIND_NAMES[(str, int)] = "a duration"


def _expected(kind):
    if kind in _KIND_NAMES:
        return _KIND_NAMES[kind]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_KIND_NAMES[k] for k in kinds)


def _describe(value):
    for kind, name in [(bool, "true or false"), (str, "a string"), (int, "an integer"),
                       (float, "a number"), (list, "a list"), (dict, "a table")]:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _server(section):
    listen = section.get("listen", (str, list), list(DEFAULT_LISTEN))
    if isinstance(listen, str):
        listen = [listen]
    if not listen:
        raise section.error("listen", "must name at least one endpoint")
    for item in listen:
        if not isinstance(item, str) or not item.strip():
            raise section.error("listen", "every endpoint must be a non-empty string")
    section.done()
    return ServerConfig(listen=tuple(listen))


def _upstream(section):
    url = section.get("url", str, DEFAULT_UPSTREAM).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise section.error("url", f"must be an http:// or https:// URL, not {url!r}")
    if parts.query or parts.fragment or parts.path:
        raise section.error("url", "must be scheme://host[:port] with no path, query or fragment")
    if parts.username is not None or parts.password is not None:
        raise section.error("url", "must not hold credentials; use username and password or password_file")
    try:
        parts.port
    except ValueError:
        raise section.error("url", f"has an invalid port: {url!r}") from None
    username = section.get("username", str, None)
    password = section.get("password", str, None)
    password_file = section.get("password_file", str, None)
    if password is not None and password_file is not None:
        raise section.error("password_file", "give either password or password_file, not both")
    if password_file is not None:
        password = _read_text(section, "password_file", password_file).strip()
    if (username is None) != (password is None):
        missing = "password or password_file" if password is None else "username"
        raise section.error(missing.split()[0], f"credentials need both username and password; {missing} is missing")
    ca_file = section.get("ca_file", str, None)
    if ca_file is not None:
        _read_text(section, "ca_file", ca_file)
    timeouts = {
        name: _duration(section, name, default, allow_zero=False)
        for name, default in [("connect_timeout", DEFAULT_CONNECT_TIMEOUT),
                              ("headers_timeout", DEFAULT_HEADERS_TIMEOUT),
                              ("idle_timeout", DEFAULT_IDLE_TIMEOUT)]
    }
    section.done()
    return UpstreamConfig(url=url, username=username, password=password, ca_file=ca_file, **timeouts)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text):
    """
    Seconds in C{"90s"}, C{"5m"}, C{"1h30m"}, C{"7d"}, C{"250ms"} or a bare
    integer of seconds; raise ValueError otherwise.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError("must not be negative")
        return float(text)
    if not isinstance(text, str):
        raise ValueError("must be a duration such as \"90s\", \"5m\" or \"1h30m\", or seconds")
    spec = text.strip()
    if spec.isdigit():
        return float(spec)
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(spec):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if not spec or position != len(spec):
        raise ValueError(f"{text!r} is not a duration such as \"90s\", \"5m\" or \"1h30m\"")
    return total


def _duration(section, name, default, allow_zero=True):
    raw = section.get(name, (str, int), None)
    if raw is None:
        return default
    try:
        value = parse_duration(raw)
    except ValueError as e:
        raise section.error(name, str(e)) from None
    if not allow_zero and value <= 0:
        raise section.error(name, "must be more than zero")
    return value


def _read_text(section, name, path):
    """
    The content of a file the configuration names, which must not be empty.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise section.error(name, f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if not text.strip():
        raise section.error(name, f"{path} is empty")
    return text


def _cache(section):
    tag_ttl = _duration(section, "tag_ttl", DEFAULT_TAG_TTL)
    section.done()
    return CacheConfig(tag_ttl=tag_ttl)


def _storage(section):
    driver = section.get("driver", str, DEFAULT_DRIVER)
    if driver not in DRIVER_OPTIONS:
        known = ", ".join(sorted(DRIVER_OPTIONS))
        raise section.error("driver", f"unknown driver {driver!r} (known: {known})")
    chosen = {}
    for name in section.names():
        if name == "driver":
            continue
        if name not in DRIVER_OPTIONS:
            raise section.error(name, "unknown key")  # a typo, or a driver we lack
        options = _driver_options(section.table(name), DRIVER_OPTIONS[name])
        if name == driver:
            chosen = options
    if not chosen:
        chosen = _driver_options(_Section({}, "", ""), DRIVER_OPTIONS[driver])
    section.done()
    return StorageConfig(driver=driver, options=MappingProxyType(chosen))


def _driver_options(section, schema):
    options = {name: section.get(name, kind, default) for name, (kind, default) in schema.items()}
    section.done()
    return options
