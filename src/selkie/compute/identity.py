"""The OS user local computes run as. When Selkie runs as root, a compute runs as an
unprivileged user (``mysql`` by default, the one MariaDB's packages make): a server that is
broken into must not be root on the machine. ``mariadbd`` is started as root and switches
to that user itself (``user=`` in its my.cnf) after the files it needs are handed to it.

That user must be able to reach its files: every directory above the data dir must let it
pass (search permission). Where one does not (a data dir under a private home or a 0700
temporary directory), computes run as root as before, and Selkie says once which directory
stands in the way.
"""

from __future__ import annotations

import logging
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ComputeUser:
    name: str
    uid: int
    gid: int

    def can_pass(self, directory: Path) -> bool:
        st = directory.stat()
        if st.st_uid == self.uid:
            return bool(st.st_mode & 0o100)
        if st.st_gid == self.gid:
            return bool(st.st_mode & 0o010)
        return bool(st.st_mode & 0o001)

    def hand_over(self, *paths: Path) -> None:
        """Make ``paths`` (and everything under them) the compute user's."""
        for top in paths:
            os.chown(top, self.uid, self.gid, follow_symlinks=False)
            for root, dirs, files in os.walk(top):
                for name in (*dirs, *files):
                    os.chown(os.path.join(root, name), self.uid, self.gid, follow_symlinks=False)


def choose(data_dir: Path, name: str) -> ComputeUser | None:
    """The user computes run as, or None (root: Selkie is not root, none is configured, it
    does not exist, or cannot reach the data dir)."""
    if os.geteuid() != 0 or not name or name == "root":
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        log.warning("computes run as root: there is no OS user %r (SELKIE_COMPUTE_OS_USER)", name)
        return None
    user = ComputeUser(name=name, uid=entry.pw_uid, gid=entry.pw_gid)
    data_dir = data_dir.resolve()
    for directory in data_dir.parents:
        if not user.can_pass(directory):
            log.warning(
                "computes run as root: OS user %s cannot pass through %s (it needs search "
                "permission on every directory above the data dir)",
                name,
                directory,
            )
            return None
    # The data dir itself is Selkie's: it lets others pass, never list (0711).
    if data_dir.stat().st_uid == os.geteuid():
        data_dir.chmod(data_dir.stat().st_mode & 0o7700 | 0o011)
    if not user.can_pass(data_dir):
        log.warning("computes run as root: OS user %s cannot pass through %s", name, data_dir)
        return None
    return user
