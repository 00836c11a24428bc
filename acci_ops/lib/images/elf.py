"""Every ELF file in a platform's image must be built for that platform's architecture.

Copying one amd64 binary into both variants of a ``FROM scratch`` image is the classic
multi-platform mistake: the arm64 image builds, pushes and then fails with "exec format error" on
the first arm64 node. No lint catches it; reading the ELF header's ``e_machine`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

from acci_ops.lib.core.errors import AcciOpsError
from acci_ops.lib.images.oci import IndexInfo, ManifestInfo, iter_files
from acci_ops.lib.images.outcome import CheckOutcome

# e_machine values (ELF specification) per OCI architecture.
E_MACHINE = {"amd64": 62, "arm64": 183, "arm": 40, "ppc64le": 21, "s390x": 22, "riscv64": 243, "386": 3}
MACHINE_NAMES = {62: "x86-64", 183: "aarch64", 40: "arm", 21: "ppc64", 22: "s390x", 243: "riscv", 3: "i386",
                 8: "mips"}
# ELF class (32/64-bit) per architecture, to tell ppc64 from ppc64le by byte order too.
LITTLE_ENDIAN = {"amd64", "arm64", "arm", "ppc64le", "riscv64", "386"}
SUPPORTED_ARCHITECTURES = tuple(E_MACHINE)


@dataclass(frozen=True)
class ElfProblem:
    platform: str
    path: str
    found: str
    expected: str

    def __str__(self) -> str:
        return f"{self.platform}: {self.path} is a {self.found} binary, expected {self.expected}"


def elf_machine(header: bytes) -> tuple[int, bool] | None:
    """(e_machine, little_endian) of an ELF header, or None when ``header`` is not ELF."""
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    little = header[5] == 1
    return int.from_bytes(header[18:20], "little" if little else "big"), little


def machine_name(machine: int) -> str:
    return MACHINE_NAMES.get(machine, f"e_machine {machine}")


def check_manifest(oci_dir, manifest: ManifestInfo) -> tuple[list[ElfProblem], int]:  # noqa: ANN001
    """Problems in one platform's image, and how many ELF files were checked."""
    expected = E_MACHINE.get(manifest.architecture)
    problems: list[ElfProblem] = []
    checked = 0
    if expected is None:
        return [ElfProblem(manifest.platform, "-", "unknown", f"a supported architecture ({manifest.architecture})")], 0
    for entry in iter_files(oci_dir, manifest.digest):
        if entry.type != "file":
            continue
        parsed = elf_machine(entry.header)
        if parsed is None:
            continue
        checked += 1
        machine, little = parsed
        if machine != expected or little != (manifest.architecture in LITTLE_ENDIAN):
            problems.append(ElfProblem(manifest.platform, entry.path, machine_name(machine), machine_name(expected)))
    return problems, checked


def check_architectures(index: IndexInfo) -> list[ElfProblem]:
    """Every ELF file of every platform's image, against that platform's architecture."""
    problems: list[ElfProblem] = []
    for manifest in index.manifests:
        problems += check_manifest(index.oci_dir, manifest)[0]
    return problems


def elf_outcome(index: IndexInfo) -> CheckOutcome:
    """The ELF architecture check as a blocking CheckOutcome (one line naming the first bad file).
    A layout it cannot read (or a layer refused as too large) fails it the same way: an image
    whose binaries could not be checked must not pass as checked."""
    problems: list[ElfProblem] = []
    counts: dict[str, int] = {}
    for manifest in index.manifests:
        try:
            found, checked = check_manifest(index.oci_dir, manifest)
        except AcciOpsError as exc:
            return CheckOutcome("elf_architecture", False, "ERROR",
                                f"{manifest.platform}: the ELF check could not read the image: {exc}",
                                {"elf_files_checked": counts})
        problems += found
        counts[manifest.platform] = checked
    metadata = {"elf_files_checked": counts, "problems": [str(p) for p in problems[:20]]}
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return CheckOutcome("elf_architecture", False, "ERROR", f"wrong architecture: {problems[0]}{more}", metadata)
    return CheckOutcome("elf_architecture", True, "ERROR",
                        f"every ELF file matches its platform ({sum(counts.values())} checked)", metadata)
