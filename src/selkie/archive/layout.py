"""Where things live in the archive. One prefix per project, so a project's history is
deleted (or moved, or audited) as one folder, and no project can reach another's objects::

    projects/<project_id>/chunks/<sha256>                          base image content, zstd
    projects/<project_id>/timelines/<timeline_id>/base/<seq>-<us>-<kind>.json.zst  base images
    projects/<project_id>/timelines/<timeline_id>/wal/<first>-<last>.seg.zst  log segments

A timeline is one line of a branch's history: a branch gets a new one when it is created,
restored, or rebuilt from the archive. ``seq`` is a GTID sequence number (domain 0).
"""

from __future__ import annotations

from dataclasses import dataclass

from selkie.archive.segments import SEQ_WIDTH


@dataclass(frozen=True, slots=True)
class TimelineRef:
    project_id: str
    timeline_id: str

    @property
    def prefix(self) -> str:
        return f"{project_prefix(self.project_id)}timelines/{self.timeline_id}/"

    @property
    def wal_prefix(self) -> str:
        return self.prefix + "wal/"

    @property
    def base_prefix(self) -> str:
        return self.prefix + "base/"

    def base_key(self, seq: int, taken_us: int, kind: str) -> str:
        return f"{self.base_prefix}{seq:0{SEQ_WIDTH}d}-{taken_us:016d}-{kind}.json.zst"


def project_prefix(project_id: str) -> str:
    return f"projects/{project_id}/"


def chunk_prefix(project_id: str) -> str:
    return project_prefix(project_id) + "chunks/"


def chunk_key(project_id: str, digest: str) -> str:
    return chunk_prefix(project_id) + digest


def parse_base_name(name: str) -> tuple[int, int, str] | None:
    """(seq, taken_us, kind) from a base image's object name."""
    if not name.endswith(".json.zst"):
        return None
    parts = name.removesuffix(".json.zst").split("-")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    return int(parts[0]), int(parts[1]), parts[2]
