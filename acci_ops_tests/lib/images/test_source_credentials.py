"""Credentials in ACCI_SOURCE_REPO reach git and nothing else: not git's (or any) argv, not a file
of the clone, not the build context, not the pushed image. A real git server that requires Basic
auth (git-http-backend behind http.server), real buildah and skopeo, the session registry."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from acci_ops.dev.registry import LocalRegistry
from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.images.build import build_index
from acci_ops.lib.images.source import checkout, list_release_tags, public_url
from acci_ops.lib.images.tools import ContainerTools
from acci_ops_tests.fixtures.git_http import GIT_TOKEN, GIT_USERNAME, GitHttpServer

MARKER = b"hello-from-the-private-repo"


def private_repo(path: Path) -> Path:
    """A repository whose Dockerfile publishes its whole context (``COPY . /app``)."""
    path.mkdir(parents=True)
    (path / "Dockerfile").write_text("FROM scratch\nCOPY . /app\n")
    (path / "hello.txt").write_bytes(MARKER + b"\n")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
           "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z", "PATH": "/usr/bin:/bin", "HOME": str(path)}
    for argv in (["git", "init", "-q", "-b", "main"], ["git", "add", "."], ["git", "commit", "-q", "-m", "app"],
                 ["git", "tag", "-a", "v1.0.0", "-m", "release"]):
        subprocess.run(argv, cwd=path, env=env, check=True, capture_output=True)
    return path


class ProcessSampler:
    """Reads every process's argv (/proc/*/cmdline) in a loop on a thread: any argv holding the
    token is kept, and ``saw_git`` proves the sampling overlapped git's own processes."""

    def __init__(self, secret: bytes, port: int) -> None:
        self.secret, self.port = secret, str(port).encode()
        self.leaks: list[bytes] = []
        self.saw_git = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        own = str(os.getpid())
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit() or pid == own:
                    continue
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as handle:
                        argv = handle.read()
                except OSError:
                    continue
                if self.secret in argv:
                    self.leaks.append(argv.replace(b"\0", b" "))
                if b"git" in argv and self.port in argv:
                    self.saw_git += 1
            # A short pause per pass: a loop that never releases the GIL starves the git server's
            # threads in this process (seen once as "Empty reply from server" on a loaded machine);
            # git's processes live far longer than a pass.
            self._stop.wait(0.002)

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def blobs_hold(root: Path, needle: bytes) -> tuple[list[str], bool, list[str]]:
    """(files holding ``needle`` raw or gunzipped, whether MARKER was seen, layer entries under app/.git)."""
    holding: list[str] = []
    marker = False
    git_entries: list[str] = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
            try:
                with tarfile.open(fileobj=io.BytesIO(data)) as layer:
                    git_entries += [n for n in layer.getnames() if n.lstrip("./").startswith("app/.git")]
            except tarfile.TarError:
                pass
        if needle in data:
            holding.append(str(path))
        marker = marker or MARKER in data
    return holding, marker, git_entries


@pytest.mark.integration
def test_the_token_stays_out_of_argv_clone_context_and_image(
        git_http_server: GitHttpServer, container_tools: ContainerTools, registry: LocalRegistry,
        tmp_path: Path) -> None:
    path = git_http_server.serve(private_repo(tmp_path / "private"), "private-app")
    url = git_http_server.url(path, GIT_USERNAME, GIT_TOKEN)
    before = len(git_http_server.requests)
    work = tmp_path / "work"
    with ProcessSampler(GIT_TOKEN.encode(), git_http_server.port) as sampler:
        tags = list_release_tags(url)
        source = checkout(url, "1.0.0", work / "src")
    assert [t.tag for t in tags] == ["v1.0.0"]
    assert sampler.saw_git > 0  # the sampling ran while git did
    assert sampler.leaks == []
    assert any(ok for _, ok in git_http_server.requests[before:])  # git really authenticated
    assert not (source.path / ".git").exists()
    assert (source.path / "hello.txt").read_bytes() == MARKER + b"\n"
    assert source.repo == git_http_server.url(path)
    for file in work.rglob("*"):  # the clone's config, refs, packs: whatever is left of it
        assert not file.is_file() or GIT_TOKEN.encode() not in file.read_bytes(), file
    local = build_index(container_tools, source, ("linux/amd64",), workdir=work / "build")
    assert local.labels["org.opencontainers.image.source"] == git_http_server.url(path)
    target = f"docker://{registry.repository('creds/private-app')}:1.0.0"
    container_tools.skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{local.oci_dir}", target)
    pulled = tmp_path / "pulled"
    container_tools.skopeo("copy", "--all", "--src-tls-verify=false", target, f"oci:{pulled}")
    holding, marker, git_entries = blobs_hold(pulled, GIT_TOKEN.encode())
    assert marker  # the layer was read: the context really was published
    assert holding == [] and git_entries == []
    holding, marker, _ = blobs_hold(registry.root / "data", GIT_TOKEN.encode())
    assert marker and holding == []


@pytest.mark.integration
def test_a_wrong_token_fails_in_one_line_without_it(git_http_server: GitHttpServer, tmp_path: Path) -> None:
    path = git_http_server.serve(private_repo(tmp_path / "private"), "private-wrong")
    wrong = "wrong-" + GIT_TOKEN
    with pytest.raises(AcciOpsError) as err:
        list_release_tags(git_http_server.url(path, GIT_USERNAME, wrong))
    assert str(err.value) == (f"cannot list the refs of {git_http_server.url(path)}: fatal: Authentication failed "
                              f"for '{git_http_server.url(path)}/'")
    with pytest.raises(AcciOpsError) as err:
        checkout(git_http_server.url(path, GIT_USERNAME, wrong), "main", tmp_path / "src")
    assert wrong not in str(err.value) and GIT_TOKEN not in str(err.value)


@pytest.mark.parametrize(("repo", "message"), [
    ("http://ci:tok-Secret-9@git.example.com/acci.git",
     "ACCI_SOURCE_REPO http://git.example.com/acci.git would send its credentials over plain http to "
     "git.example.com: use https (plain http with credentials is accepted for a loopback address only)"),
    ("ssh://ci:tok-Secret-9@git.example.com/acci.git",
     "ACCI_SOURCE_REPO ssh://git.example.com/acci.git carries a password in a ssh URL: git would put it in a "
     "command line; use an https URL, or keys for ssh (SSH_AUTH_SOCK / GIT_SSH_COMMAND)"),
    ("https://ci:tok-Secret-9%0Aurl=x@git.example.com/acci.git",
     "the credentials in ACCI_SOURCE_REPO https://git.example.com/acci.git contain a line break or NUL byte"),
])
def test_credentials_git_would_expose_are_refused_before_git_runs(repo: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        list_release_tags(repo)
    assert str(err.value) == message and "tok-Secret-9" not in message


@pytest.mark.parametrize(("repo", "shown"), [
    ("https://user:p@ss@git.example.com/acci.git", "https://git.example.com/acci.git"),
    ("https://ghp_Token@github.com/acci/acci.git", "https://github.com/acci/acci.git"),
    ("https://user:p@ss@git.example.com:8443", "https://git.example.com:8443"),
    ("https://git.example.com/acci/app@v1.git", "https://git.example.com/acci/app@v1.git"),
    ("git@github.com:acci/acci.git", "git@github.com:acci/acci.git"),
    ("/srv/git/acci@2.git", "/srv/git/acci@2.git"),
])
def test_public_url_strips_everything_up_to_the_last_at_of_the_authority(repo: str, shown: str) -> None:
    assert public_url(repo) == shown
