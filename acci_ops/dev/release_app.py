"""A git repository shaped like ACCI Framework for RELEASE tests: an app whose metrics move with traffic.

``fixture_app`` serves a static ``/metrics`` (busybox httpd can serve nothing else), so a release
analysis of it sees no traffic, whatever is sent. This repository's server is Debian's ``caddy``
(``/usr/bin/caddy``, a real HTTP server with live Prometheus histograms per status code), in an image
``FROM scratch`` without ``RUN`` steps: the binary, the libraries ``ldd`` names (glibc, libzstd) and the
loader are committed as files and copied in, as distroless ``cc`` images carry them. It runs as a
non-root user, exposes 8080, and gets its OCI labels from the image pipeline, so it passes the standard
gate (ELF architecture check, policy with hadolint, smoke test). amd64 only: the binary and libraries
are this machine's (the ELF check rejects anything else), so build it with ``linux/amd64`` alone.

Two ports, so that scrapes are never counted as the app's traffic:

- 8080, the app: ``/`` (every version's page), ``/health``, ``/version`` (the version, one line),
  and ``/metrics``: the app's own metrics, ``acci_up 1`` and ``acci_build_info{version="..."} 1``. Only
  this server is instrumented (the global ``servers :8080 { metrics }``): every request to it, by
  status code, is in caddy's ``caddy_http_*`` series.
- 9180, caddy's live Prometheus metrics (``metrics /metrics``), on an uninstrumented server: what a
  release analysis scrapes, as many times as it likes, without moving the counts it reads.

Why 8080 still answers ``/metrics``: the image pipeline's smoke test probes the image's one exposed port
inside a namespace of its own and requires ``/metrics`` there to be Prometheus text holding ``acci_up``
(``SmokeConfig.required_metrics``), as the real app serves its metrics on its own port. That endpoint is
honest about what it reports (the app is up, and which version it is), which never changes while the
process runs; the traffic series are caddy's, which need a port of their own to stay uncounted. A request
to 8080's ``/metrics`` is app traffic like any other, so release tests read 9180 only.

Tags (``TAGS``), each a commit on ``main``:

- v2.0.0 and v2.1.0: good.
- v2.2.0: ``/health`` answers 503 wherever its ``DATABASE_URL`` names a TCP host
  (``postgres://user@db:5432/acci``, as a Compose or Kubernetes deployment gives it) and 200 with a
  unix-socket URL or none. It stands for a release whose TCP database connections are broken, which the
  image pipeline's smoke test cannot see: its private PostgreSQL is reached through a socket
  (``postgresql://acci:...@/acci?host=/run/acci-smoke/pg``). So the gate lets it through and only the
  deploy's health check stops it, the case a rollback exists for. (A ``/health`` that always failed would
  be refused by the smoke test and never reach a registry.)
- v2.3.0: ``/health`` answers 200 but every other app request answers 500 (its 5xx ratio grows with
  the load).
- v2.4.0: caddy without HTTP metrics (9180's ``/metrics`` has go_* and process_* only, no
  ``caddy_http_*``): an analysis must be inconclusive.
- v2.5.0: good, but labelled ``io.acci.migrations=breaking``.

Commit and tag dates are fixed, so the same machine always gives the same commit ids (the committed
binary is the host's caddy: another caddy build gives other ids).

    python -m acci_ops.dev.release_app DEST [--good-tag v2.6.0]   # create (or reuse) the repository at DEST
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from acci_ops.dev.fixture_app import FixtureRepo, git_env, git_refs, run_tool

APP_PORT = 8080
METRICS_PORT = 9180
CADDY = Path("/usr/bin/caddy")
NONROOT_USER = "65532:65532"
MIGRATIONS_LABEL = "io.acci.migrations"
IMAGE_NAME = "acci/release-app"
PLATFORMS = ("linux/amd64",)


@dataclass(frozen=True)
class Version:
    """What one tag serves: whether ``/health`` fails with a TCP database URL, the app's status, whether
    caddy counts requests, and whether the image declares breaking migrations. ``problem``: None for a
    good release."""

    tcp_database_broken: bool = False
    app_status: int = 200
    http_metrics: bool = True
    breaking_migrations: bool = False
    problem: str | None = None


TAGS: dict[str, Version] = {
    "v2.0.0": Version(),
    "v2.1.0": Version(),
    "v2.2.0": Version(tcp_database_broken=True,
                      problem="health fails where the database is reached over TCP: /health answers 503"),
    "v2.3.0": Version(app_status=500, problem="every app request answers 500 (/health answers 200)"),
    "v2.4.0": Version(http_metrics=False, problem="no HTTP metrics: caddy's /metrics has no caddy_http_* series"),
    "v2.5.0": Version(breaking_migrations=True),
}
GOOD_TAGS = ("v2.0.0", "v2.1.0", "v2.5.0")

_BASE_EPOCH = 1769904000  # 2026-02-01T00:00:00Z; each commit one day later
_LDD_PATH = re.compile(r"=>\s*(/\S+)")
_LDD_LOADER = re.compile(r"^\s*(/\S+)\s+\(0x")
_X86_64 = 62


def caddy_files(binary: Path = CADDY) -> dict[str, Path]:
    """Image path -> host file: the caddy binary, every library ``ldd`` resolves, and the loader.

    Raises RuntimeError (one line) when caddy is missing, is not an x86-64 ELF (this fixture is amd64
    only) or names a library ``ldd`` cannot find."""
    if not binary.is_file():
        raise RuntimeError(f"{binary} is missing: install it with `apt-get install -y caddy` (./run test does this)")
    header = binary.read_bytes()[:20]
    if header[:4] != b"\x7fELF" or int.from_bytes(header[18:20], "little") != _X86_64:
        raise RuntimeError(f"{binary} is not an x86-64 ELF binary: the release fixture app is amd64 only")
    ldd = shutil.which("ldd")
    if not ldd:
        raise RuntimeError("ldd is missing: install it with `apt-get install -y libc-bin`")
    files = {"usr/bin/caddy": binary}
    for line in run_tool([ldd, str(binary)]).splitlines():
        if "not found" in line:
            raise RuntimeError(f"ldd {binary}: {line.strip()}")
        match = _LDD_PATH.search(line) or _LDD_LOADER.match(line)
        if match:  # linux-vdso has no file; "name => /path" a library; "/lib64/ld-linux... (0x" the loader
            files[match.group(1).lstrip("/")] = Path(os.path.realpath(match.group(1)))
    if not any("ld-linux" in name for name in files):
        raise RuntimeError(f"ldd {binary} named no loader (ld-linux): is it statically linked?")
    return files


def metrics_text(version: str) -> str:
    """The app port's own /metrics (what the smoke test requires: acci_up)."""
    return ("# HELP acci_up Whether the ACCI Framework server is up.\n"
            "# TYPE acci_up gauge\n"
            "acci_up 1\n"
            "# HELP acci_build_info Build information.\n"
            "# TYPE acci_build_info gauge\n"
            f'acci_build_info{{version="{version}"}} 1\n')


def caddyfile(version: str, spec: Version) -> str:
    """One version's Caddyfile: the app on APP_PORT (instrumented unless ``http_metrics`` is off), caddy's
    metrics on METRICS_PORT (never instrumented)."""
    metrics_option = f"\tservers :{APP_PORT} {{\n\t\tmetrics\n\t}}\n" if spec.http_metrics else ""
    app_body = f"ACCI Framework {version}" if spec.app_status == 200 else "internal error"
    own_metrics = metrics_text(version).replace('"', '\\"')
    health = "\thandle /health {\n"
    if spec.tcp_database_broken:  # a TCP host after the user info: "postgres://acci@db:5432/acci"
        health = ('\t@tcp_database expression `{env.DATABASE_URL}.matches("^[a-z]+://[^/?]*@[^/?:]+")`\n' + health
                  + '\t\trespond @tcp_database "database unreachable" 503\n')
    health += '\t\trespond "ok" 200\n\t}\n'
    return (
        f"# ACCI Framework {version} (release fixture){': ' + spec.problem if spec.problem else ''}\n"
        f"{{\n\tadmin off\n{metrics_option}}}\n"
        f":{APP_PORT} {{\n"
        f"{health}"
        f"\thandle /version {{\n\t\trespond \"{version}\n\" 200\n\t}}\n"
        "\thandle /metrics {\n\t\theader Content-Type \"text/plain; version=0.0.4; charset=utf-8\"\n"
        f"\t\trespond \"{own_metrics}\" 200\n\t}}\n"
        f"\trespond \"{app_body}\" {spec.app_status}\n}}\n"
        f":{METRICS_PORT} {{\n\tmetrics /metrics\n}}\n")


def dockerfile(spec: Version) -> str:
    """FROM scratch, no RUN: the binary and its libraries in one layer (the same in every version, so the
    registry stores it once), the Caddyfile in another."""
    lines = [
        "# ACCI Framework (release fixture): Debian's caddy with the libraries it links, as distroless cc images.",
        "FROM scratch",
        "COPY rootfs/ /",
        "COPY config/Caddyfile /etc/caddy/Caddyfile",
        "# caddy writes its autosaved config and instance id there: /tmp is the only writable place.",
        "ENV HOME=/tmp XDG_CONFIG_HOME=/tmp/caddy-config XDG_DATA_HOME=/tmp/caddy-data",
        f"USER {NONROOT_USER}",
        f"# The app; caddy's live metrics are on {METRICS_PORT} (not exposed: the smoke test probes the app's port).",
        f"EXPOSE {APP_PORT}",
    ]
    if spec.breaking_migrations:
        lines.append(f'LABEL {MIGRATIONS_LABEL}="breaking"')
    lines += ['ENTRYPOINT ["/usr/bin/caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]', ""]
    return "\n".join(lines)


def _write_tree(root: Path, version: str, spec: Version, files: dict[str, Path]) -> None:
    """Write the working tree for one version (the whole tree, replacing the previous one)."""
    for child in root.iterdir():
        if child.name != ".git":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    for name, source in files.items():
        target = root / "rootfs" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        target.chmod(0o755)  # the loader is exec'd by the kernel; git keeps 0755 or 0644 only
    (root / "config").mkdir()
    (root / "config" / "Caddyfile").write_text(caddyfile(version, spec))
    (root / "Cargo.toml").write_text(f'[package]\nname = "acci-framework"\nversion = "{version}"\nedition = "2021"\n')
    (root / "src").mkdir()
    (root / "src" / "main.rs").write_text('fn main() { println!("ACCI Framework"); }\n')
    (root / "Dockerfile").write_text(dockerfile(spec))
    (root / ".dockerignore").write_text("target/\n.git/\n")


# The release fixture repository: its path, and the commit of each tag (the same shape as the image fixture's).
ReleaseRepo = FixtureRepo


def create_release_repo(dest: Path) -> ReleaseRepo:
    """Create the release fixture repository at ``dest`` (reused when already complete); return its
    commits. Every tag is annotated and points at its own commit on ``main``."""
    dest = Path(dest)
    marker = dest / ".git" / "acci-release-fixture-complete"
    if marker.exists():
        return ReleaseRepo(dest, git_refs(dest))
    files = caddy_files()
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    git = ["git", "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false",
           "-c", "core.fileMode=true"]
    run_tool([*git, "init", "-q"], cwd=dest, env=git_env(_BASE_EPOCH))
    for number, (tag, spec) in enumerate(TAGS.items()):
        env = git_env(_BASE_EPOCH + number * 86400)
        _write_tree(dest, tag[1:], spec, files)
        run_tool([*git, "add", "-A"], cwd=dest, env=env)
        run_tool([*git, "commit", "-q", "-m", f"ACCI Framework {tag}" + (f" ({spec.problem})" if spec.problem else "")],
             cwd=dest, env=env)
        run_tool([*git, "tag", "-a", tag, "-m", f"release {tag}"], cwd=dest, env=env)
    marker.write_text("ok\n")
    return ReleaseRepo(dest, git_refs(dest))


def add_good_tag(repo: ReleaseRepo, tag: str) -> str:
    """Add a good release ``tag`` on top of ``main`` (once) and return its commit: ``./run dev`` builds the
    newest tag first and must start green, and the newest fixture tag (v2.5.0) declares breaking migrations."""
    if tag in repo.commits:
        return repo.commits[tag]
    if not re.fullmatch(r"v\d+\.\d+\.\d+", tag):
        raise ValueError(f"good tag {tag!r} must look like v2.6.0")
    env = git_env(_BASE_EPOCH + len(TAGS) * 86400)
    git = ["git", "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false", "-c", "core.fileMode=true"]
    _write_tree(repo.path, tag[1:], Version(), caddy_files())
    run_tool([*git, "add", "-A"], cwd=repo.path, env=env)
    run_tool([*git, "commit", "-q", "-m", f"ACCI Framework {tag}"], cwd=repo.path, env=env)
    run_tool([*git, "tag", "-a", tag, "-m", f"release {tag}"], cwd=repo.path, env=env)
    repo.commits[tag] = run_tool(["git", "rev-parse", "HEAD"], cwd=repo.path).strip()
    return repo.commits[tag]


def main() -> None:
    parser = argparse.ArgumentParser(description="Create the ACCI Framework release fixture git repository.")
    parser.add_argument("dest", type=Path)
    parser.add_argument("--good-tag", default=None,
                        help="also add this good release tag on top (once), e.g. v2.6.0 for ./run dev, whose "
                             "sensor builds the newest tag first")
    args = parser.parse_args()
    repo = create_release_repo(args.dest)
    if args.good_tag:
        add_good_tag(repo, args.good_tag)
    for name, commit in sorted(repo.commits.items()):
        print(f"{name} {commit}")


if __name__ == "__main__":
    main()
