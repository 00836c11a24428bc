"""The registry client against hostile or unusual HTTP answers: redirects to another origin (an S3
bucket), a token service that redirects, https that redirects to http, and a digest header that
disagrees with the manifest served. Real HTTP servers on 127.0.0.1 (``fixtures.fake_registry``)."""

from __future__ import annotations

import json

import pytest

from acci_ops.lib.images.registry import Registry, RegistryError
from acci_ops_tests.fixtures.fake_registry import Answer, FakeImage, FakeRegistry, Server, digest_of, storage_for

TOKEN = "tok-Zq81-SECRET"
PASSWORD = "pw-Never-Leak-R3d1rect"
LABELS = {"org.opencontainers.image.revision": "a" * 40, "org.opencontainers.image.version": "1.0.0"}


def test_credentials_never_follow_a_redirect_to_another_origin(http_servers: list) -> None:
    """A token-auth registry sends manifest and blob reads to a bucket on another port (307): the
    reads still work, and the bucket never sees an Authorization header (nor the password)."""
    image = FakeImage(LABELS)
    registry = FakeRegistry("acci/app", {"1.0.0": image}, token=TOKEN)
    http_servers.append(registry)
    registry.storage = storage_for(registry.blobs)
    http_servers.append(registry.storage)
    reg = Registry(f"{registry.server.host}/acci/app", "ci", PASSWORD, tls_verify=False)

    assert reg.labels("1.0.0") == LABELS  # manifest and config blob both redirected
    assert reg.tag_digest("1.0.0") == image.digest
    bucket = registry.storage.seen
    assert {s.path.split("?")[0] for s in bucket} == {f"/bucket/{image.digest}", f"/bucket/{digest_of(image.config)}"}
    assert all("Authorization" not in s.headers for s in bucket), [s.headers for s in bucket]
    assert PASSWORD not in json.dumps([s.headers for s in bucket])
    # The registry itself did get the credentials (Basic at the token service, then the token).
    sent = [s.headers.get("Authorization", "") for s in registry.server.seen]
    assert f"Bearer {TOKEN}" in sent and any(h.startswith("Basic ") for h in sent)


def test_a_redirect_to_the_same_origin_keeps_the_token(http_servers: list) -> None:
    """A redirect on the registry's own origin (another path) is not a leak: the token goes along."""
    image = FakeImage(LABELS)
    registry = FakeRegistry("acci/app", {"1.0.0": image}, token=TOKEN)
    http_servers.append(registry)
    registry.storage = registry.server  # the redirect target is the registry: /bucket/... answers 404 there
    reg = Registry(f"{registry.server.host}/acci/app", "ci", PASSWORD, tls_verify=False)
    assert reg.tag_digest("1.0.0") is None  # followed to /bucket/... on the same server, which has nothing
    followed = [s for s in registry.server.seen if s.path.startswith("/bucket/")]
    assert followed and all(s.headers.get("Authorization") == f"Bearer {TOKEN}" for s in followed)


def test_a_token_request_redirected_elsewhere_is_refused(http_servers: list) -> None:
    """The token request carries the password: a redirect of it to plain http on another host is
    held to the realm's rules and refused in one line; the other server gets nothing at all."""
    elsewhere = Server(lambda *_: (200, {}, json.dumps({"token": "stolen"}).encode()))
    http_servers.append(elsewhere)

    def redirect(path: str, headers: dict[str, str]) -> Answer:
        return 307, {"Location": f"http://{elsewhere.host}/collect?{path.partition('?')[2]}"}, b""

    registry = FakeRegistry("acci/app", {"1.0.0": FakeImage(LABELS)}, token=TOKEN, token_answer=redirect)
    http_servers.append(registry)
    reg = Registry(f"{registry.server.host}/acci/app", "ci", PASSWORD, tls_verify=False)
    with pytest.raises(RegistryError) as err:
        reg.tag_digest("1.0.0")
    assert str(err.value) == (f"token service of registry {registry.server.host} redirects to http://{elsewhere.host};"
                              " refused (only https, or the registry itself with ACCI_REGISTRY_TLS_VERIFY=false)")
    assert elsewhere.seen == []


def test_a_redirect_from_https_to_http_is_refused(http_servers: list, self_signed_cert) -> None:
    """A registry spoken to over TLS that redirects a read to plain http: refused in one line, even
    for an anonymous read (the content would travel unprotected); the http server sees nothing."""
    plain = Server(lambda *_: (200, {}, b"{}"))
    http_servers.append(plain)
    registry = FakeRegistry("acci/app", {"1.0.0": FakeImage(LABELS)}, cert=self_signed_cert, storage=plain)
    http_servers.append(registry)
    assert registry.server.url.startswith("https://")
    reg = Registry(f"{registry.server.host}/acci/app", tls_verify=False)
    with pytest.raises(RegistryError) as err:
        reg.tag_digest("1.0.0")
    assert str(err.value) == (f"registry {registry.server.host} redirected /v2/acci/app/manifests/1.0.0 from https "
                              f"to http://{plain.host}; refused (a redirect never leaves TLS)")
    assert plain.seen == []


def test_a_digest_header_that_disagrees_with_the_manifest_is_refused(http_servers: list) -> None:
    """The digest of a manifest is the hash of the bytes served: a registry whose
    Docker-Content-Digest names another digest (the one a push expects, say) is refused."""
    image, other = FakeImage(LABELS), FakeImage({**LABELS, "org.opencontainers.image.version": "6.6.6"})

    def lying(method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        if path == "/v2/":
            return 200, {}, b"{}"
        if path.endswith("/manifests/1.0.0"):  # serves another manifest but claims the expected digest
            return 200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json",
                         "Docker-Content-Digest": image.digest}, other.manifest
        if path.endswith(f"/manifests/{image.digest}"):  # asked by digest, serves other bytes
            return 200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, other.manifest
        return 404, {}, b""

    server = Server(lying)
    http_servers.append(server)
    reg = Registry(f"{server.host}/acci/app", tls_verify=False)
    with pytest.raises(RegistryError) as err:
        reg.tag_digest("1.0.0")
    assert str(err.value) == (f"registry {server.host} says {server.host}/acci/app:1.0.0 is {image.digest} but the "
                              f"manifest it served hashes to {other.digest}; refused")
    with pytest.raises(RegistryError) as err:
        reg.get_manifest(image.digest)
    assert str(err.value) == (f"registry {server.host} served {server.host}/acci/app@{image.digest} with content "
                              f"whose digest is {other.digest}; refused")
