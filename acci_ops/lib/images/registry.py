"""The image registry over its HTTP API (Docker Registry v2 / OCI distribution), and the push.

Reads (does a tag exist, with which digest, built from which commit) are plain HTTP calls with
basic or token auth, so a no-op rebuild costs a few requests. A manifest's digest is always the
sha256 of the bytes served: a ``Docker-Content-Digest`` header that says otherwise is refused.
Redirects (S3-backed registries send blob reads to a bucket) never carry a credential to another
origin, never go from https to http, and a token request's redirect passes the realm checks.

The push is ``skopeo copy --all --preserve-digests oci:DIR docker://REPO@DIGEST`` with the
credentials in an auth file: by digest, so no tag exists before the image is complete. Each tag is
then pointed at the digest with a compare-and-swap (``point_tag``): read right before the PUT
under a lock shared by the builds on this host, refused when it names another digest, read back
after. Registries overwrite tags silently; here an immutable tag is never moved.

Every error is one line naming the registry and the cause; the password never appears in argv,
logs or messages (it only lives in this process and in a 0600 auth file that is deleted after).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from acci_ops.lib.core.commands import CommandFailed, LineSink
from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.images.tools import ContainerTools, auth_file

INDEX_OCI = "application/vnd.oci.image.index.v1+json"
INDEX_DOCKER = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_OCI = "application/vnd.oci.image.manifest.v1+json"
MANIFEST_DOCKER = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT = ", ".join((INDEX_OCI, INDEX_DOCKER, MANIFEST_OCI, MANIFEST_DOCKER))
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
REVISION_LABEL = "org.opencontainers.image.revision"
VERSION_LABEL = "org.opencontainers.image.version"
TIMEOUT = 30
MAX_RESPONSE_BYTES = 16 * 2**20  # largest API response read (manifests, configs, tokens, errors)
LOCK_WAIT_SECONDS = 120  # pointing a tag takes a few HTTP calls; a lock held longer is a stuck build
# Never sent to another origin than the one they were meant for (urllib copies them to any host).
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
TagOutcome = Literal["created", "kept", "moved", "left"]


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port: what a credential is bound to."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1  # an unparsable port is another origin than any real one
    return parts.scheme.lower(), (parts.hostname or "").lower(), port or {"https": 443, "http": 80}.get(parts.scheme)


def _shown(url: str) -> str:
    """scheme://host[:port] of a URL for a message: never its user-info, path or query."""
    scheme, host, port = _origin(url)
    default = {"https": 443, "http": 80}.get(scheme)
    return f"{scheme}://{host}" + (f":{port}" if port not in (None, default) else "") if scheme else "(none)"


class RegistryError(AcciOpsError):
    """The registry could not be reached or refused us (one line, no secret)."""


class ImmutableTagError(AcciOpsError):
    """A tag already exists with another digest; tags are never moved."""


class _RedirectGuard(urllib.request.HTTPRedirectHandler):
    """urllib's redirect handler copies every header, ``Authorization`` included, to whatever a
    3xx names (https to http too). Registries backed by S3 redirect blob reads to the bucket, which
    must get no registry credential: a credential goes to its own origin only, a redirect from
    https to http is refused, and ``check`` (the realm checks, for the token request) sees every
    redirect target before anything is sent there."""

    def __init__(self, host: str, check: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.host = host
        self.check = check

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,  # noqa: ANN401
                         headers: Any, newurl: str) -> urllib.request.Request | None:  # noqa: ANN401
        old_scheme = urllib.parse.urlsplit(req.full_url).scheme.lower()
        new_scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        try:
            if old_scheme == "https" and new_scheme != "https":
                path = urllib.parse.urlsplit(req.full_url).path
                raise RegistryError(f"registry {self.host} redirected {path} from https to {_shown(newurl)}; "
                                    "refused (a redirect never leaves TLS)")
            if self.check:
                self.check(newurl)
        except RegistryError:
            fp.close()
            raise
        follow = super().redirect_request(req, fp, code, msg, headers, newurl)
        if follow is not None and _origin(req.full_url) != _origin(newurl):
            for name in [n for n in follow.headers if n.lower() in CREDENTIAL_HEADERS]:
                follow.remove_header(name)
        return follow


@dataclass(frozen=True)
class ImageRef:
    host: str
    name: str

    @classmethod
    def parse(cls, repository: str) -> ImageRef:
        """``registry.example.com[:port]/path/name`` (no tag, no digest, no scheme)."""
        value = repository.strip()
        if "://" in value or "@" in value or not value:
            raise ConfigError(f"ACCI_IMAGE_REPOSITORY '{value}' must look like "
                              "registry.example.com/acci/acci-framework")
        host, _, name = value.partition("/")
        if not name or ("." not in host and ":" not in host and host != "localhost"):
            raise ConfigError(f"ACCI_IMAGE_REPOSITORY '{value}' must start with a registry host, e.g. "
                              "registry.example.com/acci/acci-framework")
        if ":" in name.rsplit("/", 1)[-1]:
            raise ConfigError(f"ACCI_IMAGE_REPOSITORY '{value}' must not carry a tag")
        if not re.fullmatch(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*", name):
            raise ConfigError(f"ACCI_IMAGE_REPOSITORY '{value}': '{name}' is not a valid repository name "
                              "(lower case letters, digits, . _ - and /)")
        return cls(host, name)

    def __str__(self) -> str:
        return f"{self.host}/{self.name}"


class Registry:
    """One repository on one registry: ``Registry("127.0.0.1:5000/acci/acci-framework", ...)``."""

    def __init__(self, repository: str, username: str | None = None, password: str | None = None,
                 tls_verify: bool = True) -> None:
        self.ref = ImageRef.parse(repository)
        self.username = username or None
        self._password = password or None
        self.tls_verify = tls_verify
        self._scheme: str | None = None
        self._auth_header: str | None = None
        self._ssl: ssl.SSLContext | None = None
        self._openers: dict[bool, urllib.request.OpenerDirector] = {}
        if bool(self.username) != bool(self._password):
            raise ConfigError("registry credentials are incomplete: set both ACCI_REGISTRY_USERNAME and "
                              "ACCI_REGISTRY_PASSWORD, or neither")

    def __repr__(self) -> str:  # never the password
        return f"Registry({str(self.ref)!r}, username={self.username!r}, tls_verify={self.tls_verify})"

    @property
    def repository(self) -> str:
        return str(self.ref)

    # -- HTTP -----------------------------------------------------------------------------------
    def _context(self) -> ssl.SSLContext:
        """One SSL context per Registry: building one loads the system CA store (~17 ms each)."""
        if self._ssl is None:
            context = ssl.create_default_context()
            if not self.tls_verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._ssl = context
        return self._ssl

    def _open(self, request: urllib.request.Request, *, token: bool = False) -> Any:  # noqa: ANN401
        """``urlopen`` with the redirect guard; ``token``: the request carries the password to the
        token service, so a redirect of it must pass the realm checks as the realm itself did."""
        if token not in self._openers:
            check = (lambda url: self._check_realm(url, redirect=True)) if token else None
            self._openers[token] = urllib.request.build_opener(urllib.request.HTTPSHandler(context=self._context()),
                                                               _RedirectGuard(self.ref.host, check))
        return self._openers[token].open(request, timeout=TIMEOUT)

    def _base(self) -> str:
        """https, or (ACCI_REGISTRY_TLS_VERIFY=false only) plain http when the registry speaks no TLS."""
        if self._scheme:
            return f"{self._scheme}://{self.ref.host}"
        for scheme in ("https", "http") if not self.tls_verify else ("https",):
            try:
                self._open(urllib.request.Request(f"{scheme}://{self.ref.host}/v2/", method="GET")).close()
                self._scheme = scheme
                break
            except urllib.error.HTTPError:
                self._scheme = scheme
                break
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                if isinstance(reason, ssl.SSLError) and scheme == "https" and not self.tls_verify:
                    continue
                raise self._network_error(reason) from None
        if not self._scheme:
            raise RegistryError(f"registry {self.ref.host} answers neither https nor http")
        return f"{self._scheme}://{self.ref.host}"

    def _network_error(self, reason: object) -> RegistryError:
        host = self.ref.host
        if isinstance(reason, ssl.SSLCertVerificationError):
            return RegistryError(f"TLS certificate of registry {host} is not trusted ({reason.verify_message}); "
                                 "install its CA, or set ACCI_REGISTRY_TLS_VERIFY=false only for a registry you trust")
        if isinstance(reason, ssl.SSLError):
            return RegistryError(f"TLS handshake with registry {host} failed ({reason.reason or reason}); "
                                 "is it plain HTTP? then set ACCI_REGISTRY_TLS_VERIFY=false")
        if isinstance(reason, ConnectionRefusedError):
            return RegistryError(f"registry {host} is unreachable: connection refused")
        if isinstance(reason, socket.gaierror):
            return RegistryError(f"registry {host} is unreachable: host name does not resolve")
        if isinstance(reason, TimeoutError | socket.timeout):
            return RegistryError(f"registry {host} is unreachable: no answer within {TIMEOUT} s")
        return RegistryError(f"registry {host} is unreachable: {reason}")

    def _basic(self) -> str:
        token = base64.b64encode(f"{self.username}:{self._password}".encode()).decode()
        return f"Basic {token}"

    def _authenticate(self, challenge: str, scope: str) -> None:
        if not self.username:
            raise RegistryError(f"registry {self.ref.host} requires credentials: set ACCI_REGISTRY_USERNAME and "
                                "ACCI_REGISTRY_PASSWORD")
        scheme, _, params = challenge.partition(" ")
        if scheme.lower() == "basic":
            self._auth_header = self._basic()
            return
        if scheme.lower() != "bearer":
            raise RegistryError(f"registry {self.ref.host} asks for unsupported auth '{scheme}'")
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        realm = fields.get("realm", "")
        self._check_realm(realm)
        query = {"service": fields.get("service", ""), "scope": scope}
        url = realm + "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v})
        request = urllib.request.Request(url, headers={"Authorization": self._basic()})
        try:
            with self._open(request, token=True) as response:
                body = json.loads(self._capped(response, "token") or b"{}")
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise self._denied() from None
            raise RegistryError(f"token service of registry {self.ref.host} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise self._network_error(getattr(exc, "reason", exc)) from None
        token = body.get("token") or body.get("access_token")
        if not token:
            raise RegistryError(f"token service of registry {self.ref.host} returned no token")
        self._auth_header = f"Bearer {token}"

    def _check_realm(self, realm: str, *, redirect: bool = False) -> None:
        """The token service the registry names gets our password: only over https, or plain http
        to the registry's own host when TLS verification is off (a local registry). Anything else
        (http elsewhere, file://, ftp://) is refused before the password leaves; so is a redirect
        of the token request to such a place."""
        parts = urllib.parse.urlsplit(realm)
        if parts.scheme == "https" and parts.hostname:
            return
        if parts.scheme == "http" and not self.tls_verify and parts.netloc == self.ref.host:
            return
        shown = _shown(realm)
        if redirect:
            raise RegistryError(f"token service of registry {self.ref.host} redirects to {shown}; refused (only "
                                "https, or the registry itself with ACCI_REGISTRY_TLS_VERIFY=false)")
        raise RegistryError(f"registry {self.ref.host} sends credentials to token service {shown}; refused (only "
                            "https, or the registry itself with ACCI_REGISTRY_TLS_VERIFY=false)")

    def _capped(self, response: Any, what: str) -> bytes:  # noqa: ANN401 - an http.client response
        """The body, refused past MAX_RESPONSE_BYTES: manifests, configs and tokens are small (the
        distribution spec caps manifests at 4 MiB); a registry that streams more is not trusted."""
        body = response.read(MAX_RESPONSE_BYTES + 1)
        if len(body) > MAX_RESPONSE_BYTES:
            raise RegistryError(f"registry {self.ref.host} sent more than {MAX_RESPONSE_BYTES // 2**20} MiB for "
                                f"{what}; refused")
        return body

    def _denied(self) -> RegistryError:
        return RegistryError(f"registry {self.ref.host} rejected the credentials of user '{self.username}' "
                             "(wrong ACCI_REGISTRY_USERNAME or ACCI_REGISTRY_PASSWORD)")

    def request(self, method: str, path: str, *, headers: dict[str, str] | None = None, data: bytes | None = None,
                scope: str = "pull", ok: Sequence[int] = (200, 201, 202, 204)) -> tuple[int, dict[str, str], bytes]:
        """One API call with auth (retried once after a 401 challenge); returns (status, headers, body).
        404 is returned to the caller; other errors become one-line RegistryErrors."""
        url = self._base() + path
        full_scope = f"repository:{self.ref.name}:{scope}"
        for attempt in range(2):
            all_headers = dict(headers or {})
            if self._auth_header:
                all_headers["Authorization"] = self._auth_header
            request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
            try:
                with self._open(request) as response:
                    return response.status, dict(response.headers), self._capped(response, path)
            except urllib.error.HTTPError as exc:
                if exc.code == 401 and attempt == 0 and (not self._auth_header or "Bearer" in self._auth_header):
                    self._authenticate(exc.headers.get("WWW-Authenticate", "Basic"), full_scope)
                    continue
                if exc.code == 401:
                    raise self._denied() from None
                if exc.code == 404:
                    return 404, dict(exc.headers), b""
                if exc.code == 403:
                    raise RegistryError(f"registry {self.ref.host} denied {method} on {self.ref.name} "
                                        f"for user '{self.username}' (HTTP 403)") from None
                detail = _error_detail(exc)
                raise RegistryError(f"registry {self.ref.host} answered HTTP {exc.code} to {method} "
                                    f"{path.split('?')[0]}{detail}") from None
            except (urllib.error.URLError, OSError) as exc:
                raise self._network_error(getattr(exc, "reason", exc)) from None
        raise self._denied()

    # -- reads ----------------------------------------------------------------------------------
    def check_access(self, *, push: bool = False) -> None:
        """Fail fast with one line when the registry is unreachable or the credentials are wrong."""
        self.request("GET", "/v2/", scope="pull,push" if push else "pull")
        if self.username and not self._auth_header:
            # An open registry ignores credentials; nothing to check.
            return
        # With credentials, make sure the repository scope is granted (token registries check here).
        self.request("GET", f"/v2/{self.ref.name}/tags/list", scope="pull,push" if push else "pull")

    def get_manifest(self, reference: str) -> tuple[bytes, str, str] | None:
        """(bytes, media type, digest) of a tag or digest, or None when absent."""
        status, headers, body = self.request("GET", f"/v2/{self.ref.name}/manifests/{reference}",
                                             headers={"Accept": ACCEPT})
        if status == 404:
            return None
        return body, _header(headers, "Content-Type") or "", self._served_digest(reference, headers, body)

    def _served_digest(self, reference: str, headers: dict[str, str], body: bytes) -> str:
        """A manifest's digest is the hash of its bytes. The ``Docker-Content-Digest`` header is
        only the registry's claim: a header, or a body fetched by digest, that disagrees with the
        bytes served means what we read is not what the digest names, and it is refused."""
        by_digest = reference.startswith(("sha256:", "sha512:"))
        where = f"{self.ref}@{reference}" if by_digest else f"{self.ref}:{reference}"
        digest = _digest(body, reference if by_digest else "sha256:")
        if by_digest and digest != reference:
            raise RegistryError(f"registry {self.ref.host} served {where} with content whose digest is {digest}; "
                                "refused")
        claimed = _header(headers, "Docker-Content-Digest")
        if claimed and claimed != _digest(body, claimed):
            raise RegistryError(f"registry {self.ref.host} says {where} is {claimed} but the manifest it served "
                                f"hashes to {digest}; refused")
        return digest

    def tag_digest(self, tag: str) -> str | None:
        """The digest of what the registry serves for ``tag`` (index or manifest), or None when
        absent: hashed from the manifest (a GET, manifests are small), never a header taken on trust."""
        found = self.get_manifest(tag)
        return found[2] if found else None

    def labels(self, reference: str) -> dict[str, str]:
        """The config labels of an image (for an index: of its first manifest)."""
        found = self.get_manifest(reference)
        if not found:
            return {}
        manifest = json.loads(found[0])
        if manifest.get("manifests"):
            inner = self.get_manifest(manifest["manifests"][0]["digest"])
            if not inner:
                return {}
            manifest = json.loads(inner[0])
        config_digest = (manifest.get("config") or {}).get("digest")
        if not config_digest:
            return {}
        status, _, body = self.request("GET", f"/v2/{self.ref.name}/blobs/{config_digest}")
        if status == 404:
            return {}
        if _digest(body, config_digest) != config_digest:
            raise RegistryError(f"registry {self.ref.host} served blob {config_digest} of {self.ref.name} with other "
                                "content; refused")
        return dict((json.loads(body).get("config") or {}).get("Labels") or {})

    def platform_digests(self, reference: str) -> dict[str, str]:
        """``os/arch[/variant]`` -> manifest digest of an index in the registry."""
        found = self.get_manifest(reference)
        if not found:
            return {}
        out = {}
        for entry in json.loads(found[0]).get("manifests", []):
            p = entry.get("platform") or {}
            out[f"{p.get('os')}/{p.get('architecture')}" + (f"/{p['variant']}" if p.get("variant") else "")] = \
                entry["digest"]
        return out

    def check_tag_free(self, tag: str, digest: str) -> bool:
        """True when ``tag`` is absent, False when it already holds ``digest``; ImmutableTagError
        naming both digests when it holds another one."""
        existing = self.tag_digest(tag)
        if existing is None:
            return True
        if existing == digest:
            return False
        raise self._immutable(tag, existing, digest)

    def _immutable(self, tag: str, existing: str, digest: str) -> ImmutableTagError:
        return ImmutableTagError(f"tag {self.ref}:{tag} already exists with digest {existing}; refusing to "
                                 f"overwrite it with {digest} (tags are immutable)")

    # -- writes ---------------------------------------------------------------------------------
    def put_manifest(self, reference: str, body: bytes, media_type: str) -> str:
        """PUT a manifest under a tag or digest; returns its digest."""
        status, headers, _ = self.request("PUT", f"/v2/{self.ref.name}/manifests/{reference}", data=body,
                                          headers={"Content-Type": media_type}, scope="pull,push")
        if status == 404:
            raise RegistryError(f"registry {self.ref.host} refused the manifest for {self.ref.name}:{reference}")
        digest = _digest(body, "sha256:")
        claimed = _header(headers, "Docker-Content-Digest")
        if claimed and claimed != _digest(body, claimed):
            raise RegistryError(f"registry {self.ref.host} says the manifest it stored as {self.ref}:{reference} is "
                                f"{claimed}, but what was sent hashes to {digest}; refused")
        return digest

    def push_blob(self, data: bytes) -> str:
        """Upload a blob (monolithic) unless the registry has it; returns its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        status, _, _ = self.request("HEAD", f"/v2/{self.ref.name}/blobs/{digest}", scope="pull,push")
        if status != 404:
            return digest
        status, headers, _ = self.request("POST", f"/v2/{self.ref.name}/blobs/uploads/", data=b"", scope="pull,push")
        location = _header(headers, "Location") or ""
        if status == 404 or not location:
            raise RegistryError(f"registry {self.ref.host} did not start a blob upload for {self.ref.name}")
        parsed = urllib.parse.urlsplit(location)
        query = urllib.parse.parse_qsl(parsed.query) + [("digest", digest)]
        path = parsed.path + "?" + urllib.parse.urlencode(query)
        self.request("PUT", path, data=data, headers={"Content-Type": "application/octet-stream"}, scope="pull,push")
        return digest

    def attach(self, subject_digest: str, suffix: str, payload: bytes, media_type: str,
               annotations: dict[str, str] | None = None) -> tuple[str, str]:
        """Store ``payload`` as an OCI artifact referring to ``subject_digest`` under the tag
        ``sha256-<hex>.<suffix>`` (the cosign-style tag scheme, which registries without the
        referrers API also serve). Returns (tag, manifest digest)."""
        config = b"{}"
        config_digest = self.push_blob(config)
        layer_digest = self.push_blob(payload)
        subject = self.get_manifest(subject_digest)
        manifest: dict[str, Any] = {
            "schemaVersion": 2, "mediaType": MANIFEST_OCI, "artifactType": media_type,
            "config": {"mediaType": EMPTY_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": media_type, "digest": layer_digest, "size": len(payload)}],
            "annotations": dict(annotations or {}),
        }
        if subject:
            manifest["subject"] = {"mediaType": subject[1] or INDEX_OCI, "digest": subject_digest,
                                   "size": len(subject[0])}
        tag = subject_digest.replace(":", "-") + f".{suffix}"
        body = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
        return tag, self.put_manifest(tag, body, MANIFEST_OCI)

    def upload(self, tools: ContainerTools, oci_dir: str, index_digest: str, *, log: LineSink | None = None,
               timeout: float = 3600) -> None:
        """Copy the OCI layout to the registry by digest (``docker://REPO@DIGEST``): blobs, every
        platform's manifest and the index, under no tag. Nothing is public under a name until
        ``point_tag``, so a push that fails or loses a race leaves no tag behind, and no temporary
        tag either (distribution cannot delete a tag without deleting every tag of its image)."""
        with auth_file(self.ref.host, self.username, self._password, directory=tools.auth_dir) as authfile:
            argv = ["copy", "--all", "--preserve-digests", "--retry-times", "2",
                    f"--dest-tls-verify={'true' if self.tls_verify else 'false'}"]
            if authfile:
                argv += ["--dest-authfile", str(authfile)]
            argv += [f"oci:{oci_dir}", f"docker://{self.ref}@{index_digest}"]
            try:
                tools.skopeo(*argv, log=log, timeout=timeout)
            except CommandFailed as exc:
                raise self._skopeo_error(exc) from None
        if not self.get_manifest(index_digest):
            raise RegistryError(f"after the push, registry {self.ref.host} does not serve "
                                f"{self.ref.name}@{index_digest}")

    def point_tag(self, tag: str, digest: str, *, lock_dir: Path,
                  replace: Callable[[str], bool] | None = None) -> TagOutcome:
        """Point ``tag`` at ``digest`` (already in the registry) as a compare-and-swap, as far as
        the distribution API allows (it has no conditional PUT): the tag is read right before the
        PUT, under a lock file the builds on this host share (so two of them never interleave), and
        read back after; across hosts, one build per version at a time is the caller's rule.

        A tag naming another digest is immutable (ImmutableTagError naming both) unless ``replace``
        is given: then ``replace(current digest)`` says whether it moves ("moved") or stays ("left").
        Otherwise "created" (it was absent) or "kept" (it already named ``digest``)."""
        with self._tag_lock(lock_dir):
            current = self.tag_digest(tag)
            if current == digest:
                return "kept"
            if current is not None:
                if replace is None:
                    raise self._immutable(tag, current, digest)
                if not replace(current):
                    return "left"
            found = self.get_manifest(digest)
            if not found:
                raise RegistryError(f"registry {self.ref.host} does not serve {self.ref.name}@{digest}; cannot tag "
                                    f"it {tag}")
            self.put_manifest(tag, found[0], found[1] or INDEX_OCI)
            served = self.tag_digest(tag)
        if served != digest:
            raise RegistryError(f"after the push, {self.ref}:{tag} has digest {served}, expected {digest}")
        return "created" if current is None else "moved"

    @contextmanager
    def _tag_lock(self, lock_dir: Path) -> Iterator[None]:
        """One lock file per repository under ``lock_dir`` (flock: released when its holder dies,
        even by SIGKILL). Pointing a tag takes a few HTTP calls, so a wait past LOCK_WAIT_SECONDS
        means a stuck build and is refused rather than waited on forever."""
        lock_dir = Path(lock_dir)
        lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = lock_dir / (hashlib.sha256(str(self.ref).encode()).hexdigest()[:24] + ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + LOCK_WAIT_SECONDS
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise RegistryError(f"another build on this host has held the tag lock of {self.ref} "
                                            f"({path}) for over {LOCK_WAIT_SECONDS} s; refused") from None
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)

    def push(self, tools: ContainerTools, oci_dir: str, index_digest: str, tags: Sequence[str], *,
             log: LineSink | None = None, timeout: float = 3600) -> dict[str, str]:
        """Upload the OCI layout by digest, then point each of ``tags`` at it (immutable tags: one
        naming another digest is an ImmutableTagError). Returns tag -> digest, each read back."""
        if not tags:
            raise ValueError("push needs at least one tag")
        self.upload(tools, oci_dir, index_digest, log=log, timeout=timeout)
        for tag in tags:
            self.point_tag(tag, index_digest, lock_dir=tools.base / "locks")
        return dict.fromkeys(tags, index_digest)

    def _skopeo_error(self, exc: CommandFailed) -> RegistryError:
        text = " ".join(exc.result.tail[-3:])
        lowered = text.lower()
        host = self.ref.host
        if "unauthorized" in lowered or "authentication required" in lowered:
            return self._denied() if self.username else RegistryError(
                f"registry {host} requires credentials: set ACCI_REGISTRY_USERNAME and ACCI_REGISTRY_PASSWORD")
        if "connection refused" in lowered or "no such host" in lowered:
            why = "connection refused" if "refused" in lowered else "host name does not resolve"
            return RegistryError(f"registry {host} is unreachable: {why}")
        if "x509" in lowered or "certificate" in lowered or "tls" in lowered:
            return RegistryError(f"TLS with registry {host} failed; install its CA, or set "
                                 "ACCI_REGISTRY_TLS_VERIFY=false only for a registry you trust")
        if "no space left" in lowered:
            return RegistryError(f"registry {host} is out of disk space")
        last = exc.result.last_line
        match = re.search(r'msg="([^"]*)"', last)
        return RegistryError(f"pushing to {self.ref} failed: {(match.group(1) if match else last)[:300]}")


def _digest(body: bytes, like: str) -> str:
    """``algorithm:hex`` of ``body`` with the algorithm of the digest ``like`` (sha512, else sha256)."""
    algorithm = "sha512" if like.startswith("sha512:") else "sha256"
    return f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"


def _header(headers: dict[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read(65536) or b"{}")
        errors = body.get("errors") or []
        if errors:
            return f": {errors[0].get('code', '')} {errors[0].get('message', '')}".rstrip()
    except (ValueError, OSError, AttributeError):
        pass
    return ""
