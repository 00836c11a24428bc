"""The image registry over its HTTP API (Docker Registry v2 / OCI distribution), and the push.

Reads (does a tag exist, with which digest, built from which commit) are plain HTTP calls with
basic or token auth, so a no-op rebuild costs a few requests. The push is ``skopeo copy --all
--preserve-digests oci:DIR docker://REPO:TAG`` with the credentials in an auth file, followed by a
read-back: a tag is reported pushed only when the registry serves it with the local index digest.
Registries overwrite tags silently; here a tag that exists with another digest is refused.

Every error is one line naming the registry and the cause; the password never appears in argv,
logs or messages (it only lives in this process and in a 0600 auth file that is deleted after).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
TIMEOUT = 30
MAX_RESPONSE_BYTES = 16 * 2**20  # largest API response read (manifests, configs, tokens, errors)


class RegistryError(AcciOpsError):
    """The registry could not be reached or refused us (one line, no secret)."""


class ImmutableTagError(AcciOpsError):
    """A tag already exists with another digest; tags are never moved."""


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

    def _open(self, request: urllib.request.Request) -> Any:
        return urllib.request.urlopen(request, timeout=TIMEOUT, context=self._context())

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
            with self._open(request) as response:
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

    def _check_realm(self, realm: str) -> None:
        """The token service the registry names gets our password: only over https, or plain http
        to the registry's own host when TLS verification is off (a local registry). Anything else
        (http elsewhere, file://, ftp://) is refused before the password leaves."""
        parts = urllib.parse.urlsplit(realm)
        if parts.scheme == "https" and parts.hostname:
            return
        if parts.scheme == "http" and not self.tls_verify and parts.netloc == self.ref.host:
            return
        shown = f"{parts.scheme}://{parts.netloc}" if parts.scheme else "(none)"
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
        digest = _header(headers, "Docker-Content-Digest") or "sha256:" + hashlib.sha256(body).hexdigest()
        return body, _header(headers, "Content-Type") or "", digest

    def tag_digest(self, tag: str) -> str | None:
        """The digest the registry serves for ``tag`` (index or manifest), or None when absent."""
        status, headers, _ = self.request("HEAD", f"/v2/{self.ref.name}/manifests/{tag}", headers={"Accept": ACCEPT})
        if status == 404:
            return None
        digest = _header(headers, "Docker-Content-Digest")
        if digest:
            return digest
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
        raise ImmutableTagError(f"tag {self.ref}:{tag} already exists with digest {existing}; refusing to "
                                f"overwrite it with {digest} (tags are immutable)")

    # -- writes ---------------------------------------------------------------------------------
    def put_manifest(self, reference: str, body: bytes, media_type: str) -> str:
        """PUT a manifest under a tag or digest; returns its digest."""
        status, headers, _ = self.request("PUT", f"/v2/{self.ref.name}/manifests/{reference}", data=body,
                                          headers={"Content-Type": media_type}, scope="pull,push")
        if status == 404:
            raise RegistryError(f"registry {self.ref.host} refused the manifest for {self.ref.name}:{reference}")
        return _header(headers, "Docker-Content-Digest") or "sha256:" + hashlib.sha256(body).hexdigest()

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

    def push(self, tools: ContainerTools, oci_dir: str, index_digest: str, tags: Sequence[str], *,
             log: LineSink | None = None, timeout: float = 3600) -> dict[str, str]:
        """Copy the OCI layout to the registry under ``tags`` and verify each serves ``index_digest``.

        The first tag is pushed with ``skopeo copy --all --preserve-digests`` (credentials in an auth
        file); further tags are the same index manifest PUT under another name. Returns tag -> digest."""
        if not tags:
            raise ValueError("push needs at least one tag")
        first, *others = tags
        with auth_file(self.ref.host, self.username, self._password) as authfile:
            argv = ["copy", "--all", "--preserve-digests", "--retry-times", "2",
                    f"--dest-tls-verify={'true' if self.tls_verify else 'false'}"]
            if authfile:
                argv += ["--dest-authfile", str(authfile)]
            argv += [f"oci:{oci_dir}", f"docker://{self.ref}:{first}"]
            try:
                tools.skopeo(*argv, log=log, timeout=timeout)
            except CommandFailed as exc:
                raise self._skopeo_error(exc) from None
        found = self.get_manifest(index_digest)
        if not found:
            raise RegistryError(f"after the push, registry {self.ref.host} does not serve "
                                f"{self.ref.name}@{index_digest}")
        body, media_type, _ = found
        for tag in others:
            self.put_manifest(tag, body, media_type or INDEX_OCI)
        pushed = {}
        for tag in tags:
            digest = self.tag_digest(tag)
            if digest != index_digest:
                raise RegistryError(f"after the push, {self.ref}:{tag} has digest {digest}, expected {index_digest}")
            pushed[tag] = digest
        return pushed

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
