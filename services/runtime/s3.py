"""S3: the boto3 client factory (MinIO in compose, moto's server natively, AWS in production)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from services.runtime.settings import S3Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def create_s3_client(settings: S3Settings) -> S3Client:
    client: S3Client = boto3.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        # Path-style addressing works with MinIO and moto without wildcard DNS.
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"}),
    )
    return client


def ensure_bucket(client: S3Client, bucket: str) -> None:
    """Create `bucket` if it does not exist yet (blocking: call it through asyncio.to_thread)."""
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
        client.create_bucket(Bucket=bucket)
