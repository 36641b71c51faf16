"""Point-in-time restore: the newest base image at or before the target, then the log
replayed up to the target, into a private ``mariadbd`` that nothing else can reach.

::

    list base images ──▶ pick image ≤ target ──▶ materialize into staging
    list log objects ──▶ chain from image.seq (no gaps) ──▶ per object: rebuild a binlog
                         file of the transactions ≤ target ──▶ mariadb-binlog | mariadb

The private server runs on the staging datadir with networking off and the same binary
log settings as a compute, so the replayed transactions keep their GTIDs and the datadir
comes out with its GTID state at the target. It is shut down cleanly before the caller
swaps the staging directory in; if anything fails, the staging directory is the only thing
touched (and the caller removes it).

A target is a time (every transaction the safekeeper had received by then) or a position
(every transaction up to a GTID sequence number), or neither: everything the history holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pymysql

from selkie.archive import Archive, segments
from selkie.archive.binlog import binlog_file
from selkie.archive.layout import TimelineRef
from selkie.archive.segments import Record, SegmentError
from selkie.compute.local import find_mariadbd, wait_for_handshake
from selkie.compute.mariadb import (
    COMPUTE_SERVER_ID,
    Sizing,
    durability_options,
    render_config,
)
from selkie.errors import ArchiveError, InvalidInput, ObjectMissing, StorageError
from selkie.storage.deltas import materialize_image
from selkie.storage.images import INITIAL, ImageRef, list_images

log = logging.getLogger(__name__)

PRIVATE_START_TIMEOUT = 120.0
PRIVATE_STOP_TIMEOUT = 120.0


@dataclass(frozen=True)
class Target:
    until_us: int | None = None
    until_seq: int | None = None

    def admits(self, record: Record) -> bool:
        if self.until_seq is not None and record.seq > self.until_seq:
            return False
        return self.until_us is None or record.received_us <= self.until_us


@dataclass(frozen=True)
class Restored:
    base_seq: int
    seq: int  # the GTID sequence number the restored data holds
    replayed: int  # transactions replayed on top of the image
    image_key: str


@dataclass(frozen=True)
class Tools:
    mariadbd: str = ""
    binlog: str = ""
    client: str = ""
    user: str = "root"

    def resolve(self) -> Tools:
        def find(name: str) -> str:
            return shutil.which(name) or f"/usr/bin/{name}"

        return Tools(
            mariadbd=self.mariadbd or find_mariadbd(),
            binlog=self.binlog or find("mariadb-binlog"),
            client=self.client or find("mariadb"),
            user=self.user,
        )


def pick_image(images: list[ImageRef], target: Target) -> ImageRef:
    """The newest image at or before the target. A timeline's initial image holds its data
    as it began (nothing ran before it), so it serves any target inside the timeline; once
    retention has pruned it, a target before the oldest image kept is out of reach."""
    if not images:
        raise ObjectMissing("the history has no base image")
    eligible = [
        i
        for i in images
        if (target.until_us is None or i.taken_us <= target.until_us)
        and (target.until_seq is None or i.seq <= target.until_seq)
    ]
    if eligible:
        return max(eligible, key=lambda i: (i.seq, i.taken_us))
    first = images[0]
    if first.kind != INITIAL or (target.until_seq is not None and first.seq > target.until_seq):
        raise InvalidInput(
            "the target is before the history kept (history_retention_seconds): it starts "
            f"at 0-{COMPUTE_SERVER_ID}-{first.seq}, "
            f"{datetime.fromtimestamp(first.taken_us / 1e6, UTC).isoformat()}"
        )
    return first


async def wal_chain(archive: Archive, ref: TimelineRef, after: int) -> list[str]:
    """The log objects that hold every transaction after ``after``, in order; an error if
    the archive holds later transactions that cannot be reached without a gap."""
    ranges: dict[tuple[int, int], str] = {}
    for obj in await archive.list(ref.wal_prefix):
        rng = segments.parse_object_name(obj.key.rsplit("/", 1)[1])
        if rng is not None:
            ranges[rng] = obj.key
    chain = segments.covering_chain(list(ranges), after)
    end = chain[-1][1] if chain else after
    beyond = [r for r in ranges if r[0] > end + 1]
    if beyond:
        first = min(beyond)[0]
        raise ObjectMissing(
            f"the archive misses transactions {end + 1}..{first - 1} of timeline "
            f"{ref.timeline_id}: a log object is missing"
        )
    return [ranges[r] for r in chain]


@asynccontextmanager
async def private_server(datadir: Path, tools: Tools) -> AsyncIterator[Path]:
    """A ``mariadbd`` on ``datadir`` reachable only through a unix socket in a private
    temporary directory; yields the socket. Shut down cleanly on exit."""
    run = Path(tempfile.mkdtemp(prefix="selkie-restore-"))
    try:
        sock = run / "s.sock"
        cnf = run / "my.cnf"
        extra = {
            **durability_options(semi_sync=False, sync_timeout_ms=1000),
            "skip_networking": "ON",
            "tmpdir": str(run),
            "innodb_buffer_pool_load_at_startup": "OFF",
            "innodb_buffer_pool_dump_at_shutdown": "OFF",
        }
        cnf.write_text(
            render_config(
                sizing=Sizing.for_cu(0.25),
                datadir=datadir,
                socket=sock,
                port=0,
                pid_file=run / "mariadbd.pid",
                error_log=run / "error.log",
                run_as_root=os.geteuid() == 0,
                extra=extra,
            )
        )
        proc = await asyncio.create_subprocess_exec(
            tools.mariadbd,
            f"--defaults-file={cnf}",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + PRIVATE_START_TIMEOUT
            while not (sock.exists() and await wait_for_handshake(sock)):
                if proc.returncode is not None or time.monotonic() > deadline:
                    raise StorageError(
                        "the restore server did not start: " + _tail(run / "error.log")
                    )
                await asyncio.sleep(0.01)
            yield sock
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), PRIVATE_STOP_TIMEOUT)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    await proc.wait()
                    raise StorageError("the restore server did not shut down cleanly") from None
            if proc.returncode not in (0, None):
                raise StorageError(
                    f"the restore server exited with status {proc.returncode}: "
                    + _tail(run / "error.log")
                )
    finally:
        await asyncio.to_thread(shutil.rmtree, run, True)


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no error log)"
    useful = [x for x in text if "ERROR" in x] or text
    return "\n".join(useful[-lines:])


def _sql(sock: Path, user: str, statement: str) -> list[tuple[object, ...]]:
    conn = pymysql.connect(unix_socket=str(sock), user=user, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return list(cur.fetchall())
    finally:
        conn.close()


async def _replay(sock: Path, tools: Tools, binlog: Path) -> None:
    """``mariadb-binlog FILE | mariadb``: apply the transactions of a binlog file."""
    read_fd, write_fd = os.pipe()
    try:
        decoder = await asyncio.create_subprocess_exec(
            tools.binlog,
            "--no-defaults",
            str(binlog),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=write_fd,
            stderr=asyncio.subprocess.PIPE,
        )
        client = await asyncio.create_subprocess_exec(
            tools.client,
            "--no-defaults",
            f"--socket={sock}",
            f"--user={tools.user}",
            "--binary-mode",
            "--max-allowed-packet=1G",
            stdin=read_fd,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    finally:
        os.close(read_fd)
        os.close(write_fd)
    (_, dec_err), (_, cli_err) = await asyncio.gather(decoder.communicate(), client.communicate())
    if decoder.returncode != 0:
        raise StorageError(f"mariadb-binlog failed: {dec_err.decode(errors='replace')[-500:]}")
    if client.returncode != 0:
        raise StorageError(f"replaying the log failed: {cli_err.decode(errors='replace')[-500:]}")


async def restore(
    archive: Archive,
    ref: TimelineRef,
    target: Target,
    staging: Path,
    *,
    tools: Tools,
    tail: tuple[bytes, list[Record]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Restored:
    """Rebuild the timeline's data as of ``target`` in ``staging`` (a new directory).
    ``tail``: transactions the archive does not hold yet (the safekeeper's local log)."""
    tools = tools.resolve()

    def say(step: str) -> None:
        if progress is not None:
            progress(step)

    image = pick_image(await list_images(archive, ref), target)
    chain = await wal_chain(archive, ref, image.seq)
    say(f"restoring base image at {image.seq}")
    await materialize_image(archive, image.key, staging)
    seq = image.seq
    replayed = 0
    replay_file = staging.parent / f".{staging.name}.replay.bin"
    try:
        async with private_server(staging, tools) as sock:
            # The image carries no binary log: give the new one the image's GTID state.
            state = f"0-{COMPUTE_SERVER_ID}-{seq}" if seq else ""
            await asyncio.to_thread(_sql, sock, tools.user, "RESET MASTER")
            if state:
                await asyncio.to_thread(
                    _sql, sock, tools.user, f"SET GLOBAL gtid_binlog_state = '{state}'"
                )
            batches: list[tuple[str, tuple[bytes, list[Record]] | None]] = [
                (key, None) for key in chain
            ]
            if tail is not None:
                batches.append(("the safekeeper's local log", tail))
            done = False
            for name, local in batches:
                if done:
                    break
                if local is None:
                    try:
                        fde, records, _ = segments.decode(
                            segments.decompress(await archive.get(name))
                        )
                    except SegmentError as exc:
                        raise ObjectMissing(f"archive object {name} is corrupt: {exc}") from exc
                else:
                    fde, records = local
                take = []
                for record in records:
                    if record.seq <= seq:
                        continue
                    if record.seq != seq + 1:
                        raise ObjectMissing(
                            f"{name}: transaction {seq + 1} is missing (found {record.seq})"
                        )
                    if not target.admits(record):
                        done = True
                        break
                    take.append(record)
                    seq = record.seq
                if not take:
                    continue
                say(f"replaying transactions {take[0].seq}..{take[-1].seq}")
                await asyncio.to_thread(
                    replay_file.write_bytes, binlog_file(fde, [r.events for r in take])
                )
                await _replay(sock, tools, replay_file)
                replayed += len(take)
            ((pos,),) = await asyncio.to_thread(_sql, sock, tools.user, "SELECT @@gtid_binlog_pos")
            expected = f"0-{COMPUTE_SERVER_ID}-{seq}" if seq else ""
            if str(pos) != expected:
                raise StorageError(
                    f"the restored data is at GTID {pos or '(none)'}, expected {expected}"
                )
    finally:
        replay_file.unlink(missing_ok=True)
    if target.until_seq is not None and seq < target.until_seq:
        raise InvalidInput(
            f"position 0-{COMPUTE_SERVER_ID}-{target.until_seq} is beyond the history "
            f"(it ends at 0-{COMPUTE_SERVER_ID}-{seq})"
        )
    log.info("restored %s at %d (%d replayed on the image)", ref.timeline_id, seq, replayed)
    return Restored(base_seq=image.seq, seq=seq, replayed=replayed, image_key=image.key)


__all__ = ["ArchiveError", "Restored", "Target", "Tools", "pick_image", "restore", "wal_chain"]
