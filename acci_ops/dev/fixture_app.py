"""A git repository shaped like ACCI Framework, for image-build tests, benchmarks and ``./run dev``.

The real ACCI Framework image is a distroless image holding a Rust binary and precompiled WASM/JS
assets. This fixture has the same shape with parts that build in a fraction of a second and need
no compiler and no qemu: the "Rust binary" is a static busybox per architecture (amd64 from the
host's ``busybox-static``, arm64 downloaded once with ``apt-get download`` into a cache directory,
never changing the machine's dpkg architectures), the "WASM assets" are static files, and the
Dockerfile is multi-stage without ``RUN`` steps, choosing the binary by ``TARGETARCH``.

The server is ``busybox httpd`` started in exec form (a ``FROM scratch`` image has no shell):
``ENTRYPOINT ["/usr/local/bin/httpd", "-f", "-v", "-h", "/srv/www"]`` (busybox picks the applet
from the name it is started under, so the binary is installed as ``httpd``; no busybox or sh link) and
``CMD ["-p", "8080"]`` with ``EXPOSE 8080``: like the guide's app, every version listens on 8080
and nothing else, and reads no ``PORT`` variable (the smoke test probes the exposed port inside the
container's own network namespace, so nothing needs to move it; a command ``-p [IP:]PORT``, which
replaces CMD, still can). ``/health`` answers 200 ``ok``; ``/metrics`` is Prometheus text with
``acci_up 1`` and ``acci_build_info{version="..."} 1``.

Tags (``TAGS``): v1.0.0 and v1.1.0 good; v1.2.0 has no ``/health`` (404); v1.3.0's arm64 variant
carries the amd64 binary; v1.4.0 runs as root (no ``USER``). Branch ``broken-copy`` has a
Dockerfile whose COPY names a missing file (a failing build step). ``main`` is at v1.4.0.
Commit and tag dates are fixed, so the same fixture always has the same commit ids.

    python -m acci_ops.dev.fixture_app DEST     # create (or reuse) the repository at DEST
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

CONTAINER_PORT = 8080
# Versions and what is wrong with each (None: good).
TAGS: dict[str, str | None] = {
    "v1.0.0": None,
    "v1.1.0": None,
    "v1.2.0": "health fails: /health is missing (404)",
    "v1.3.0": "arm64 variant carries the amd64 binary",
    "v1.4.0": "runs as root (no USER)",
}
GOOD_TAGS = ("v1.0.0", "v1.1.0")
BROKEN_BRANCH = "broken-copy"
NONROOT_USER = "65532:65532"
# Where the server binary sits in the image (the file the ELF check names).
BINARY_PATH = "usr/local/bin/httpd"

_BASE_EPOCH = 1767225600  # 2026-01-01T00:00:00Z; each commit one day later
_WASM_MAGIC = b"\x00asm\x01\x00\x00\x00"


def default_cache_dir() -> Path:
    """Where the downloaded arm64 busybox is kept between runs (``ACCI_FIXTURE_CACHE`` overrides)."""
    return Path(os.environ.get("ACCI_FIXTURE_CACHE") or Path.home() / ".cache" / "acci_ops" / "fixture")


def run_tool(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a tool (git, mostly) and return its stdout; a failure is one line with its last output line."""
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or [""]
        raise RuntimeError(f"{' '.join(argv[:3])} failed (exit {proc.returncode}): {last[0]}")
    return proc.stdout


def amd64_busybox() -> Path:
    """The host's static busybox (package busybox-static), the amd64 "server binary"."""
    path = Path("/bin/busybox")
    if not path.exists() or b"ld-linux" in path.read_bytes()[:4096 * 4]:
        raise RuntimeError("a static /bin/busybox is missing: install it with `apt-get install -y busybox-static` "
                           "(./run test does this)")
    return path


def arm64_busybox(cache_dir: Path | None = None) -> Path:
    """A static aarch64 busybox, downloaded once with ``apt-get download busybox-static:arm64``.

    apt is given its own lists and cache directories and ``APT::Architectures=amd64,arm64`` on the
    command line, so the machine's dpkg architectures and apt state are not changed."""
    cache = cache_dir or default_cache_dir()
    target = cache / "busybox-arm64"
    if target.exists():
        return target
    apt = shutil.which("apt-get")
    if not apt or not shutil.which("dpkg-deb"):
        raise RuntimeError("apt-get and dpkg-deb are needed once to download busybox-static:arm64 for the fixture")
    state = cache / "apt"
    (state / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (state / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    opts = ["-q", "-o", "APT::Architectures=amd64,arm64", "-o", f"Dir::State::Lists={state / 'lists'}",
            "-o", f"Dir::Cache={state / 'cache'}"]
    if os.geteuid() == 0:
        opts += ["-o", "APT::Sandbox::User=root"]  # _apt cannot write into root's cache directory
    run_tool([apt, *opts, "update"])
    with tempfile.TemporaryDirectory() as tmp:
        run_tool([apt, *opts, "download", "busybox-static:arm64"], cwd=Path(tmp))
        debs = list(Path(tmp).glob("busybox-static_*_arm64.deb"))
        if not debs:
            raise RuntimeError("apt-get download busybox-static:arm64 produced no .deb")
        run_tool(["dpkg-deb", "-x", str(debs[0]), str(Path(tmp) / "x")])
        binary = Path(tmp) / "x" / "bin" / "busybox"
        header = binary.read_bytes()[:20]
        if header[:4] != b"\x7fELF" or int.from_bytes(header[18:20], "little") != 183:
            raise RuntimeError("the downloaded busybox-static:arm64 is not an aarch64 ELF binary")
        partial = target.with_suffix(".partial")
        shutil.copyfile(binary, partial)
        partial.chmod(0o755)
        partial.rename(target)
    return target


def dockerfile(*, user: str | None = NONROOT_USER, broken_copy: bool = False) -> str:
    """The fixture's multi-stage Dockerfile: no RUN, the binary chosen by TARGETARCH."""
    lines = [
        "# ACCI Framework (fixture): a static server binary per architecture plus precompiled WASM assets.",
        "FROM scratch AS assets",
        "COPY web/ /srv/www/",
        "",
        "FROM scratch",
        "ARG TARGETARCH",
        "COPY bin/acci-server-${TARGETARCH} /usr/local/bin/httpd",
    ]
    if broken_copy:
        lines.append("COPY config/missing.toml /etc/acci/config.toml")
    lines.append("COPY --from=assets /srv/www /srv/www")
    if user:
        lines.append(f"USER {user}")
    lines += [
        f"EXPOSE {CONTAINER_PORT}",
        '# busybox httpd: -f foreground, -h document root; CMD is its "-p [IP:]PORT" (replace it to pick a port).',
        'ENTRYPOINT ["/usr/local/bin/httpd", "-f", "-v", "-h", "/srv/www"]',
        f'CMD ["-p", "{CONTAINER_PORT}"]',
        "",
    ]
    return "\n".join(lines)


def metrics_text(version: str) -> str:
    return ("# HELP acci_up Whether the ACCI Framework server is up.\n"
            "# TYPE acci_up gauge\n"
            "acci_up 1\n"
            "# HELP acci_build_info Build information.\n"
            "# TYPE acci_build_info gauge\n"
            f'acci_build_info{{version="{version}"}} 1\n')


def _write_tree(root: Path, version: str, problem: str | None, cache_dir: Path | None, *,
                broken_copy: bool = False) -> None:
    """Write the working tree for one version (the whole tree, replacing the previous one)."""
    for child in root.iterdir():
        if child.name != ".git":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    (root / "bin").mkdir()
    amd64 = amd64_busybox()
    arm64 = amd64 if problem and "arm64" in problem else arm64_busybox(cache_dir)
    for arch, source in (("amd64", amd64), ("arm64", arm64)):
        shutil.copyfile(source, root / "bin" / f"acci-server-{arch}")
        (root / "bin" / f"acci-server-{arch}").chmod(0o755)
    web = root / "web"
    (web / "pkg").mkdir(parents=True)
    (web / "index.html").write_text(f"<!doctype html><title>ACCI Framework {version}</title>"
                                    '<script type="module" src="/pkg/acci_framework.js"></script>\n')
    (web / "pkg" / "acci_framework_bg.wasm").write_bytes(_WASM_MAGIC + version.encode())
    (web / "pkg" / "acci_framework.js").write_text(f"export const version = {version!r};\n")
    (web / "version").write_text(version + "\n")
    (web / "metrics").write_text(metrics_text(version))
    if not (problem and "health" in problem):
        (web / "health").write_text("ok\n")
    (root / "Cargo.toml").write_text(f'[package]\nname = "acci-framework"\nversion = "{version}"\nedition = "2021"\n')
    (root / "src").mkdir()
    (root / "src" / "main.rs").write_text('fn main() { println!("ACCI Framework"); }\n')
    user = None if problem and "root" in problem else NONROOT_USER
    (root / "Dockerfile").write_text(dockerfile(user=user, broken_copy=broken_copy))
    (root / ".dockerignore").write_text("target/\n.git/\n")


@dataclass(frozen=True)
class FixtureRepo:
    """The fixture repository: its path, and the commit of each tag and branch."""

    path: Path
    commits: dict[str, str]

    @property
    def url(self) -> str:
        return str(self.path)


def git_env(epoch: int) -> dict[str, str]:
    """git's environment for a reproducible fixture commit at ``epoch``: fixed author, no system config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    date = f"{epoch} +0000"
    env.update(GIT_AUTHOR_NAME="ACCI Fixture", GIT_AUTHOR_EMAIL="fixture@acci.invalid",
               GIT_COMMITTER_NAME="ACCI Fixture", GIT_COMMITTER_EMAIL="fixture@acci.invalid",
               GIT_AUTHOR_DATE=date, GIT_COMMITTER_DATE=date, GIT_CONFIG_NOSYSTEM="1", HOME=str(Path.home()))
    return env


def create_fixture_repo(dest: Path, cache_dir: Path | None = None) -> FixtureRepo:
    """Create the fixture repository at ``dest`` (reused when already complete); return its commits.

    Every tag is annotated and points at its own commit on ``main`` (so ``git ls-remote`` must peel
    them); the broken branch forks from v1.0.0."""
    dest = Path(dest)
    marker = dest / ".git" / "acci-fixture-complete"
    if marker.exists():
        return FixtureRepo(dest, git_refs(dest))
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    git = ["git", "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"]
    run_tool([*git, "init", "-q"], cwd=dest, env=git_env(_BASE_EPOCH))
    for number, (tag, problem) in enumerate(TAGS.items()):
        env = git_env(_BASE_EPOCH + number * 86400)
        _write_tree(dest, tag[1:], problem, cache_dir)
        run_tool([*git, "add", "-A"], cwd=dest, env=env)
        run_tool([*git, "commit", "-q", "-m", f"ACCI Framework {tag}" + (f" ({problem})" if problem else "")],
             cwd=dest, env=env)
        run_tool([*git, "tag", "-a", tag, "-m", f"release {tag}"], cwd=dest, env=env)
    env = git_env(_BASE_EPOCH + len(TAGS) * 86400)
    run_tool([*git, "checkout", "-q", "-b", BROKEN_BRANCH, "v1.0.0"], cwd=dest, env=env)
    _write_tree(dest, "1.0.1-broken", None, cache_dir, broken_copy=True)
    run_tool([*git, "add", "-A"], cwd=dest, env=env)
    run_tool([*git, "commit", "-q", "-m", "Dockerfile COPYs a file that does not exist"], cwd=dest, env=env)
    run_tool([*git, "checkout", "-q", "main"], cwd=dest, env=env)
    marker.write_text("ok\n")
    return FixtureRepo(dest, git_refs(dest))


def git_refs(repo: Path) -> dict[str, str]:
    """Tag and branch names -> commit ids (tags peeled)."""
    out = run_tool(["git", "for-each-ref", "--format=%(refname:short) %(objectname) %(*objectname)",
                "refs/tags", "refs/heads"], cwd=repo)
    refs: dict[str, str] = {}
    for line in out.splitlines():
        parts = line.split()
        refs[parts[0]] = parts[2] if len(parts) > 2 else parts[1]
    return refs


def add_tag(repo: Path, tag: str, *, base: str = "v1.1.0") -> str:
    """Add a new good release tag (content of ``base`` with a new version) and return its commit:
    what a sensor test needs to see a "new release"."""
    env = git_env(_BASE_EPOCH + 100 * 86400)
    git = ["git", "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"]
    run_tool([*git, "checkout", "-q", "--detach", base], cwd=repo, env=env)
    _write_tree(Path(repo), tag.lstrip("v"), None, None)
    run_tool([*git, "add", "-A"], cwd=repo, env=env)
    run_tool([*git, "commit", "-q", "-m", f"ACCI Framework {tag}"], cwd=repo, env=env)
    run_tool([*git, "tag", "-a", tag, "-m", f"release {tag}"], cwd=repo, env=env)
    commit = run_tool(["git", "rev-parse", "HEAD"], cwd=repo).strip()
    run_tool([*git, "checkout", "-q", "main"], cwd=repo, env=env)
    return commit


def main() -> None:
    parser = argparse.ArgumentParser(description="Create the ACCI Framework fixture git repository.")
    parser.add_argument("dest", type=Path)
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the arm64 busybox is cached")
    parser.add_argument("--good-tag", default=None,
                        help="also add this good release tag on top (once), e.g. v1.5.0 for ./run dev, whose "
                             "sensor builds the newest tag first")
    args = parser.parse_args()
    repo = create_fixture_repo(args.dest, args.cache_dir)
    if args.good_tag and args.good_tag not in repo.commits:
        repo.commits[args.good_tag] = add_tag(repo.path, args.good_tag)
    for name, commit in sorted(repo.commits.items()):
        print(f"{name} {commit}")


if __name__ == "__main__":
    main()
