"""Build one multi-platform image (an OCI index) from a clean checkout with buildah.

``buildah build --platform A,B --manifest LIST --timestamp <commit time>`` builds every platform
with file and config times taken from the commit, so the same commit gives the same digests;
``buildah manifest push --all --format oci LIST oci:DIR`` writes the result to an OCI layout
directory: the staging copy every check reads and the push copies from, byte for byte. Each build
uses storage of its own under its work directory (removed afterwards), so concurrent builds never
share a lock or a half-built image, and nothing accumulates.

RUN steps run under runc (``--isolation oci``) with ``--network none`` unless
``ACCI_IMAGE_BUILD_NETWORK`` names a network: a Dockerfile is code from whoever can push a tag,
and a RUN step on the host's network (chroot isolation knows no other, and buildah refuses
``--network none`` with it) reaches every service on 127.0.0.1, a cloud metadata endpoint included.

Registry TLS: ``ACCI_REGISTRY_TLS_VERIFY=false`` is for the target registry only. It becomes an
``insecure = true`` entry for that one host in the build's own registries.conf (a base image may
live there); every other registry a ``FROM`` names is reached with TLS verified.

Base images: after the build, and before that storage is removed, the images buildah pulled for
each external ``FROM`` (``dockerfile.from_images``) are looked up in it (``buildah images`` /
``buildah inspect``), so the digests recorded are the ones the build used, not what a tag points
at later.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from acci_ops.lib.core.commands import CommandFailed, CommandTimeout, LineSink
from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.images.dockerfile import from_images
from acci_ops.lib.images.elf import SUPPORTED_ARCHITECTURES
from acci_ops.lib.images.oci import IndexInfo, ManifestInfo, normalize_index, read_index
from acci_ops.lib.images.source import Checkout, public_url
from acci_ops.lib.images.tools import ContainerTools

SUPPORTED_PLATFORMS = ("linux/amd64", "linux/arm64", "linux/arm/v7", "linux/ppc64le", "linux/s390x", "linux/riscv64")
LABEL_PREFIX = "org.opencontainers.image."
MIN_FREE_MB = 512
NO_NETWORK = "none"
BUILD_ARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Where podman keeps the networks an operator creates (CNI, netavark): a named build network is
# copied from there into the build's own network directory.
NETWORK_CONFIG_DIRS = (Path("/etc/cni/net.d"), Path("/etc/containers/networks"))
DEFAULT_NETWORK = "podman"  # podman's built-in bridge: needs no file
_NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_REGISTRY_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?")


class BuildFailed(AcciOpsError):
    """buildah could not build the image (a failing step); the message names the step."""


@dataclass(frozen=True)
class LocalIndex:
    """A built multi-platform image in an OCI layout directory (not pushed anywhere yet)."""

    oci_dir: Path
    index_digest: str
    platforms: dict[str, ManifestInfo]  # what ``read_index`` found for each platform
    labels: dict[str, str] = field(default_factory=dict)
    build_seconds: float = 0.0
    base_images: tuple[str, ...] = ()
    # What each FROM image resolved to in the build (``resolve_base_digests``): name -> digest (an
    # index digest for a multi-arch base), or ``name#platform`` -> digest when it must be recorded
    # per platform; None = unknown (logged). ``base_platform_digests``: name -> {platform: the
    # manifest digest of the variant that platform's build used}.
    base_image_digests: dict[str, str | None] = field(default_factory=dict)
    base_platform_digests: dict[str, dict[str, str]] = field(default_factory=dict)

    def info(self) -> IndexInfo:
        return read_index(self.oci_dir)


def parse_platforms(value: str | Sequence[str]) -> list[str]:
    """``linux/amd64,linux/arm64`` -> a list, each checked; ConfigError for an unsupported one."""
    items = [p.strip() for p in (value.split(",") if isinstance(value, str) else value) if p.strip()]
    if not items:
        raise ConfigError("ACCI_IMAGE_PLATFORMS is empty: name at least one platform, e.g. linux/amd64")
    for item in items:
        parts = item.split("/")
        if item not in SUPPORTED_PLATFORMS or parts[1] not in SUPPORTED_ARCHITECTURES:
            raise ConfigError(f"unsupported platform '{item}' in ACCI_IMAGE_PLATFORMS; supported: "
                              f"{', '.join(SUPPORTED_PLATFORMS)}")
    if len(set(items)) != len(items):
        raise ConfigError(f"ACCI_IMAGE_PLATFORMS names a platform twice: {','.join(items)}")
    return items


def check_build_network(value: str) -> str:
    """The network RUN steps get: ``none`` (the default), ``host`` or a podman network's name;
    ConfigError in one line for anything else (``ns:/path``, ``container:x``, a typo with spaces)."""
    value = value.strip()
    if value in (NO_NETWORK, "host") or _NETWORK_NAME.fullmatch(value):
        return value
    raise ConfigError(f"ACCI_IMAGE_BUILD_NETWORK {value[:64]!r} is not a network: use none (the default: RUN "
                      "steps get no network), host, or the name of a podman network")


def _network_definition(name: str, dirs: Sequence[Path]) -> Path | None:
    """The operator's definition of podman network ``name`` (a CNI conflist or a netavark file)."""
    for directory in dirs:
        for path in sorted(directory.glob("*.conflist")) + sorted(directory.glob("*.json")):
            try:
                if json.loads(path.read_text()).get("name") == name:
                    return path
            except (OSError, ValueError, AttributeError):
                continue
    return None


def _network_definition_for(network: str, dirs: Sequence[Path]) -> Path | None:
    """The file to copy for a named build network (None for none/host/podman's default), or
    ConfigError when podman does not define it: checked before anything is built."""
    network = check_build_network(network)
    if network in (NO_NETWORK, "host", DEFAULT_NETWORK):
        return None
    found = _network_definition(network, dirs)
    if found is None:
        raise ConfigError(f"ACCI_IMAGE_BUILD_NETWORK names podman network '{network}', which is not defined "
                          f"here (no definition named so in {', '.join(str(d) for d in dirs)})")
    return found


def _check_registry_host(registry_host: str) -> None:
    if not _REGISTRY_HOST.fullmatch(registry_host):
        raise ConfigError(f"registry host {registry_host[:64]!r} is not host[:port]")


def configure_build(storage: ContainerTools, network_file: Path | None, insecure_registry: str | None) -> None:
    """The build's own config: a named network's definition in its network directory (its
    containers.conf names that one), and plain http / unverified TLS for the target registry alone."""
    if network_file:
        target = storage.conf_dir / "networks"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(network_file, target / network_file.name)
    if insecure_registry:
        _check_registry_host(insecure_registry)
        with storage.registries_conf.open("a") as conf:
            conf.write(f"\n[[registry]]\nlocation = {json.dumps(insecure_registry)}\ninsecure = true\n")


def _inside(root: Path, relative: str, what: str, checkout: Checkout) -> Path:
    path = (root / relative).resolve()
    if path != root.resolve() and root.resolve() not in path.parents:
        raise ConfigError(f"{what} '{relative}' points outside the source checkout")
    return path


def oci_labels(checkout: Checkout, title: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The OCI labels every image carries: where it came from, which commit, which version, when."""
    created = datetime.fromtimestamp(checkout.commit_epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    labels = {
        LABEL_PREFIX + "source": public_url(checkout.repo),
        LABEL_PREFIX + "revision": checkout.commit,
        LABEL_PREFIX + "version": checkout.version or f"sha-{checkout.short}",
        LABEL_PREFIX + "created": created,
        LABEL_PREFIX + "title": title,
    }
    labels.update(extra or {})
    return labels


def normalize_reference(name: str) -> str:
    """An image reference as containers-storage names it: ``debian:12`` ->
    ``docker.io/library/debian:12``, ``host:5000/x`` -> ``host:5000/x:latest``; digests kept."""
    path, _, digest = name.partition("@")
    first, _, rest = path.partition("/")
    if not rest or ("." not in first and ":" not in first and first != "localhost"):
        path = "docker.io/" + (path if rest else f"library/{path}")
    if not digest and ":" not in path.rsplit("/", 1)[-1]:
        path += ":latest"
    return f"{path}@{digest}" if digest else path


@dataclass(frozen=True)
class StoredImage:
    """One image in a build's containers-storage. ``names``: its current and earlier names (the
    pull of a multi-arch base for a second platform takes the tag over from the first);
    ``top_digest``: what was pulled (the index for a multi-arch base); ``manifest_digest``: this
    image's own (one-platform) manifest; ``platform``: ``os/arch[/variant]``."""

    image_id: str
    names: frozenset[str]
    top_digest: str
    manifest_digest: str
    platform: str


def _buildah_output(storage: ContainerTools, *args: str, timeout: float = 120) -> str:
    """A buildah command's standard output (for JSON/template output), one-line error on failure;
    run like every tool (own process group, killed on timeout or interrupt)."""
    try:
        result = storage.buildah(*args, timeout=timeout, check=False, capture_stdout=True)
    except CommandTimeout:
        raise AcciOpsError(f"buildah {args[0]} did not finish within {timeout:.0f} s") from None
    if result.returncode != 0:
        raise AcciOpsError(f"buildah {args[0]} failed (exit code {result.returncode}): {result.last_line}")
    return result.stdout.decode(errors="replace")


def stored_images(storage: ContainerTools, wanted: Sequence[str]) -> list[StoredImage]:
    """The images in ``storage`` carrying (now or earlier) one of the ``wanted`` normalized names."""
    rows = _buildah_output(storage, "images", "--all", "--history", "--no-trunc", "--format",
                           "{{.ID}}|{{.Name}}|{{.Tag}}|{{.Digest}}|{{.History}}")
    names: dict[str, set[str]] = {}
    tops: dict[str, str] = {}
    for row in rows.splitlines():
        parts = row.split("|")
        if len(parts) != 5:
            continue
        image_id, name, tag, digest, history = (p.strip() for p in parts)
        here = names.setdefault(image_id, set())
        if name != "<none>" and tag != "<none>":
            here.add(f"{name}:{tag}")
        if history != "<none>":
            here.update(h.strip() for h in history.split(",") if h.strip())
        tops[image_id] = digest
    out: list[StoredImage] = []
    for image_id, image_names in names.items():
        if not image_names & set(wanted):
            continue
        about = json.loads(_buildah_output(storage, "inspect", "--type", "image", image_id))
        config = about.get("OCIv1") or {}
        platform = f"{config.get('os', '?')}/{config.get('architecture', '?')}"
        if config.get("variant"):
            platform += f"/{config['variant']}"
        out.append(StoredImage(image_id, frozenset(image_names), tops[image_id], about.get("FromImageDigest", ""),
                               platform))
    return out


def _same_platform(image_platform: str, target: str) -> bool:
    """``linux/arm64/v8`` (as pulled) serves the target ``linux/arm64``."""
    have, want = image_platform.split("/"), target.split("/")
    return have[:2] == want[:2] and (len(want) < 3 or have[2:3] == want[2:3])


def resolve_base_digests(bases: Sequence[tuple[str, bool]], platforms: Sequence[str], images: Sequence[StoredImage],
                         log: LineSink | None = None) -> tuple[dict[str, str | None], dict[str, dict[str, str]]]:
    """``(digests, per-platform digests)`` of the FROM images ``(name, has --platform flag)`` from
    the build's stored images. A base is recorded by its index digest when every platform's pull
    came from that one index; otherwise per platform as ``name#platform`` (the tag moved between
    two pulls, or another name shares the image so its index is not attributable); a base not
    found is recorded as None. Each case that is not the plain one is logged in one line."""
    say = log or (lambda _line: None)
    digests: dict[str, str | None] = {}
    per_platform: dict[str, dict[str, str]] = {}
    for name, flagged in bases:
        ref = normalize_reference(name)
        matched = [img for img in images if ref in img.names and img.manifest_digest]
        used = {img.platform: img for img in sorted(matched, key=lambda i: i.platform)}
        per_platform[name] = {p: img.manifest_digest for p, img in used.items()}
        missing = [] if flagged else [t for t in platforms if not any(_same_platform(p, t) for p in used)]
        if "@" in ref:  # pinned by digest in the Dockerfile: that is what buildah fetched
            digests[name] = ref.partition("@")[2]
            if missing:
                say(f"base image {name}: pinned digest recorded; no image for {', '.join(missing)} found in the "
                    f"build's storage")
            continue
        if not used:
            digests[name] = None
            say(f"base image {name}: digest unknown: no image named {ref} in the build's storage")
            continue
        tops = {img.top_digest for img in matched}
        shared = {n for img in matched for n in img.names
                  if n != ref and not n.endswith("-tmp:latest") and not n.endswith("@" + img.top_digest)}
        if len(tops) == 1 and not shared and not missing:
            digests[name] = tops.pop()
            continue
        reason = ("it resolved to different digests per platform" if len(tops) > 1 else
                  f"its image is shared with {', '.join(sorted(shared))}" if shared else
                  f"no image for {', '.join(missing)} in the build's storage")
        say(f"base image {name}: recorded per platform ({reason})")
        for platform, img in used.items():
            digests[f"{name}#{platform}"] = img.manifest_digest
        for target in missing:
            digests[f"{name}#{target}"] = None
    return digests, per_platform


def base_image_refs(digests: Mapping[str, str | None]) -> tuple[str, ...]:
    """``name@sha256:...`` per base (``name@sha256:... (linux/arm64)`` when per platform,
    ``name (digest unknown)`` when unresolved): the metadata form of ``base_image_digests``."""
    out: list[str] = []
    for key, digest in digests.items():
        name, _, platform = key.partition("#")
        suffix = f" ({platform})" if platform else ""
        out.append(f"{name.partition('@')[0]}@{digest}{suffix}" if digest else f"{name} (digest unknown){suffix}")
    return tuple(out)


def _record_base_digests(storage: ContainerTools, bases: Sequence[tuple[str, bool]], platforms: Sequence[str],
                         log: LineSink | None) -> tuple[dict[str, str | None], dict[str, dict[str, str]]]:
    """``resolve_base_digests`` against the build's storage; every base unknown (logged) when the
    storage cannot be read: a successful build is not failed over its provenance detail."""
    if not bases:
        return {}, {}
    try:
        images = stored_images(storage, [normalize_reference(name) for name, _ in bases])
    except (AcciOpsError, ValueError) as exc:
        if log:
            log(f"base image digests unknown: reading the build's storage failed: {exc}")
        return {name: None for name, _ in bases}, {}
    return resolve_base_digests(bases, platforms, images, log)


def _failed_step(lines: Sequence[str], error: CommandFailed) -> str:
    """One line: the failing step and the tool's last error line."""
    step = next((line for line in reversed(lines) if re.search(r"\bSTEP \d+(/\d+)?:", line)), "")
    last = error.result.last_line
    match = re.search(r'building at STEP "([^"]+)"', last)
    step_text = match.group(1) if match else re.sub(r"^.*?STEP \d+(/\d+)?:\s*", "", step)
    reason = re.sub(r'^.*?building at STEP "[^"]+":\s*', "", last)
    reason = re.sub(r'^(level=\w+ msg=|Error:\s*)', "", reason).strip().strip('"')
    return f"build step '{step_text}' failed: {reason}" if step_text else f"buildah build failed: {reason}"


def check_free_space(directory: Path, min_free_mb: int = MIN_FREE_MB) -> None:
    """Fail fast, in one line, when the build's disk is (nearly) full."""
    free_mb = shutil.disk_usage(directory).free // (1024 * 1024)
    if free_mb < min_free_mb:
        raise AcciOpsError(f"not enough disk space for an image build under {directory}: {free_mb} MB free, "
                           f"need at least {min_free_mb} MB (ACCI_IMAGE_STORAGE_DIR)")


def build_argv(storage: ContainerTools, checkout: Checkout, platforms: Sequence[str], *, list_name: str,
               dockerfile: Path, context: Path, labels: Mapping[str, str], network: str = NO_NETWORK,
               authfile: Path | None = None, build_args: Mapping[str, str] | None = None) -> list[str]:
    """``buildah build``'s arguments (``build_args``: ``--build-arg`` values, never secrets: they are
    recorded in the image's history). No ``--tls-verify``: it would apply to every registry a FROM
    names; the target registry's exception is in the build's registries.conf. RUN steps run under
    runc (``--isolation oci``): chroot isolation refuses any network but the host's."""
    argv = ["build", "--isolation", "oci", "--network", check_build_network(network), "--format", "oci",
            "--platform", ",".join(platforms), "--manifest", list_name, "--timestamp", str(checkout.commit_epoch),
            "--signature-policy", str(storage.policy_json),
            "--build-arg", f"SOURCE_DATE_EPOCH={checkout.commit_epoch}", "-f", str(dockerfile)]
    if authfile:
        argv += ["--authfile", str(authfile)]
    for key, value in (build_args or {}).items():
        if not BUILD_ARG_NAME.fullmatch(key):
            raise ConfigError(f"build argument name {key!r} is not a name (letters, digits, _)")
        argv += ["--build-arg", f"{key}={value}"]
    for key, value in labels.items():
        argv += ["--label", f"{key}={value}"]
    argv.append(str(context))
    return argv


def build_index(tools: ContainerTools, checkout: Checkout, platforms: Sequence[str], *, workdir: Path,
                dockerfile: str = "Dockerfile", context: str = ".", title: str = "acci-framework",
                extra_labels: Mapping[str, str] | None = None, log: LineSink | None = None,
                tls_verify: bool = True, registry_host: str | None = None, authfile: Path | None = None,
                min_free_mb: int = MIN_FREE_MB, timeout: float = 3600, network: str = NO_NETWORK,
                network_dirs: Sequence[Path] = NETWORK_CONFIG_DIRS,
                build_args: Mapping[str, str] | None = None) -> LocalIndex:
    """Build ``checkout`` for ``platforms`` into ``workdir/oci`` and return what was built.

    ``tls_verify=False`` turns TLS verification off for ``registry_host`` (the target registry)
    only; without a ``registry_host`` nothing is insecure. ``network``: what RUN steps reach
    (``check_build_network``), none by default.

    ConfigError before any build for an unsupported platform, a bad network or a missing
    Dockerfile/context; BuildFailed naming the failing step and its last output line."""
    platforms = parse_platforms(platforms)
    root = checkout.path
    dockerfile_path = _inside(root, dockerfile, "ACCI_DOCKERFILE", checkout)
    context_path = _inside(root, context, "ACCI_BUILD_CONTEXT", checkout)
    where = f"{checkout.ref} ({checkout.short})"
    if not dockerfile_path.is_file():
        raise ConfigError(f"Dockerfile '{dockerfile}' not found in {where} (ACCI_DOCKERFILE)")
    if not context_path.is_dir():
        raise ConfigError(f"build context '{context}' is not a directory in {where} (ACCI_BUILD_CONTEXT)")
    network = check_build_network(network)
    network_file = _network_definition_for(network, network_dirs)
    insecure_registry = registry_host if not tls_verify and registry_host else None
    if insecure_registry:
        _check_registry_host(insecure_registry)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    check_free_space(workdir, min_free_mb)
    oci_dir = workdir / "oci"
    if oci_dir.exists():
        shutil.rmtree(oci_dir)
    storage = ContainerTools(workdir / "buildah", runtime=tools.runtime, ulimits=tools.ulimits)
    labels = oci_labels(checkout, title, extra_labels)
    list_name = f"localhost/acci-build-{checkout.short}-{uuid.uuid4().hex[:8]}"
    configure_build(storage, network_file, insecure_registry)
    argv = build_argv(storage, checkout, platforms, list_name=list_name, dockerfile=dockerfile_path,
                      context=context_path, labels=labels, network=network, authfile=authfile,
                      build_args=build_args)
    lines: list[str] = []

    def sink(line: str) -> None:
        lines.append(line)
        if log:
            log(line)

    bases = from_images(dockerfile_path.read_text(errors="replace"),
                        {"SOURCE_DATE_EPOCH": str(checkout.commit_epoch), **(build_args or {})})
    started = time.monotonic()
    try:
        try:
            storage.buildah(*argv, log=sink, timeout=timeout,
                            env={"SOURCE_DATE_EPOCH": str(checkout.commit_epoch)})
        except CommandFailed as exc:
            if any("no space left on device" in line for line in exc.result.tail):
                raise AcciOpsError(f"image build ran out of disk space under {workdir}") from None
            raise BuildFailed(_failed_step(lines, exc)) from None
        base_digests, base_platforms = _record_base_digests(storage, bases, platforms, log)
        try:
            storage.buildah("manifest", "push", "--all", "--format", "oci", "--signature-policy",
                            str(storage.policy_json), list_name, f"oci:{oci_dir}", log=log, timeout=timeout)
        except CommandFailed as exc:
            raise AcciOpsError(f"writing the built image to {oci_dir} failed: {exc.result.last_line}") from None
    finally:
        storage.remove_storage()
    index_digest = normalize_index(oci_dir, platforms)
    built = read_index(oci_dir).by_platform()
    missing = [p for p in platforms if p not in built]
    if missing:
        raise BuildFailed(f"the built index lacks platform(s) {', '.join(missing)}")
    return LocalIndex(oci_dir, index_digest, built, labels, round(time.monotonic() - started, 3),
                      tuple(name for name, _ in bases), base_digests, base_platforms)
