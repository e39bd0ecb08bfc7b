"""Debian's chromium, headless, as the web console's tests drive it: the DOM of a page as
the browser built it (after its scripts ran), and screenshots written as test artefacts."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Screenshots of the browser tests (ignored by git); BATCHD_TEST_ARTIFACTS moves them.
ARTIFACTS = Path(os.environ.get("BATCHD_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))

_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
]


def chromium_binary() -> str:
    """The browser; the test skips without it, except in CI, where it fails."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    reason = "chromium is not installed (Debian package chromium; make test installs it as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the browser tests: {reason}", pytrace=False)
    pytest.skip(reason)


class Browser:
    """One headless chromium profile; each call loads a page in a fresh browser process."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.binary = binary
        self.profile = profile

    def _run(self, *args: str) -> str:
        completed = subprocess.run(
            [self.binary, *_FLAGS, f"--user-data-dir={self.profile}", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if completed.returncode != 0:
            raise AssertionError(f"chromium failed ({completed.returncode}): {completed.stderr}")
        return completed.stdout

    def dom(self, url: str) -> str:
        """The page's DOM, serialised after it loaded and its scripts ran."""
        return self._run("--virtual-time-budget=2000", "--dump-dom", url)

    def screenshot(self, url: str, name: str, size: str = "1280,900") -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        path.unlink(missing_ok=True)
        self._run(f"--window-size={size}", f"--screenshot={path}", url)
        assert path.is_file(), f"no screenshot written to {path}"
        return path


@pytest.fixture
def browser() -> Iterator[Browser]:
    binary = chromium_binary()
    with tempfile.TemporaryDirectory(prefix="batchd-chromium-") as profile:
        yield Browser(binary, Path(profile))


def png_colours(path: Path) -> Counter[tuple[int, int, int]]:
    """How many pixels of each RGB colour a PNG (8-bit RGB or RGBA, as chromium writes)
    has: what a person looking at the screenshot sees, counted."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    offset, header, chunks = 8, b"", []
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        offset += 12 + length
    width, height, depth, colour_type, _c, _f, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, "unexpected PNG format"
    channels = 4 if colour_type == 6 else 3
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    counts: Counter[tuple[int, int, int]] = Counter()
    previous = bytearray(stride)
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            upper_left = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                estimate = left + up - upper_left
                pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - upper_left)
                near = left if pa <= pb and pa <= pc else (up if pb <= pc else upper_left)
                line[i] = (line[i] + near) & 0xFF
        counts.update((line[i], line[i + 1], line[i + 2]) for i in range(0, stride, channels))
        previous = line
    return counts
