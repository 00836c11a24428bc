"""The push against the real docker-registry: tags pointed by compare-and-swap after an upload by
digest, and a read-back that hashes what the registry serves (a proxy in front of it lies)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from acci_ops.dev.registry import LocalRegistry
from acci_ops.lib.images.build import LocalIndex
from acci_ops.lib.images.registry import ImmutableTagError, Registry, RegistryError
from acci_ops.lib.images.tools import ContainerTools
from acci_ops_tests.fixtures.fake_registry import Answer, ForwardingProxy, tags_of


def test_two_concurrent_pushes_of_one_tag_one_wins(registry: LocalRegistry, container_tools: ContainerTools,
                                                   fixture_builds: Callable[[str], LocalIndex]) -> None:
    """Two pushes of different images under one version tag at the same time (two runs of one
    partition): exactly one wins, the other is refused naming the digest the tag holds, the tag
    names one digest, and no other tag (no temporary one) is left in the repository."""
    images = [fixture_builds("v1.0.0"), fixture_builds("v1.1.0")]
    assert images[0].index_digest != images[1].index_digest
    start = threading.Barrier(2)
    results: dict[str, object] = {}

    def push(local: LocalIndex) -> None:
        reg = Registry(registry.repository("test/race"), tls_verify=False)
        start.wait()
        try:
            results[local.index_digest] = reg.push(container_tools, str(local.oci_dir), local.index_digest, ["7.0.0"])
        except ImmutableTagError as exc:
            results[local.index_digest] = exc

    threads = [threading.Thread(target=push, args=(local,)) for local in images]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    winners = [d for d, r in results.items() if isinstance(r, dict)]
    losers = [d for d, r in results.items() if isinstance(r, ImmutableTagError)]
    assert len(winners) == 1 and len(losers) == 1, results
    reg = Registry(registry.repository("test/race"), tls_verify=False)
    assert reg.tag_digest("7.0.0") == winners[0]
    assert str(results[losers[0]]) == (f"tag {registry.host}/test/race:7.0.0 already exists with digest {winners[0]};"
                                       f" refusing to overwrite it with {losers[0]} (tags are immutable)")
    assert tags_of(registry, "test/race") == ["7.0.0"]


def test_the_push_read_back_hashes_the_served_manifest(registry: LocalRegistry, container_tools: ContainerTools,
                                                      fixture_builds: Callable[[str], LocalIndex],
                                                      http_servers: list) -> None:
    """A registry (here a proxy in front of the real one) that serves another image under the
    pushed tag but claims the expected digest in Docker-Content-Digest: the push is not reported
    done; it fails in one line naming what the served manifest really hashes to."""
    local, other = fixture_builds("v1.0.0"), fixture_builds("v1.1.0")
    honest = Registry(registry.repository("test/readback"), tls_verify=False)
    honest.push(container_tools, str(other.oci_dir), other.index_digest, ["other"])
    other_body = honest.get_manifest(other.index_digest)[0]

    def lie(method: str, path: str, answer: Answer) -> Answer | None:
        if method in ("GET", "HEAD") and path.endswith("/manifests/1.0.0") and answer[0] == 200:
            headers = {**answer[1], "Docker-Content-Digest": local.index_digest,
                       "Content-Length": str(len(other_body))}
            return 200, headers, b"" if method == "HEAD" else other_body
        return None

    proxy = ForwardingProxy(registry.host, lie)
    http_servers.append(proxy)
    reg = Registry(f"{proxy.host}/test/readback", tls_verify=False)
    with pytest.raises(RegistryError) as err:
        reg.push(container_tools, str(local.oci_dir), local.index_digest, ["1.0.0"])
    assert str(err.value) == (f"registry {proxy.host} says {proxy.host}/test/readback:1.0.0 is {local.index_digest} "
                              f"but the manifest it served hashes to {other.index_digest}; refused")
