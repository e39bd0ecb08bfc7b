"""Checksum sidecars (GoBatch's md5, sha1, sha256 and sha512): verified beside input files,
written beside output files as ``sha256sum`` and its kin write them."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

from batchd.errors import ChecksumMismatch, ChecksumMissing

# The algorithms of checksum sidecars (GoBatch's), each in ``<file>.<algorithm>``.
CHECKSUM_ALGORITHMS = ("sha256", "sha512", "sha1", "md5")
# Sidecars verified beside every input file, and the algorithm of each.
CHECKSUM_SIDECARS = tuple((f".{algorithm}", algorithm) for algorithm in CHECKSUM_ALGORITHMS)
# ``True`` (sha256, or on input: any one sidecar), an algorithm, or several.
ChecksumSpec = bool | str | Sequence[str]


def checksum_algorithms(spec: ChecksumSpec | None) -> tuple[str, ...]:
    """``checksum=`` as algorithms: False none, True sha256, a name, or names."""
    if spec is None or spec is False:
        return ()
    if spec is True:
        return ("sha256",)
    names = (spec,) if isinstance(spec, str) else tuple(spec)
    unknown = [name for name in names if name not in CHECKSUM_ALGORITHMS]
    if unknown or not names:
        raise ValueError(f"checksum algorithms are {', '.join(CHECKSUM_ALGORITHMS)}, not {spec!r}")
    return names


def partial_name(path: str) -> str:
    """The hidden file beside ``path`` that its content is written to before a rename."""
    directory, base = os.path.split(path)
    return os.path.join(directory, f".{base}.partial")


def file_digest(path: str, algorithm: str) -> str:
    """Hex digest of a file's content."""
    with open(path, "rb") as f:
        return hashlib.file_digest(
            f, lambda: hashlib.new(algorithm, usedforsecurity=False)
        ).hexdigest()


def verify_checksums(path: str, *, require: ChecksumSpec = False) -> None:
    """Verify ``<path>.sha256`` / ``.sha512`` / ``.sha1`` / ``.md5`` when they exist beside
    ``path`` (the first token of a sidecar is the hex digest, as ``sha256sum`` writes it).
    Raises :class:`ChecksumMismatch` naming the file and both digests. ``require``: True
    (at least one sidecar), an algorithm or several (those sidecars) must exist, else
    :class:`ChecksumMissing`."""
    found = set()
    for suffix, algorithm in CHECKSUM_SIDECARS:
        sidecar = path + suffix
        try:
            with open(sidecar, encoding="ascii", errors="replace") as f:
                tokens = f.read(4096).split()
        except FileNotFoundError:
            continue
        found.add(algorithm)
        expected = tokens[0].lower() if tokens else ""
        actual = file_digest(path, algorithm)
        if expected != actual:
            raise ChecksumMismatch(
                f"{path} does not match its {algorithm} sidecar {os.path.basename(sidecar)}: "
                f"expected {expected or '(empty sidecar)'}, actual {actual}",
                path,
                expected,
                actual,
            )
    if require is False:
        return
    needed = set(CHECKSUM_ALGORITHMS) if require is True else set(checksum_algorithms(require))
    missing = sorted(needed - found) if require is not True else ([] if found else ["any"])
    if missing:
        wanted = (
            "checksum sidecar"
            if require is True
            else ", ".join(f"{os.path.basename(path)}.{name}" for name in missing)
        )
        raise ChecksumMissing(
            f"{path} has no {wanted} beside it, and the reader requires one", path
        )


def write_checksum_sidecar(
    path: str, data_path: str | None = None, algorithm: str = "sha256"
) -> str:
    """Write ``<path>.<algorithm>`` in ``sha256sum`` format (``md5sum``, ``sha1sum``...) for
    the content of ``data_path`` (default ``path``) atomically; returns the digest."""
    digest = file_digest(data_path or path, algorithm)
    sidecar = f"{path}.{algorithm}"
    partial = partial_name(sidecar)
    with open(partial, "w", encoding="utf-8") as f:
        f.write(f"{digest}  {os.path.basename(path)}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, sidecar)
    return digest
