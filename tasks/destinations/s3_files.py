"""Audience files in an S3 bucket, with a time-limited download link for people without AWS access.

Marketers rarely have bucket credentials, so each upload also yields a presigned GET link. Its
lifetime is validated when the config loads: S3 refuses SigV4 presigned URLs valid for more than
seven days, and finding that out from a marketer's "the link says AuthorizationQueryParametersError"
a week later is the wrong feedback loop. A link signed with temporary credentials (an instance role,
an STS session) dies with those credentials, whatever its expiry says; use a connection with a
long-lived key for links that must live for days.

One PUT per file: S3 replaces an object atomically, so a re-run of the same date swaps the file
whole and nobody downloads half of one. Credentials come from an Airflow connection (login = access
key id, password = secret key, extra ``region_name`` / ``aws_session_token``) or, without one, from
boto3's default chain (environment, profile, instance role) -- never from the repository.

``S3Uploader`` is shared with the email destination, which uploads a file and mails the link when
the file is too big to attach.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import boto3
import pandas as pd
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from pydantic import Field, field_validator, model_validator

from tasks.destinations.base import Delivery, DestinationOptions, register
from tasks.destinations.credentials import get_credential
from tasks.destinations.rendering import EXTENSION, MEDIA_TYPE, FileOptions, render
from tasks.settings import RunWindow

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MAX_LINK_HOURS = 168  # 7 days: the longest a SigV4 presigned URL may be valid


class S3DeliveryError(RuntimeError):
    """An upload or link failed; the message names the object and what to check."""


class S3Target(DestinationOptions):
    """Where files go in S3 and how their links are made (also the email destination's ``link_store``)."""

    bucket: str = Field(min_length=3, max_length=63)
    prefix: str = "audiences"
    endpoint_url: str | None = None  # MinIO, moto; None = AWS
    link_endpoint_url: str | None = None  # host the links point at, when people reach S3 by another name
    region: str | None = None  # the bucket's region; links signed for the wrong one do not open
    connection: str | None = None  # Airflow connection with the AWS keys; None = boto3's default chain
    link_expires_hours: int = 72
    sse: Literal["AES256", "aws:kms", "none"] = "none"
    kms_key_id: str | None = None

    @field_validator("link_expires_hours")
    @classmethod
    def _expiry(cls, hours: int) -> int:
        if hours < 1:
            raise ValueError(f"link_expires_hours must be at least 1, got {hours}")
        if hours > MAX_LINK_HOURS:
            raise ValueError(
                f"link_expires_hours is {hours}, but S3 presigned links (SigV4) can be valid for at most "
                f"7 days = {MAX_LINK_HOURS} hours; use {MAX_LINK_HOURS} or less"
            )
        return hours

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, prefix: str) -> str:
        return prefix.strip("/")

    @model_validator(mode="after")
    def _kms(self) -> S3Target:
        if self.kms_key_id and self.sse != "aws:kms":
            raise ValueError("kms_key_id is only used with sse: aws:kms")
        return self


@dataclass(frozen=True)
class Upload:
    url: str  # s3://bucket/key
    link: str  # presigned GET; a bearer credential for the file: hand it to people, never to logs
    expires_at: datetime


class S3Uploader:
    def __init__(self, target: S3Target) -> None:
        self.target = target
        self._clients: dict[str | None, S3Client] = {}

    def key_for(self, segment: str, ext: str, window: RunWindow) -> str:
        name = f"{window.run_date.isoformat()}/{segment}.{ext}"
        return f"{self.target.prefix}/{name}" if self.target.prefix else name

    def upload(self, key: str, data: bytes, content_type: str, *, metadata: dict[str, str] | None = None) -> Upload:
        t = self.target
        url = f"s3://{t.bucket}/{key}"
        filename = key.rsplit("/", 1)[-1]
        args: dict[str, Any] = {
            "Bucket": t.bucket,
            "Key": key,
            "Body": data,
            "ContentType": content_type,
            "ContentDisposition": f'attachment; filename="{filename}"',
            "Metadata": metadata or {},
        }
        if t.sse != "none":
            args["ServerSideEncryption"] = t.sse
        if t.kms_key_id:
            args["SSEKMSKeyId"] = t.kms_key_id
        try:
            self._client(t.endpoint_url).put_object(**args)
            expires = t.link_expires_hours * 3600
            link = self._client(t.link_endpoint_url or t.endpoint_url).generate_presigned_url(
                "get_object", Params={"Bucket": t.bucket, "Key": key}, ExpiresIn=expires
            )
        except NoCredentialsError as exc:
            raise S3DeliveryError(
                f"no AWS credentials for {url}: set the destination's connection option to an Airflow connection "
                "(login = access key id, password = secret key) or provide AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                "or an instance role"
            ) from exc
        except ClientError as exc:
            raise S3DeliveryError(_explain(url, exc)) from exc
        except BotoCoreError as exc:
            raise S3DeliveryError(
                f"upload of {url} failed: {exc}; check endpoint_url ({t.endpoint_url or 'unset = AWS'}) and the network"
            ) from exc
        return Upload(url, link, datetime.now(UTC) + timedelta(seconds=expires))

    def _client(self, endpoint_url: str | None) -> S3Client:
        if endpoint_url not in self._clients:
            t = self.target
            session_args: dict[str, Any] = {}
            if t.connection:
                cred = get_credential(t.connection)
                session_args = {
                    "aws_access_key_id": cred.login,
                    "aws_secret_access_key": cred.password,
                    "aws_session_token": cred.extra.get("aws_session_token"),
                    "region_name": cred.extra.get("region_name"),
                }
            if t.region:
                session_args["region_name"] = t.region
            config = Config(
                signature_version="s3v4",  # SigV2 links are capped far shorter and refused in newer regions
                retries={"max_attempts": 8, "mode": "adaptive"},
                connect_timeout=5,
                read_timeout=60,
                s3={"addressing_style": "path"} if endpoint_url else None,
            )
            client: S3Client = boto3.session.Session(**session_args).client(
                "s3", endpoint_url=endpoint_url, config=config
            )
            self._clients[endpoint_url] = client
        return self._clients[endpoint_url]


def _explain(url: str, exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    hints = {
        "NoSuchBucket": "the bucket does not exist; check the bucket option and endpoint_url",
        "AccessDenied": "access denied; the credentials need s3:PutObject (and kms:GenerateDataKey with aws:kms)",
        "InvalidAccessKeyId": "unknown access key; check the connection's login (access key id)",
        "SignatureDoesNotMatch": "the secret key is wrong; check the connection's password",
        "ExpiredToken": "the session token expired; refresh the credentials",
        "PermanentRedirect": "the bucket is in another region; set the region option to the bucket's region",
        "AuthorizationHeaderMalformed": "wrong region for this bucket; set the region option to the bucket's region",
        "KMS.NotFoundException": "kms_key_id does not name a KMS key the credentials can use",
    }
    hint = hints.get(code, "check the credentials, the bucket and endpoint_url")
    return f"upload of {url} failed with {code or 'an error'} ({error.get('Message', '')}): {hint}"


class S3FilesOptions(FileOptions, S3Target):
    pass


@register("s3_files")
class S3Files:
    """``s3://bucket/prefix/<run date>/<segment>.<ext>`` plus a presigned link per delivered segment.

    ``Delivery`` has no field for the link, so it is kept here: ``links[segment]`` and ``last_link``.
    """

    kind: ClassVar[str]
    Options = S3FilesOptions

    def __init__(self, name: str, options: S3FilesOptions) -> None:
        self.name = name
        self.options = options
        self.uploader = S3Uploader(options)
        self.links: dict[str, str] = {}
        self.last_link: str | None = None

    def deliver(self, segment: str, title: str, audience: pd.DataFrame, window: RunWindow) -> Delivery:
        fmt = self.options.format
        data = render(audience, self.options.columns, fmt, title=title)
        key = self.uploader.key_for(segment, EXTENSION[fmt], window)
        upload = self.uploader.upload(
            key,
            data,
            MEDIA_TYPE[fmt],
            metadata={"segment": segment, "run-date": window.run_date.isoformat(), "members": str(len(audience))},
        )
        self.links[segment] = upload.link
        self.last_link = upload.link
        return Delivery(self.name, segment, len(audience), upload.url, link=upload.link)
