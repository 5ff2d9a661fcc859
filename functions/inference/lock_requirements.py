"""Pin the image's requirements.txt by hash: each pin gets the sha256 of every wheel Lambda can install.

The Dockerfile installs with ``--require-hashes``, so a wheel that changed on the index (or on a mirror, or in
transit) fails the build instead of shipping. Only wheels for Lambda's CPython 3.12 on manylinux x86_64 and
aarch64 are hashed: the Dockerfile takes wheels only (``--only-binary=:all:``), for those two architectures.

Run after changing a pin (``make lock``): it keeps the file's comments and pins, and replaces every hash.
Not copied into the image.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

REQUIREMENTS = Path(__file__).with_name("requirements.txt")
INDEX = "https://pypi.org/simple"
# Lambda's python:3.12 image: Amazon Linux 2023, glibc 2.34.
LAMBDA_PYTHON = (3, 12)
LAMBDA_GLIBC_MINOR = 34
# The oldest glibc each architecture has manylinux wheels for (PEP 600), and the legacy aliases pip still takes.
OLDEST_GLIBC_MINOR = {"x86_64": 5, "aarch64": 17}
LEGACY_MANYLINUX = {"x86_64": ("manylinux1", "manylinux2010", "manylinux2014"), "aarch64": ("manylinux2014",)}
_COMMENT = re.compile(r"(?:^|\s)#")
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?P<extras>\[[^\]]*\])?==(?P<version>[^\s;\\]+)\s*(?:\\)?$")


@dataclass(frozen=True)
class Pin:
    """One ``name[extras]==version`` line of requirements.txt."""

    name: str
    extras: str
    version: str


def lambda_tags() -> frozenset[Tag]:
    """Every wheel tag pip accepts on Lambda's CPython 3.12, on either architecture."""
    platforms = [
        f"manylinux_2_{minor}_{arch}"
        for arch, oldest in OLDEST_GLIBC_MINOR.items()
        for minor in range(LAMBDA_GLIBC_MINOR, oldest - 1, -1)
    ]
    platforms += [f"{alias}_{arch}" for arch, aliases in LEGACY_MANYLINUX.items() for alias in aliases]
    tags = set(cpython_tags(LAMBDA_PYTHON, abis=["cp312"], platforms=platforms))
    tags.update(compatible_tags(LAMBDA_PYTHON, "cp312", platforms=platforms))
    return frozenset(tags)


def parse(text: str) -> list[str | Pin]:
    """The file's lines: comments and blank lines kept as text, pins parsed, old hash lines dropped. A comment after a
    pin moves to its own line above it (nothing may follow a line's continuation)."""
    lines: list[str | Pin] = []
    for raw in text.splitlines():
        # pip's rule: a comment starts at a # that begins the line or follows whitespace.
        found = _COMMENT.search(raw)
        stripped, comment = (raw[: found.start()].strip(), raw[found.end() :]) if found else (raw.strip(), "")
        if found and not stripped:  # a line of comment alone
            comment = ""
        if stripped.startswith("--hash="):
            continue
        if not stripped:
            lines.append(raw)
            continue
        if comment.strip():
            lines.append(f"# {comment.strip()}")
        stripped = " ".join(part for part in stripped.split() if not part.startswith("--hash="))
        match = _PIN.match(stripped)
        if match is None:
            raise ValueError(f"requirements.txt must pin each package exactly (name==version): {raw!r}")
        lines.append(Pin(match["name"], match["extras"] or "", match["version"]))
    return lines


def wheel_hashes(pin: Pin, files: Iterable[dict[str, object]], tags: frozenset[Tag]) -> list[str]:
    """The sha256 of each of ``pin``'s wheels (from the index's file list) that Lambda can install, sorted. Yanked
    files count only when nothing else does: pip still installs a yanked release pinned with == (PEP 592)."""
    files = list(files)
    hashes = _hashes(pin, [entry for entry in files if not entry.get("yanked")], tags) or _hashes(pin, files, tags)
    if not hashes:
        raise LookupError(f"{pin.name}=={pin.version}: no wheel for Lambda's CPython 3.12 (x86_64 or aarch64)")
    return hashes


def _hashes(pin: Pin, files: Iterable[dict[str, object]], tags: frozenset[Tag]) -> list[str]:
    hashes = set()
    for entry in files:
        filename = str(entry.get("filename", ""))
        if not filename.endswith(".whl"):
            continue
        try:
            name, version, _, wheel_tags = parse_wheel_filename(filename)
        except InvalidWheelFilename:
            continue
        digests = entry.get("hashes")
        if (
            name == canonicalize_name(pin.name)
            and version == Version(pin.version)
            and not wheel_tags.isdisjoint(tags)
            and isinstance(digests, dict)
            and "sha256" in digests
        ):
            hashes.add(str(digests["sha256"]))
    return sorted(hashes)


def render(lines: list[str | Pin], hashes: dict[Pin, list[str]]) -> str:
    """requirements.txt again, each pin followed by its hashes."""
    out = []
    for line in lines:
        if isinstance(line, str):
            out.append(line)
            continue
        out.append(f"{line.name}{line.extras}=={line.version} \\")
        digests = hashes[line]
        out.extend(
            f"    --hash=sha256:{digest}" + (" \\" if i < len(digests) - 1 else "") for i, digest in enumerate(digests)
        )
    return "\n".join(out) + "\n"


def index_files(index: str) -> Callable[[str], list[dict[str, object]]]:
    """A reader of one project's file list from a PEP 691 (JSON) simple index."""

    def read(name: str) -> list[dict[str, object]]:
        request = urllib.request.Request(
            f"{index.rstrip('/')}/{canonicalize_name(name)}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            files: list[dict[str, object]] = json.load(response)["files"]
        return files

    return read


def lock(text: str, read_files: Callable[[str], list[dict[str, object]]]) -> str:
    """``text`` with every pin's hashes replaced by those the index gives now."""
    lines = parse(text)
    tags = lambda_tags()
    pins = [line for line in lines if isinstance(line, Pin)]
    return render(lines, {pin: wheel_hashes(pin, read_files(pin.name), tags) for pin in pins})


def main(argv: list[str] | None = None) -> int:
    """Rewrite requirements.txt with fresh hashes, or with --check say whether it is up to date."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default=INDEX, help="a PEP 691 simple index (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the hashes are not what the index gives")
    parser.add_argument("--file", type=Path, default=REQUIREMENTS)
    args = parser.parse_args(argv)
    text = args.file.read_text()
    try:
        locked = lock(text, index_files(args.index))
    except (OSError, ValueError, LookupError) as exc:
        print(f"lock_requirements: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if locked != text:
            print(f"{args.file} is not locked to the index's wheels: run `make lock`", file=sys.stderr)
            return 1
        return 0
    args.file.write_text(locked)
    return 0


if __name__ == "__main__":
    sys.exit(main())
