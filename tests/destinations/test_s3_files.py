"""s3_files against a real S3 HTTP endpoint on loopback (moto server): object, key, link, expiry rules."""

from __future__ import annotations

import io
import json
import urllib.request
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import boto3
import openpyxl
import pandas as pd
import pytest

from tasks.config.loader import ConfigError
from tasks.config.models import DestinationConfig
from tasks.destinations.base import build_destination
from tasks.destinations.rendering import render
from tasks.destinations.s3_files import S3DeliveryError, S3Files
from tasks.settings import RunWindow

WINDOW = RunWindow(date(2026, 11, 24), ZoneInfo("Asia/Ho_Chi_Minh"))
CONFIG_FILE = Path("config/destinations.yaml")
COLUMNS = ["customer_key", "full_name", "email", "province"]


def _audience() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_key": ["K1", "K2"],
            "full_name": ["Nguyễn Thị Hoa", "Đặng Văn Đức"],
            "email": ["hoa@shop.vn", None],
            "province": ["Hồ Chí Minh", "Đà Nẵng"],
        }
    )


def _dest(**options: Any) -> S3Files:
    dest = build_destination("s3_drop", DestinationConfig(kind="s3_files", options=options), CONFIG_FILE)
    assert isinstance(dest, S3Files)
    return dest


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:  # plain HTTP, no AWS SDK, like a browser
        body: bytes = response.read()
    return body


def test_uploads_under_run_date_and_the_presigned_link_downloads_the_same_bytes(
    s3_endpoint: str, s3_bucket: str
) -> None:
    dest = _dest(bucket=s3_bucket, prefix="/marketing/", endpoint_url=s3_endpoint, columns=COLUMNS)
    delivery = dest.deliver("vip", "VIP", _audience(), WINDOW)

    key = "marketing/2026-11-24/vip.csv"
    assert delivery.location == f"s3://{s3_bucket}/{key}"
    assert (delivery.destination, delivery.segment, delivery.members) == ("s3_drop", "vip", 2)
    expected = render(_audience(), COLUMNS, "csv")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    obj = s3.get_object(Bucket=s3_bucket, Key=key)
    assert obj["Body"].read() == expected
    assert obj["ContentType"].startswith("text/csv")
    assert obj["Metadata"] == {"segment": "vip", "run-date": "2026-11-24", "members": "2"}

    link = dest.links["vip"]
    assert dest.last_link == link
    assert parse_qs(urlsplit(link).query)["X-Amz-Expires"] == [str(72 * 3600)]  # the default: 3 days
    assert _get(link) == expected


def test_xlsx_with_encryption_and_keys_from_a_connection(
    s3_endpoint: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_FILES",
        json.dumps({"login": "AKIDFILES", "password": "files-secret", "extra": {"region_name": "us-east-1"}}),
    )
    dest = _dest(
        bucket=s3_bucket,
        prefix="",
        endpoint_url=s3_endpoint,
        connection="aws_files",
        format="xlsx",
        columns=COLUMNS,
        sse="AES256",
        link_expires_hours=168,
    )
    delivery = dest.deliver("vip", "Khách VIP", _audience(), WINDOW)
    assert delivery.location == f"s3://{s3_bucket}/2026-11-24/vip.xlsx"
    assert "Credential=AKIDFILES%2F" in dest.links["vip"]  # signed with the connection's key
    head = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").head_object(
        Bucket=s3_bucket, Key="2026-11-24/vip.xlsx"
    )
    assert head["ServerSideEncryption"] == "AES256"
    wb = openpyxl.load_workbook(io.BytesIO(_get(dest.links["vip"])))
    assert wb.sheetnames == ["Khách VIP"]
    assert list(wb.active.iter_rows(values_only=True))[1] == ("K1", "Nguyễn Thị Hoa", "hoa@shop.vn", "Hồ Chí Minh")


@pytest.mark.parametrize("hours", [169, 24 * 30])
def test_links_longer_than_seven_days_are_rejected_when_config_loads(hours: int) -> None:
    with pytest.raises(ConfigError) as exc:
        _dest(bucket="audiences", link_expires_hours=hours)
    msg = str(exc.value)
    assert "destinations.s3_drop.options.link_expires_hours" in msg
    assert f"link_expires_hours is {hours}" in msg and "7 days = 168 hours" in msg


def test_expiry_and_encryption_options_are_checked() -> None:
    assert _dest(bucket="audiences", link_expires_hours=168).options.link_expires_hours == 168
    with pytest.raises(ConfigError, match="at least 1"):
        _dest(bucket="audiences", link_expires_hours=0)
    with pytest.raises(ConfigError, match="kms_key_id is only used with sse: aws:kms"):
        _dest(bucket="audiences", kms_key_id="alias/audiences")


def test_missing_bucket_names_the_object_and_what_to_check(s3_endpoint: str) -> None:
    dest = _dest(bucket="no-such-bucket-here", endpoint_url=s3_endpoint, columns=COLUMNS)
    with pytest.raises(S3DeliveryError) as exc:
        dest.deliver("vip", "VIP", _audience(), WINDOW)
    assert "s3://no-such-bucket-here/audiences/2026-11-24/vip.csv" in str(exc.value)
    assert "NoSuchBucket" in str(exc.value) and "check the bucket option" in str(exc.value)
    assert dest.links == {}
