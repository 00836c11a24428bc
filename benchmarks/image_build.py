"""Image build overhead: the fixture ACCI Framework app built and pushed by acci_ops vs by hand.

Same machine, same fixture repository, same local registry, one run, alternating rounds:

  1. by hand   buildah build --platform linux/amd64,linux/arm64 --manifest L --timestamp T
               + buildah manifest push --all L docker://registry/...:tag   (the anchor)
  2. acci_ops  build_version(...) without checks: registry access check, ref resolution, clean
               clone, the same buildah build into an OCI layout, ELF check, tag check, skopeo push
               and read-back of both tags
  3. checks    smoke test, image policy (hadolint included) and the SBOM, timed on their own
  4. no-op     build_version of a version already pushed from the same commit

Each round builds a fresh version tag (a new tag on the same commit content) so nothing is a
no-op by accident, and uses fresh storage so no layer cache helps either side. Prints medians and
the ratio acci_ops / by hand (target <= 1.2), and the no-op time (target < 2 s).

    .venv/bin/python benchmarks/image_build.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from acci_ops.dev.fixture_app import add_tag, create_fixture_repo  # noqa: E402
from acci_ops.dev.registry import start_registry  # noqa: E402
from acci_ops.lib.images.build import LocalIndex  # noqa: E402
from acci_ops.lib.images.pipeline import ImageSettings, build_version  # noqa: E402
from acci_ops.lib.images.policy import PolicyConfig, image_policy  # noqa: E402
from acci_ops.lib.images.sbom import sbom_document  # noqa: E402
from acci_ops.lib.images.smoke import SmokeConfig, smoke_test  # noqa: E402
from acci_ops.lib.images.source import checkout  # noqa: E402
from acci_ops.lib.images.tools import ContainerTools  # noqa: E402

PLATFORMS = "linux/amd64,linux/arm64"


def by_hand(tools: ContainerTools, repo: str, tag: str, destination: str, work: Path) -> float:
    """The anchor: what an operator types (a clone of the tag, buildah build, manifest push)."""
    started = time.monotonic()
    src = checkout(repo, tag, work / "src")
    listname = f"localhost/bench-{tag.replace('.', '-')}"
    tools.buildah("build", "--isolation", "chroot", "--platform", PLATFORMS, "--manifest", listname,
                  "--timestamp", str(src.commit_epoch), "-f", str(src.path / "Dockerfile"), str(src.path))
    tools.buildah("manifest", "push", "--all", "--tls-verify=false", listname, f"docker://{destination}")
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="acci-bench-img-"))
    registry = start_registry(base / "registry")
    repo = create_fixture_repo(base / "acci-framework")
    rows: dict[str, list[float]] = {"by hand": [], "acci_ops": [], "checks": [], "no-op": []}
    try:
        for n in range(args.rounds):
            tag = f"v2.0.{n}"
            add_tag(repo.path, tag)
            # by hand, fresh storage
            hand_tools = ContainerTools(base / f"hand-{n}")
            rows["by hand"].append(by_hand(hand_tools, repo.url, tag,
                                           f"{registry.host}/bench/hand:{tag[1:]}", base / f"hand-{n}-work"))
            hand_tools.remove_storage()
            # acci_ops, fresh storage, no checks (the checks are timed apart below)
            tools = ContainerTools(base / f"ops-{n}")
            settings = ImageSettings(source_repo=repo.url, repository=registry.repository("bench/ops"),
                                     tls_verify=False, platforms=tuple(PLATFORMS.split(",")))
            started = time.monotonic()
            report = build_version(settings, tag, tools=tools, keep_workdir=True, workdir=base / f"ops-{n}-work")
            rows["acci_ops"].append(time.monotonic() - started)
            assert report.pushed, report.message
            local = LocalIndex(base / f"ops-{n}-work" / "oci", report.index_digest or "", {})
            started = time.monotonic()
            smoke = smoke_test(tools, local.oci_dir, SmokeConfig())
            policy = image_policy(local.oci_dir, PolicyConfig(dockerfile=base / f"ops-{n}-work" / "src" / "Dockerfile"))
            sbom_document(local.oci_dir)
            rows["checks"].append(time.monotonic() - started)
            assert smoke.passed and policy.passed, (smoke.description, policy.description)
            started = time.monotonic()
            again = build_version(settings, tag, tools=tools)
            rows["no-op"].append(time.monotonic() - started)
            assert again.noop, again.message
            tools.remove_storage()
            print(f"round {n + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in rows.items()), flush=True)
    finally:
        registry.stop()
        shutil.rmtree(base, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"\nmedians over {args.rounds} rounds (fixture app, {PLATFORMS}, local registry, 2 cores)")
    print(f"{'variant':<44}{'seconds':>9}{'x by hand':>11}")
    labels = {"by hand": "by hand: buildah build + manifest push --all",
              "acci_ops": "acci_ops build_version, no checks",
              "checks": "checks: smoke + policy + SBOM", "no-op": "acci_ops unchanged rebuild (no-op)"}
    for key, label in labels.items():
        print(f"{label:<44}{med[key]:>9.2f}{med[key] / med['by hand']:>11.2f}")
    overhead = med["acci_ops"] / med["by hand"]
    ok_overhead, ok_noop = overhead <= 1.2, med["no-op"] < 2
    print(f"{'PASS' if ok_overhead else 'FAIL'}  acci_ops / by hand <= 1.2   {overhead:.2f}x")
    print(f"{'PASS' if ok_noop else 'FAIL'}  unchanged rebuild < 2 s      {med['no-op']:.2f} s")
    return 0 if ok_overhead and ok_noop else 1


if __name__ == "__main__":
    raise SystemExit(main())
