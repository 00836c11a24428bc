"""The registry client and the push, against a real docker-registry (distribution 2.8) on loopback."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

import acci_ops.lib.images.tools as tools_module
from acci_ops.dev.registry import LocalRegistry
from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.core.net import free_port
from acci_ops.lib.images.build import LocalIndex
from acci_ops.lib.images.registry import ImageRef, ImmutableTagError, Registry, RegistryError
from acci_ops.lib.images.tools import ContainerTools
from acci_ops_tests.fixtures.images import REGISTRY_PASSWORD, REGISTRY_USERNAME


@pytest.fixture
def recorded_commands(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Every container-tool command: its argv, its env, and the auth file's mode while it ran."""
    calls: list[dict] = []
    real = tools_module.run_command

    def recording(argv, **kwargs):  # noqa: ANN001, ANN202
        modes = {}
        for flag in ("--authfile", "--dest-authfile"):
            if flag in argv:
                path = argv[argv.index(flag) + 1]
                modes[path] = stat.S_IMODE(os.stat(path).st_mode)
        calls.append({"argv": list(argv), "env": dict(kwargs.get("env") or {}), "modes": modes})
        return real(argv, **kwargs)

    monkeypatch.setattr(tools_module, "run_command", recording)
    return calls


def test_push_then_read_back(registry: LocalRegistry, container_tools: ContainerTools,
                             fixture_builds: Callable[[str], LocalIndex]) -> None:
    local = fixture_builds("v1.0.0")
    reg = Registry(registry.repository("test/push"), tls_verify=False)
    assert reg.tag_digest("1.0.0") is None
    assert reg.check_tag_free("1.0.0", local.index_digest) is True
    pushed = reg.push(container_tools, str(local.oci_dir), local.index_digest, ["1.0.0", "sha-abc"])
    assert pushed == {"1.0.0": local.index_digest, "sha-abc": local.index_digest}
    assert reg.platform_digests("1.0.0") == {p: i.digest for p, i in local.platforms.items()}
    assert reg.labels("sha-abc")["org.opencontainers.image.version"] == "1.0.0"
    assert reg.check_tag_free("1.0.0", local.index_digest) is False  # same digest: already there, fine


def test_tag_conflict_names_both_digests(registry: LocalRegistry, container_tools: ContainerTools,
                                         fixture_builds: Callable[[str], LocalIndex]) -> None:
    old, new = fixture_builds("v1.0.0"), fixture_builds("v1.1.0")
    reg = Registry(registry.repository("test/conflict"), tls_verify=False)
    reg.push(container_tools, str(old.oci_dir), old.index_digest, ["2.0.0"])
    with pytest.raises(ImmutableTagError) as err:
        reg.check_tag_free("2.0.0", new.index_digest)
    assert str(err.value) == (f"tag {registry.host}/test/conflict:2.0.0 already exists with digest "
                              f"{old.index_digest}; refusing to overwrite it with {new.index_digest} "
                              "(tags are immutable)")
    assert reg.tag_digest("2.0.0") == old.index_digest


def test_credentials_only_in_an_auth_file(auth_registry: LocalRegistry, container_tools: ContainerTools,
                                          fixture_builds: Callable[[str], LocalIndex],
                                          recorded_commands: list[dict]) -> None:
    local = fixture_builds("v1.0.0")
    reg = Registry(auth_registry.repository("test/auth"), REGISTRY_USERNAME, REGISTRY_PASSWORD, tls_verify=False)
    reg.check_access(push=True)
    lines: list[str] = []
    assert reg.push(container_tools, str(local.oci_dir), local.index_digest, ["1.0.0"], log=lines.append)
    (call,) = recorded_commands
    assert REGISTRY_PASSWORD not in " ".join(call["argv"]) + json.dumps(call["env"]) + "\n".join(lines)
    assert not any(a.startswith("--creds") or a.startswith("--dest-creds") for a in call["argv"])
    (auth_path, mode), = call["modes"].items()
    assert mode == 0o600 and not Path(auth_path).exists()  # private while used, deleted after
    assert REGISTRY_PASSWORD not in repr(reg)


def test_wrong_credentials_one_line_without_the_password(auth_registry: LocalRegistry,
                                                         container_tools: ContainerTools,
                                                         fixture_builds: Callable[[str], LocalIndex],
                                                         recorded_commands: list[dict]) -> None:
    wrong = "Wr0ng-" + REGISTRY_PASSWORD
    reg = Registry(auth_registry.repository("test/auth"), REGISTRY_USERNAME, wrong, tls_verify=False)
    expected = (f"registry {auth_registry.host} rejected the credentials of user '{REGISTRY_USERNAME}' "
                "(wrong ACCI_REGISTRY_USERNAME or ACCI_REGISTRY_PASSWORD)")
    with pytest.raises(RegistryError) as err:
        reg.check_access(push=True)
    assert str(err.value) == expected
    # The push itself (skopeo) reports the same line, and the password is nowhere.
    local = fixture_builds("v1.0.0")
    lines: list[str] = []
    with pytest.raises(RegistryError) as err:
        reg.push(container_tools, str(local.oci_dir), local.index_digest, ["9.9.9"], log=lines.append)
    assert str(err.value) == expected
    text = str(err.value) + repr(err.value.__cause__) + "\n".join(lines)
    text += json.dumps([c["argv"] for c in recorded_commands] + [c["env"] for c in recorded_commands])
    assert wrong not in text and REGISTRY_PASSWORD not in text
    anonymous = Registry(auth_registry.repository("test/auth"), tls_verify=False)
    with pytest.raises(RegistryError, match=r"requires credentials: set ACCI_REGISTRY_USERNAME and "):
        anonymous.tag_digest("1.0.0")


def test_unreachable_registry_and_tls_mismatch(registry: LocalRegistry) -> None:
    port = free_port()
    with pytest.raises(RegistryError) as err:
        Registry(f"127.0.0.1:{port}/acci/x", tls_verify=False).check_access()
    assert str(err.value) == f"registry 127.0.0.1:{port} is unreachable: connection refused"
    with pytest.raises(RegistryError) as err:
        Registry(registry.repository("acci/x"), tls_verify=True).check_access()
    assert str(err.value).startswith(f"TLS handshake with registry {registry.host} failed (")
    assert str(err.value).endswith("is it plain HTTP? then set ACCI_REGISTRY_TLS_VERIFY=false")
    with pytest.raises(RegistryError, match=r"^registry no-such-host\.invalid is unreachable: host name does not "):
        Registry("no-such-host.invalid/acci/x").check_access()


@pytest.mark.parametrize(("value", "fragment"), [
    ("acci-framework", "must start with a registry host"),
    ("https://registry.example.com/acci", "must look like registry.example.com/acci/acci-framework"),
    ("registry.example.com/acci/app:1.0", "must not carry a tag"),
    ("registry.example.com/ACCI/App", "is not a valid repository name"),
])
def test_bad_repository_setting(value: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        ImageRef.parse(value)


def test_incomplete_credentials() -> None:
    with pytest.raises(ConfigError, match="set both ACCI_REGISTRY_USERNAME and ACCI_REGISTRY_PASSWORD"):
        Registry("127.0.0.1:5000/acci/x", username="someone")


def test_artifact_refers_to_the_image(registry: LocalRegistry, container_tools: ContainerTools,
                                      fixture_builds: Callable[[str], LocalIndex]) -> None:
    local = fixture_builds("v1.0.0")
    reg = Registry(registry.repository("test/artifacts"), tls_verify=False)
    reg.push(container_tools, str(local.oci_dir), local.index_digest, ["1.0.0"])
    tag, digest = reg.attach(local.index_digest, "sbom", b'{"spdxVersion": "SPDX-2.3"}', "application/spdx+json")
    assert tag == "sha256-" + local.index_digest[7:] + ".sbom"
    body, _, served = reg.get_manifest(tag)
    manifest = json.loads(body)
    assert served == digest
    assert manifest["subject"]["digest"] == local.index_digest
    assert manifest["layers"][0]["mediaType"] == "application/spdx+json"


def test_an_oversized_registry_answer_is_refused(tmp_path):
    """A registry (or something posing as one) that streams an endless manifest is cut off."""
    import http.server
    import threading

    from acci_ops.lib.images import registry as registry_module

    class Endless(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.oci.image.index.v1+json")
            self.end_headers()
            chunk = b" " * 65536
            try:
                for _ in range(registry_module.MAX_RESPONSE_BYTES // len(chunk) + 8):
                    self.wfile.write(chunk)
            except OSError:
                pass

        do_HEAD = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        reg = Registry(f"127.0.0.1:{server.server_port}/acci/x", tls_verify=False)
        with pytest.raises(RegistryError, match=r"sent more than 16 MiB for /v2/acci/x/manifests/1.0.0; refused$"):
            reg.request("GET", "/v2/acci/x/manifests/1.0.0")
    finally:
        server.shutdown()


@pytest.mark.parametrize("realm", ["http://attacker.example:8080/token", "file:///etc/passwd", "ftp://x/token", ""])
def test_credentials_never_go_to_an_untrusted_token_service(realm):
    """A registry's 401 challenge names where to send the password; only https (or the local
    registry itself with TLS verification off) gets it."""
    import http.server
    import threading

    seen: list[str] = []

    class Challenging(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.headers.get("Authorization", ""))
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Bearer realm="{realm}",service="reg"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Challenging)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        reg = Registry(f"127.0.0.1:{server.server_port}/acci/x", "ci", "pw-Never-Leak-77", tls_verify=False)
        with pytest.raises(RegistryError, match=r"sends credentials to token service .*; refused") as info:
            reg.request("GET", "/v2/acci/x/tags/list")
        assert "pw-Never-Leak-77" not in str(info.value)
        assert all("Basic" not in h for h in seen)  # the password went nowhere
    finally:
        server.shutdown()
