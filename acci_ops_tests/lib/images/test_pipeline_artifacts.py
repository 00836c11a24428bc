"""Artifacts (SBOM, provenance) are part of what "already built" means: a failed artifact push is
retried by the next run, and a version in the registry without one gets it from a rebuild with the
same digest. Real git, buildah, skopeo, docker-registry, and a proxy in front of it that refuses
one request."""

from __future__ import annotations

import pytest

from acci_ops.dev.fixture_app import FixtureRepo
from acci_ops.dev.registry import LocalRegistry
from acci_ops.lib.images.build import LocalIndex
from acci_ops.lib.images.outcome import Artifact
from acci_ops.lib.images.pipeline import artifact_tag, build_version
from acci_ops.lib.images.registry import ImmutableTagError, Registry, RegistryError
from acci_ops.lib.images.source import Checkout
from acci_ops.lib.images.tools import ContainerTools
from acci_ops_tests.fixtures.fake_registry import ForwardingProxy, fail_once, settings_for, tags_of


def sbom(local: LocalIndex, checkout: Checkout) -> list[Artifact]:
    return [Artifact("sbom", b'{"packages": []}', "application/spdx+json", metadata={"sbom_components": 0})]


def provenance(local: LocalIndex, checkout: Checkout) -> list[Artifact]:
    return [Artifact("att", f'{{"revision": "{checkout.commit}"}}'.encode(), "application/vnd.in-toto+json")]


def test_a_refused_sbom_push_is_retried_by_the_next_run(fixture_repo: FixtureRepo, registry: LocalRegistry,
                                                        container_tools: ContainerTools, http_servers: list) -> None:
    """The registry answers 500 to the first PUT of an .sbom: that run fails in one line and leaves
    no tag (artifacts go before the tags), so the next run is not a no-op: it pushes the image with
    its SBOM. The run after that is the no-op. (Producers as a plain list, declaring no suffix:
    the retry does not depend on the no-op run knowing which artifacts to expect.)"""
    proxy = ForwardingProxy(registry.host, fail_once(lambda method, path: method == "PUT"
                                                      and "/manifests/" in path and path.endswith(".sbom")))
    http_servers.append(proxy)
    name = "arts/retry"
    settings = settings_for(fixture_repo, proxy.host, name)
    artifacts = [sbom, provenance]
    with pytest.raises(RegistryError, match=rf"^registry {proxy.host} answered HTTP 500 to PUT /v2/{name}/manifests/"
                                            r"sha256-[0-9a-f]{64}\.sbom: UNKNOWN injected failure$"):
        build_version(settings, "v1.0.0", tools=container_tools, artifacts=artifacts)
    assert not [t for t in tags_of(registry, name) if not t.startswith("sha256-")]  # no version, no sha- tag
    second = build_version(settings, "v1.0.0", tools=container_tools, artifacts=artifacts)
    assert second.pushed and not second.noop and second.completed == []
    digest = second.index_digest
    assert sorted(second.artifacts) == [artifact_tag(digest, "att"), artifact_tag(digest, "sbom")]
    commit = fixture_repo.commits["v1.0.0"]
    assert tags_of(registry, name) == sorted(["1.0.0", f"sha-{commit[:12]}", artifact_tag(digest, "att"),
                                              artifact_tag(digest, "sbom")])
    third = build_version(settings, "v1.0.0", tools=container_tools, artifacts=artifacts)
    assert third.noop and third.completed == [] and third.message.endswith("; nothing to do")


def test_a_pushed_version_without_its_sbom_gets_it(fixture_repo: FixtureRepo, registry: LocalRegistry,
                                                   container_tools: ContainerTools) -> None:
    """The registry serves 1.1.0 with its provenance but no SBOM (pushed by an older acci_ops, or its
    SBOM lost): the next run is not a no-op: it rebuilds (same digest), attaches the SBOM only
    (the provenance that is there stays, its producer is not even run) and reports what it completed."""
    name = "arts/complete"
    settings = settings_for(fixture_repo, registry, name)
    first = build_version(settings, "v1.1.0", tools=container_tools, artifacts={"att": provenance})
    digest = first.index_digest
    reg = Registry(registry.repository(name), tls_verify=False)
    att = reg.tag_digest(artifact_tag(digest, "att"))
    calls: list[str] = []

    def counted_provenance(local: LocalIndex, checkout: Checkout) -> list[Artifact]:
        calls.append(local.index_digest)
        return provenance(local, checkout)

    lines: list[str] = []
    completed = build_version(settings, "v1.1.0", tools=container_tools, log=lines.append,
                              artifacts={"sbom": sbom, "att": counted_provenance})
    assert completed.pushed and not completed.noop and completed.index_digest == digest
    assert completed.completed == [artifact_tag(digest, "sbom")] and calls == []
    assert sorted(completed.artifacts) == [artifact_tag(digest, "att"), artifact_tag(digest, "sbom")]
    assert completed.message == (f"completed {registry.host}/{name}@{digest} (1.1.0, "
                                 f"sha-{fixture_repo.commits['v1.1.0'][:12]}): added {artifact_tag(digest, 'sbom')}")
    assert f"{registry.host}/{name}@{digest} lacks its sbom: rebuilding v1.1.0 to make them (the build is " \
           "reproducible: it must give the same digest)" in lines
    assert reg.tag_digest(artifact_tag(digest, "att")) == att and reg.tag_digest("1.1.0") == digest
    again = build_version(settings, "v1.1.0", tools=container_tools, artifacts={"sbom": sbom, "att": provenance})
    assert again.noop and again.completed == [] and sorted(again.artifacts) == sorted(completed.artifacts)


def test_a_missing_sbom_is_not_made_from_a_different_rebuild(fixture_repo: FixtureRepo, registry: LocalRegistry,
                                                             container_tools: ContainerTools) -> None:
    """When the rebuild does not reproduce the digest the version tag holds (here the image was
    pushed with another title label), an SBOM of the rebuild would describe another image: refused
    in one line, and nothing is attached or tagged."""
    name = "arts/differs"
    settings = settings_for(fixture_repo, registry, name)
    first = build_version(settings_for(fixture_repo, registry, name, title="acci-framework-old"), "v1.0.0",
                          tools=container_tools)
    with pytest.raises(ImmutableTagError) as err:
        build_version(settings, "v1.0.0", tools=container_tools, artifacts={"sbom": sbom})
    commit = fixture_repo.commits["v1.0.0"]
    message = str(err.value)
    assert message.startswith(f"{registry.host}/{name}:1.0.0 is {first.index_digest}, built from {commit[:12]}, "
                              f"but lacks its sbom; this rebuild gave sha256:")
    assert message.endswith(f"(its base images changed?), so they cannot be made for {first.index_digest}: "
                            "nothing pushed")
    assert tags_of(registry, name) == ["1.0.0", f"sha-{commit[:12]}"]
