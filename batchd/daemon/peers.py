"""Who may use the control socket: the peer's credentials (``SO_PEERCRED``) and the rule
that admits root, the daemon's own user, ``control.allowed_users`` and members of
``control.allowed_groups`` (primary or supplementary group)."""

from __future__ import annotations

import grp
import logging
import os
import pwd
import socket
import struct
from collections.abc import Callable

log = logging.getLogger(__name__)

_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
    pid, uid, gid = _CREDENTIALS.unpack(raw)
    return pid, uid, gid


def _ids(names: list[str], lookup: Callable[[str], int]) -> set[int]:
    """Numeric ids of user or group names (a string of digits is an id already)."""
    found = set()
    for name in names:
        if name.isdigit():
            found.add(int(name))
            continue
        try:
            found.add(lookup(name))
        except KeyError:
            log.warning("control socket: no user or group named %r on this host", name)
    return found


def peer_allowed(
    uid: int, gid: int, *, allowed_users: list[str], allowed_groups: list[str]
) -> bool:
    """Whether a peer running as ``uid`` (with primary group ``gid``) may use the socket:
    root and the daemon's own user always may; others if their user is in
    ``allowed_users`` or one of their groups in ``allowed_groups``."""
    if uid in (0, os.geteuid()):
        return True
    try:
        user: pwd.struct_passwd | None = pwd.getpwuid(uid)
    except KeyError:
        user = None  # a uid without a name (a container's, say): only its gid can match
    if uid in _ids(allowed_users, lambda name: pwd.getpwnam(name).pw_uid):
        return True
    if not allowed_groups:
        return False
    groups = {gid}
    if user is not None:
        groups.update(os.getgrouplist(user.pw_name, user.pw_gid))
    return bool(groups & _ids(allowed_groups, lambda name: grp.getgrnam(name).gr_gid))


__all__ = ["peer_allowed", "peer_credentials"]
