"""The README's install guide, run as written in a scratch root.

The block after ``<!-- install-guide -->`` in README.md is read line by line and each command
runs for real, with the paths of the system (``/etc``, ``/opt``, ``/usr``, ``/var``, ``/run``)
moved under a temporary root, like a container without one:

- ``useradd`` gets ``--prefix ROOT`` (it writes ROOT/etc/passwd), ``systemd-tmpfiles`` gets
  ``--root=ROOT``; ``install -o/-g`` owners are the ids of ROOT/etc/passwd and group;
- ``runuser -u USER -- CMD`` runs CMD with USER's ids from ROOT/etc/passwd;
- ``apt-get`` (the machine's packages) and ``systemctl`` (no systemd manager here) are not
  run; the unit is checked with ``systemd-analyze verify`` instead;
- the config the guide installs is the checkout's etc/batchd.toml with its system paths
  moved under the root too, as the daemon would see them in a container.

Any other command runs as it is, so a guide that drifts from what works fails here. It needs
root (chown, useradd) and the network or pip's cache (the guide installs batchd from the
checkout): CI runs as root.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MARK = "<!-- install-guide -->"
# The PATH of root on Debian, with the root's /usr/local/bin first (the guide links batchd there).
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Absolute system paths at the start of a word, after "=" or a quote, or in a SQLite URL.
SYSTEM_PATHS = re.compile(r"""(?:^|(?<=[\s="'])|(?<=sqlite:///))/(etc|opt|usr|var|run|srv)(?=/)""")
NOT_RUN = {"apt-get", "systemctl"}
IN_CI = os.environ.get("CI") == "true"


def needs(condition: bool, reason: str) -> None:
    """Skip without ``condition`` on a developer's machine; in CI it is a failure."""
    if not condition:
        if IN_CI:
            pytest.fail(f"CI must run this test: {reason}")
        pytest.skip(reason)


def guide_commands(readme: str) -> list[list[str]]:
    """The commands of the fenced block that follows MARK, one per line, comments dropped."""
    after = readme.split(MARK, 1)[1]
    block = re.search(r"```sh\n(.*?)```", after, re.S)
    assert block is not None, f"no ```sh block after {MARK} in README.md"
    return [words for line in block[1].splitlines() if (words := shlex.split(line, comments=True))]


class ScratchRoot:
    """A directory standing for ``/`` of a clean Debian system."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.chmod(0o755)  # the batchd user must reach the files under it
        for directory in ("etc/systemd/system", "etc/tmpfiles.d", "opt", "usr/local/bin",
                          "usr/local/lib", "usr/local/share", "var/lib", "var/log",
                          "var/spool", "run"):
            (path / directory).mkdir(parents=True)
        for name, line in (("passwd", "root:x:0:0:root:/root:/bin/bash"),
                           ("group", "root:x:0:"), ("shadow", "root:*:19000:0:99999:7:::"),
                           ("gshadow", "root:*::")):
            (path / "etc" / name).write_text(line + "\n")

    def rooted(self, text: str) -> str:
        return SYSTEM_PATHS.sub(lambda match: f"{self.path}{match[0]}", text)

    def user(self, name: str) -> tuple[int, int]:
        return self._id("passwd", name, 2), self._id("passwd", name, 3)

    def group(self, name: str) -> int:
        return self._id("group", name, 2)

    def _id(self, table: str, name: str, field: int) -> int:
        for line in (self.path / "etc" / table).read_text().splitlines():
            fields = line.split(":")
            if fields[0] == name:
                return int(fields[field])
        raise AssertionError(f"no {name!r} in the root's /etc/{table}")

    def run(self, words: list[str], cwd: Path) -> None:
        """Run one command of the guide, translated as the module docstring says."""
        uid = gid = None
        if words[0] == "runuser":
            assert words[1] == "-u" and words[3] == "--", f"write runuser -u USER -- CMD: {words}"
            uid, gid = self.user(words[2])
            words = words[4:]
        if words[0] == "useradd":
            command = ["useradd", "--prefix", str(self.path), *words[1:]]
        else:
            command = [self.rooted(word) for word in words]
        if words[0] == "systemd-tmpfiles":
            command.insert(1, f"--root={self.path}")
        if words[0] == "install":
            command = self._numeric_owners(command)
        env = {"PATH": f"{self.path}/usr/local/bin:{SYSTEM_PATH}", "LANG": "C.UTF-8",
               "HOME": os.environ.get("HOME", "/root") if uid is None else str(self.path)}
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                              user=uid, group=gid, extra_groups=[] if uid is not None else None)
        assert done.returncode == 0, (
            f"{shlex.join(words)}\n  ran as {shlex.join(command)}\n  exit {done.returncode}\n"
            f"{done.stdout}{done.stderr}"
        )

    def _numeric_owners(self, command: list[str]) -> list[str]:
        result = list(command)
        for index, word in enumerate(command[:-1]):
            if word == "-o":
                result[index + 1] = str(self.user(command[index + 1])[0])
            elif word == "-g":
                result[index + 1] = str(self.group(command[index + 1]))
        return result


@pytest.fixture
def scratch_root() -> Iterator[ScratchRoot]:
    # Not tmp_path: its parents are private to root, and the guide's user must reach files.
    path = Path(tempfile.mkdtemp(prefix="batchd-root-"))
    try:
        yield ScratchRoot(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


_BUILT = shutil.ignore_patterns(
    ".git", ".venv", ".*_cache", "__pycache__", "*.egg-info", "build", "dist", ".hypothesis")


def _not_in_a_clone(directory: str, names: list[str]) -> set[str]:
    """What a clone lacks: the virtualenv, caches, build output, and the screenshots that the
    browser tests rewrite meanwhile (on another xdist worker: a file could go mid-copy)."""
    skipped = _BUILT(directory, names)
    if Path(directory) == REPO / "tests":
        skipped.add("artifacts")
    return skipped


def copy_checkout(destination: Path) -> Path:
    """A copy of this checkout as it is (uncommitted changes included), without what
    :func:`_not_in_a_clone` names: what a fresh clone of it would hold."""
    shutil.copytree(REPO, destination, ignore=_not_in_a_clone)
    return destination


@pytest.fixture
def checkout(tmp_path: Path, scratch_root: ScratchRoot) -> Path:
    """A copy of this checkout whose example config names the scratch root's paths."""
    copy = copy_checkout(tmp_path / "batchd")
    config = copy / "etc" / "batchd.toml"
    config.write_text(scratch_root.rooted(config.read_text()))
    return copy


def batchd_user_check(root: ScratchRoot) -> subprocess.CompletedProcess[str]:
    """``batchd check-config`` as the batchd user, from ``/`` (the directory a login shell or
    a unit starts in, with no job modules of its own), nothing in the environment."""
    uid, gid = root.user("batchd")
    return subprocess.run(
        [f"{root.path}/usr/local/bin/batchd", "check-config",
         "--config", f"{root.path}/etc/batchd/batchd.toml"],
        cwd="/", env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}, capture_output=True, text=True,
        user=uid, group=gid, extra_groups=[],
    )


@pytest.mark.slow
@pytest.mark.timeout(600)  # a pip install of batchd and its dependencies: ~40 s when quiet
def test_the_install_guide_works_as_written(scratch_root: ScratchRoot, checkout: Path) -> None:
    needs(os.geteuid() == 0, "the install guide runs as root (useradd, chown)")
    needs(shutil.which("useradd") is not None and shutil.which("systemd-tmpfiles") is not None,
          "useradd and systemd-tmpfiles (Debian: passwd, systemd)")
    needs(subprocess.run(["python3", "-c", "import ensurepip"], env={"PATH": SYSTEM_PATH},
                         capture_output=True).returncode == 0,
          "the system's python3 with venv (Debian: python3-venv)")
    root = scratch_root
    for words in guide_commands((REPO / "README.md").read_text()):
        if words[0] not in NOT_RUN:
            root.run(words, cwd=checkout)

    checked = batchd_user_check(root)
    assert checked.returncode == 0, checked.stderr
    assert "config OK: 2 jobs, 1 schedule, 1 watch" in checked.stdout

    uid, gid = root.user("batchd")
    spool = root.path / "var/spool/batchd/payments"
    assert (spool.stat().st_uid, spool.stat().st_gid) == (uid, gid)
    config = (root.path / "etc/batchd/batchd.toml").stat()
    assert (config.st_uid, config.st_gid, config.st_mode & 0o777) == (0, gid, 0o640)

    unit = (root.path / "etc/systemd/system/batchd.service").read_text()
    documentation = re.search(r"^Documentation=file://(\S+)$", unit, re.M)
    assert documentation is not None and (root.path / documentation[1].lstrip("/")).is_file()
    needs(shutil.which("systemd-analyze") is not None, "systemd-analyze (Debian: systemd)")
    # The unit as the root's files would be seen from inside it: its programs are the root's.
    rooted_unit = checkout / "batchd.service"
    rooted_unit.write_text(root.rooted(unit))
    verified = subprocess.run(["systemd-analyze", "verify", str(rooted_unit)],
                              capture_output=True, text=True)
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr


def test_the_guide_block_has_one_plain_command_a_line() -> None:
    """What the install test cannot translate (pipes, &&, sudo, cd) must not be in the guide."""
    for words in guide_commands((REPO / "README.md").read_text()):
        assert not {"&&", "|", ";", "sudo", "cd"} & set(words), shlex.join(words)


def check_config(config: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("BATCHD_") and key != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", "batchd.cli", "check-config", "--config",
                           str(config)], cwd="/", env=env, capture_output=True, text=True)


def test_jobs_path_finds_job_modules_from_any_directory(tmp_path: Path) -> None:
    package = tmp_path / "lib" / "site_jobs"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "hello.py").write_text(
        "import batchd\n"
        "batchd.register(batchd.JobBuilder('hello').step(batchd.StepBuilder('s')"
        ".tasklet(lambda ctx: None).build()).build())\n"
    )
    config = tmp_path / "batchd.toml"
    config.write_text(f'jobs = ["site_jobs.hello"]\njobs_path = ["{tmp_path / "lib"}"]\n')
    found = check_config(config)
    assert found.returncode == 0 and "config OK: 1 job," in found.stdout, found.stderr

    config.write_text('jobs = ["site_jobs.hello"]\njobs_path = ["lib"]\n')
    relative = check_config(config)
    assert relative.returncode == 78
    assert "jobs_path: must be absolute directories, not lib" in relative.stderr
