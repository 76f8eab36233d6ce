"""Endpoints: the worker's own list of model servers and the secret each may receive.

A client names a provider and a model, and optionally an endpoint or a base URL.
It never names an environment variable, and a key never goes to a URL the
operator has not paired it with: the worker resolves every request through an
`EndpointRegistry`, built from its own configuration, before any byte is sent.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from temporalio.exceptions import ApplicationError

from geppetto_temporal._config_file import read_tables
from geppetto_temporal.engines._spec import EngineSpec, Provider
from geppetto_temporal.errors import ConfigurationError, ErrorType

#: Sent where an endpoint has no key: local servers (Ollama, vLLM, the scripted model) accept any.
PLACEHOLDER_KEY = "not-needed"

OPENAI_URL = "https://api.openai.com/v1"
ANTHROPIC_URL = "https://api.anthropic.com"

#: Which providers each built-in endpoint serves, by the endpoint's name.
_OPENAI_PROVIDERS = frozenset({Provider.OPENAI.value, Provider.OPENAI_RESPONSES.value})
_ANTHROPIC_PROVIDERS = frozenset({Provider.ANTHROPIC.value})

#: Environment variables that configure a worker's endpoints (besides `geppetto worker` flags).
ENDPOINTS_ENV = "GEPPETTO_ENDPOINTS"
ENDPOINTS_FILE_ENV = "GEPPETTO_ENDPOINTS_FILE"
ALLOW_ANY_BASE_URL_ENV = "GEPPETTO_ALLOW_ANY_BASE_URL"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]{1,100}$")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Endpoint:
    """A model server this worker may call, and the secrets it may send there.

    `base_url` also admits client base URLs below it (same scheme, host and port,
    a path under its path), so one endpoint covers a server's routes. `key_env`
    names the variable of the worker's environment whose value is the API key;
    `headers_env` maps extra header names to variables (e.g. an organisation id).
    `providers` limits which provider APIs may use it (default: any).
    """

    name: str
    base_url: str
    key_env: str | None = None
    headers_env: Mapping[str, str] = field(default_factory=dict)
    providers: frozenset[str] | None = None
    #: Built-in endpoints at a local base URL send a placeholder when their key is unset.
    key_optional: bool = False

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigurationError(
                f"invalid endpoint name {self.name!r}: use letters, digits, '.', '_' or '-'"
            )
        _checked_url(self.base_url, f"endpoint {self.name!r}")
        for var in (self.key_env, *self.headers_env.values()):
            if var is not None and not _ENV_NAME.match(var):
                raise ConfigurationError(
                    f"endpoint {self.name!r}: {var!r} is not an environment variable name"
                )
        for header in self.headers_env:
            if not _HEADER_NAME.match(header):
                raise ConfigurationError(f"endpoint {self.name!r}: invalid header name {header!r}")
        if self.providers is not None:
            unknown = set(self.providers) - {p.value for p in Provider}
            if unknown:
                raise ConfigurationError(
                    f"endpoint {self.name!r}: unknown provider(s) {', '.join(sorted(unknown))}"
                )

    def serves(self, provider: str) -> bool:
        return self.providers is None or provider in self.providers

    def covers(self, url: str) -> bool:
        """Whether a client's base URL lies at or below this endpoint's URL."""
        mine, theirs = urlsplit(self.base_url), urlsplit(url)
        if _origin(mine) != _origin(theirs):
            return False
        root = mine.path.rstrip("/")
        path = theirs.path.rstrip("/")
        return path == root or path.startswith(root + "/")


@dataclass(frozen=True)
class ResolvedEndpoint:
    """Where one LLM step goes and with which credentials; lives only inside the activity."""

    name: str
    base_url: str
    api_key: str
    headers: Mapping[str, str]
    #: The variable the key came from, for error hints (None: no key is sent).
    key_env: str | None
    #: Whether this is a built-in endpoint, which may use the SDK's own env conventions.
    builtin: bool

    def __repr__(self) -> str:  # never show the key, even in a debugger or a log of locals
        return f"ResolvedEndpoint(name={self.name!r}, base_url={self.base_url!r})"


def builtin_endpoints(environ: Mapping[str, str]) -> list[Endpoint]:
    """The SDKs' conventions: `openai` and `anthropic`, at the worker's own base URL variables."""
    openai_url = environ.get("OPENAI_BASE_URL") or ""
    anthropic_url = environ.get("ANTHROPIC_BASE_URL") or ""
    return [
        Endpoint(
            "openai",
            openai_url or OPENAI_URL,
            key_env="OPENAI_API_KEY",
            providers=_OPENAI_PROVIDERS,
            key_optional=bool(openai_url),
        ),
        Endpoint(
            "anthropic",
            anthropic_url or ANTHROPIC_URL,
            key_env="ANTHROPIC_API_KEY",
            providers=_ANTHROPIC_PROVIDERS,
            key_optional=bool(anthropic_url),
        ),
    ]


_BUILTIN_FOR_PROVIDER = {
    Provider.OPENAI.value: "openai",
    Provider.OPENAI_RESPONSES.value: "openai",
    Provider.ANTHROPIC.value: "anthropic",
}


class EndpointRegistry:
    """The endpoints a worker may call; resolves an `EngineSpec` to a URL and credentials.

    Built-in `openai` and `anthropic` endpoints follow the SDKs' variables; the
    operator's endpoints are added on top (same name: the operator's wins). With
    `allow_any_base_url`, a client base URL that matches no endpoint is called
    without any key or configured header: never with a secret.
    """

    def __init__(
        self,
        endpoints: Iterable[Endpoint] = (),
        *,
        allow_any_base_url: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.environ = environ if environ is not None else os.environ
        self.allow_any_base_url = allow_any_base_url
        self._endpoints: dict[str, Endpoint] = {e.name: e for e in builtin_endpoints(self.environ)}
        self._builtin = set(self._endpoints)
        for endpoint in endpoints:
            self._endpoints[endpoint.name] = endpoint
            self._builtin.discard(endpoint.name)

    @classmethod
    def from_env(
        cls,
        endpoints: Iterable[Endpoint] = (),
        *,
        allow_any_base_url: bool | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> EndpointRegistry:
        """`endpoints` plus those of `$GEPPETTO_ENDPOINTS_FILE` and `$GEPPETTO_ENDPOINTS`.

        `allow_any_base_url=None` reads `$GEPPETTO_ALLOW_ANY_BASE_URL` (1/true/yes).
        """
        env = environ if environ is not None else os.environ
        configured: list[Endpoint] = []
        path = env.get(ENDPOINTS_FILE_ENV)
        if path:
            configured += load_endpoints_file(Path(path))
        configured += parse_endpoints(env.get(ENDPOINTS_ENV, ""))
        if allow_any_base_url is None:
            allow_any_base_url = env.get(ALLOW_ANY_BASE_URL_ENV, "").lower() in {"1", "true", "yes"}
        return cls(
            [*configured, *endpoints], allow_any_base_url=allow_any_base_url, environ=environ
        )

    @property
    def endpoints(self) -> list[Endpoint]:
        """Every endpoint, built-in ones first."""
        return list(self._endpoints.values())

    def resolve(self, spec: EngineSpec) -> ResolvedEndpoint:
        """Where `spec`'s requests go and which secrets go with them.

        Raises a non-retryable `ApplicationError` (`EndpointNotAllowed`,
        `MissingApiKey`) before any request is made.
        """
        endpoint = self._choose(spec)
        if endpoint is None:  # an unknown base URL the operator allows, without secrets
            assert spec.base_url is not None
            return ResolvedEndpoint("(any)", spec.base_url, PLACEHOLDER_KEY, {}, None, False)
        if spec.api_key_env is not None and spec.api_key_env != endpoint.key_env:
            raise _not_allowed(
                f"{spec.spec_string} names the key variable {spec.api_key_env!r}, but a client "
                f"cannot choose which of the worker's variables is read. The endpoint "
                f"{endpoint.name!r} uses {endpoint.key_env or 'no key'}; to use another key, "
                f"the operator registers an endpoint with it (`geppetto worker --endpoint "
                f"NAME=URL,key_env=VAR`) and the client names it (`EngineBuilder.endpoint(NAME)`)."
            )
        key = self.environ.get(endpoint.key_env) if endpoint.key_env else None
        if not key:
            if endpoint.key_env and not endpoint.key_optional:
                raise ApplicationError(
                    f"{endpoint.key_env} is not set in the worker's environment, so "
                    f"{spec.spec_string} cannot be called through endpoint {endpoint.name!r}. "
                    f"Export it where `geppetto worker` runs, or use a local OpenAI-compatible "
                    f"server with a base URL (no key needed).",
                    type=ErrorType.MISSING_API_KEY,
                    non_retryable=True,
                )
            key = PLACEHOLDER_KEY
        headers = {
            name: value
            for name, var in endpoint.headers_env.items()
            if (value := self.environ.get(var))
        }
        return ResolvedEndpoint(
            endpoint.name,
            spec.base_url or endpoint.base_url,
            key,
            headers,
            endpoint.key_env if key != PLACEHOLDER_KEY else None,
            endpoint.name in self._builtin,
        )

    def _choose(self, spec: EngineSpec) -> Endpoint | None:
        if spec.base_url is not None:
            try:
                _checked_url(spec.base_url, "the base URL")
            except ConfigurationError as err:
                raise _not_allowed(
                    f"{err}, so it is no endpoint of this worker; nothing was sent"
                ) from None
        if spec.endpoint is not None:
            endpoint = self._endpoints.get(spec.endpoint)
            if endpoint is None:
                raise _not_allowed(
                    f"endpoint {spec.endpoint!r} is not configured on this worker (it has "
                    f"{', '.join(sorted(self._endpoints))}). The operator adds it with "
                    f"`geppetto worker --endpoint {spec.endpoint}=URL[,key_env=VAR]` or "
                    f"`create_worker(..., endpoints=[Endpoint(...)])`."
                )
            if not endpoint.serves(spec.provider):
                raise _not_allowed(
                    f"endpoint {endpoint.name!r} does not serve the {spec.provider} API "
                    f"(it serves {', '.join(sorted(endpoint.providers or ()))})"
                )
            if spec.base_url is not None and not endpoint.covers(spec.base_url):
                raise _not_allowed(
                    f"base URL {spec.base_url} is not under endpoint {endpoint.name!r} "
                    f"({endpoint.base_url}); name the endpoint alone"
                )
            return endpoint
        if spec.base_url is None:
            return self._endpoints[_BUILTIN_FOR_PROVIDER[spec.provider]]
        matches = [
            e
            for e in self._endpoints.values()
            if e.serves(spec.provider) and e.covers(spec.base_url)
        ]
        if matches:
            # The most specific endpoint wins: its path is the longest.
            return max(matches, key=lambda e: len(urlsplit(e.base_url).path.rstrip("/")))
        if self.allow_any_base_url:
            return None
        raise _not_allowed(
            f"base URL {spec.base_url} is not an endpoint this worker knows, so nothing was "
            f"sent. The operator allows it with `geppetto worker --endpoint NAME={spec.base_url}` "
            f"(add `,key_env=VAR` if the server needs a key), or with `--allow-any-base-url` "
            f"(then no key is ever sent to it)."
        )


def _not_allowed(message: str) -> ApplicationError:
    return ApplicationError(message, type=ErrorType.ENDPOINT_NOT_ALLOWED, non_retryable=True)


def _origin(url: SplitResult) -> tuple[str, str, int | None]:
    scheme = url.scheme.lower()
    try:
        port = url.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        port = None
    return scheme, (url.hostname or "").lower(), port


def _checked_url(url: str, what: str) -> None:
    """Refuse URLs whose meaning a prefix comparison could misread."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ConfigurationError(f"{what} {url!r} is not a valid URL") from None
    if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname:
        raise ConfigurationError(f"{what} {url!r} must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(f"{what} must not carry credentials in the URL")
    if parts.query or parts.fragment or "#" in url or "?" in url:
        raise ConfigurationError(f"{what} {url!r} must not have a query or a fragment")
    if any(seg in {".", ".."} for seg in parts.path.split("/")) or "%" in parts.path:
        raise ConfigurationError(f"{what} {url!r} must not have '.', '..' or escaped path segments")
    if "\\" in url or any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise ConfigurationError(
            f"{what} must not contain backslashes, spaces or control characters"
        )


def parse_endpoint(text: str) -> Endpoint:
    """Parse `NAME=URL[,key_env=VAR][,provider=P[|P]][,header.NAME=VAR]` (the `--endpoint` form)."""
    head, *options = [part.strip() for part in text.split(",")]
    name, sep, url = head.partition("=")
    if not sep or not name.strip() or not url.strip():
        raise ConfigurationError(f"invalid endpoint {text!r}: expected NAME=URL[,key_env=VAR]")
    key_env: str | None = None
    providers: frozenset[str] | None = None
    headers: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise ConfigurationError(f"invalid endpoint option {option!r} in {text!r}")
        if key == "key_env":
            key_env = value
        elif key == "provider":
            providers = frozenset(p.strip() for p in value.split("|"))
        elif key.startswith("header."):
            headers[key.removeprefix("header.")] = value
        else:
            raise ConfigurationError(
                f"unknown endpoint option {key!r} in {text!r} (key_env, provider, header.NAME)"
            )
    return Endpoint(
        name.strip(), url.strip(), key_env=key_env, headers_env=headers, providers=providers
    )


def parse_endpoints(text: str) -> list[Endpoint]:
    """Several `--endpoint` forms separated by `;` or whitespace (the `$GEPPETTO_ENDPOINTS` form)."""
    return [parse_endpoint(item) for item in re.split(r"[;\s]+", text) if item]


def load_endpoints_file(path: Path) -> list[Endpoint]:
    """Endpoints from a TOML file: one `[endpoints.NAME]` table each.

    Keys: `base_url` (required), `key_env`, `providers` (a list), `headers`
    (a table of header name to environment variable).
    """
    out: list[Endpoint] = []
    keys = {"base_url", "key_env", "providers", "headers"}
    for name, table in read_tables(path, "endpoints", "endpoints file", keys).items():
        if not isinstance(table.get("base_url"), str):
            raise ConfigurationError(f"endpoints file {path}: [endpoints.{name}] needs base_url")
        providers = table.get("providers")
        out.append(
            Endpoint(
                name,
                table["base_url"],
                key_env=table.get("key_env"),
                headers_env=dict(table.get("headers", {})),
                providers=frozenset(providers) if providers is not None else None,
            )
        )
    return out
