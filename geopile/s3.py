"""The one way GeoPile makes an S3 client: boto3's standard chain, ``AWS_ENDPOINT_URL`` honoured.

Credentials never come from params: ``AWS_PROFILE``, the key variables or an instance role,
whatever the node has. ``AWS_ENDPOINT_URL`` (boto3 reads it too) points at another store
(MinIO, SeaweedFS, R2, Ceph). Timeouts and retries are bounded, so an unreachable store fails
in seconds with botocore's error, not after minutes. A leaf module.
"""

from __future__ import annotations

import os
from typing import Any


def s3_client(endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client (``endpoint_url``: else ``AWS_ENDPOINT_URL``, else AWS's own)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None,
        config=Config(connect_timeout=10, read_timeout=60, retries={"max_attempts": 3}))
