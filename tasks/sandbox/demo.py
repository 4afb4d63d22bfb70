"""The demo's platforms: every shipped platform destination synced to its contract server on loopback.

`make demo` must run the whole pipeline with no accounts and no network, and delivery to email
and ad platforms is most of what can go wrong in production. So the demo starts the same local
contract servers the tests use (auth, batch limits, hashing checks, minimum sizes enforced), points
a copy of the config at them — the platform destinations of destinations.yaml switched on, with
their segments unchanged — and runs the real DAGs: plans, batches, the ledger, TikTok's 1,000
minimum blocking a small audience, all as they would happen against the real APIs.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml

from tasks.sandbox.server import ContractServer

SECRET = "sandbox-secret-token"


def _servers() -> dict[str, tuple[ContractServer, Callable[[Any], dict[str, Any]], str]]:
    """kind -> (server, options pointing the client at it, the credential the server accepts)."""
    from tasks.sandbox.brevo import BrevoServer
    from tasks.sandbox.google import GoogleServer
    from tasks.sandbox.klaviyo import KlaviyoServer
    from tasks.sandbox.mailchimp import MailchimpServer
    from tasks.sandbox.meta import MetaServer
    from tasks.sandbox.sendgrid import SendGridServer
    from tasks.sandbox.tiktok import TikTokServer

    mailchimp, klaviyo, sendgrid, brevo = MailchimpServer(), KlaviyoServer(), SendGridServer(), BrevoServer()
    return {
        "mailchimp": (mailchimp, lambda s: {"list_id": s.list_id, "base_url": s.base_url}, mailchimp.api_key),
        "klaviyo": (klaviyo, lambda s: {"base_url": s.base_url, "poll_interval": 0.05}, klaviyo.api_key),
        "sendgrid": (sendgrid, lambda s: {"base_url": s.base_url, "poll_interval": 0.05}, sendgrid.api_key),
        "brevo": (brevo, lambda s: {"base_url": s.base_url, "poll_interval": 0.05}, brevo.api_key),
        "meta_custom_audience": (MetaServer(access_token=SECRET), lambda s: {"base_url": s.url}, SECRET),
        "google_customer_match": (
            GoogleServer(token=SECRET, user_lists=("0000000000",)),
            lambda s: {"base_url": s.url, "user_list_id": "0000000000", "poll_interval": 0.05},
            SECRET,
        ),
        "tiktok_customer_file": (
            TikTokServer(access_token=SECRET),
            lambda s: {"base_url": f"{s.url}/open_api/v1.3"},
            SECRET,
        ),
    }


@contextmanager
def sandbox(config_dir: Path, work: Path) -> Iterator[Path]:
    """Start the servers; yield a copy of ``config_dir`` whose platform destinations point at them."""
    target = work / "config-sandbox"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(config_dir, target)
    path = target / "destinations.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    servers = _servers()
    saved = dict(os.environ)
    with ExitStack() as stack:
        for spec in doc["destinations"].values():
            if spec.get("kind") not in servers:
                continue
            server, options, secret = servers[spec["kind"]]
            if server._httpd is None:
                server.start()
                stack.callback(server.stop)
            spec["enabled"] = True
            spec["options"] = {**spec.get("options", {}), **options(server)}
            conn = spec["options"]["connection"]
            os.environ[f"AIRFLOW_CONN_{conn.upper()}"] = json.dumps({"password": secret})
        path.write_text(
            "# Written by `audiences demo`: the platform destinations point at local contract servers.\n"
            + yaml.safe_dump(doc, allow_unicode=True, sort_keys=False),
            encoding="utf-8",
        )
        try:
            yield target
        finally:
            os.environ.clear()
            os.environ.update(saved)
