"""The protocol every audience platform (email and ad platforms) implements.

A platform client only knows how to talk to its API: create or find the remote audience, send one
batch of adds or removes, and say what the platform did with each member. Everything that must
hold for every platform — consent, suppression, the plan, the ledger, batching, resuming, splitting
a rejected batch — lives once in ``tasks.sync`` and never in a client.

Members reach a client as a DataFrame with the columns of ``MEMBER_COLUMNS`` (already consented
and not suppressed). Each client normalizes and hashes what its platform wants
(``tasks.normalize.hashing``) and reports, for every accepted member, the ``remote_ref`` it will
need to remove that member later (an email for Mailchimp, a profile id for Klaviyo, the hashed
identifiers for Meta): removals are sent from the ledger, so a customer deleted from the CRM can
still be removed from the audience this system put them in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol

import pandas as pd

Purpose = Literal["email_marketing", "sms_marketing", "ad_personalization", "none"]
Operation = Literal["add", "remove", "replace"]

# Columns of the member frame handed to ``add``/``replace``; values may be missing (None/NA).
# phone is E.164 ('+84912345678'); country is ISO-3166 alpha-2 upper case ('VN').
MEMBER_COLUMNS = [
    "customer_key",
    "email",
    "phone",
    "first_name",
    "last_name",
    "city",
    "postal_code",
    "country",
    "gender",
    "birthday",
    "email_opt_in",
    "sms_opt_in",
    "ads_opt_in",
]


@dataclass(frozen=True)
class Capabilities:
    """What the sync engine must respect for this platform (from destinations.md)."""

    purpose: Purpose
    max_batch: int  # members per add/remove request
    max_remove_batch: int | None = None  # when removes have a smaller limit (Klaviyo list remove: 1,000)
    min_audience_size: int = 0  # TikTok: an audience may never drop below 1,000
    supports_replace: bool = False  # Meta usersreplace
    needs: tuple[str, ...] = ("email",)  # a member without any of these cannot be sent

    @property
    def remove_batch(self) -> int:
        return self.max_remove_batch or self.max_batch


@dataclass(frozen=True)
class BatchRef:
    """Where a batch sits in its plan; Meta sessions and idempotent resumes need it."""

    plan_id: str
    operation: Operation
    seq: int  # 1-based within (plan, operation)
    batches: int  # total batches of this operation in the plan
    estimated_total: int  # members of this operation in the plan

    @property
    def is_last(self) -> bool:
        return self.seq == self.batches

    @property
    def session_id(self) -> int:
        """A positive int64 stable for (plan, operation): a resumed apply continues the same session."""
        import hashlib

        digest = hashlib.sha256(f"{self.plan_id}:{self.operation}".encode()).digest()
        return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF or 1


@dataclass
class BatchResult:
    """What the platform did with each member of one batch.

    accepted: customer_key -> remote_ref (what removing this member later needs)
    failed: customer_key -> reason (retried on the next run)
    suppressed: customer_key -> reason (unsubscribed / cleaned / compliance: never sent again)
    unmatched: members the platform accepted but only counted as invalid (Meta gives no itemisation)
    """

    accepted: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    suppressed: dict[str, str] = field(default_factory=dict)
    unmatched: int = 0


class DestinationError(Exception):
    """Base of errors a platform client raises; messages never contain personal data."""


class BatchRejected(DestinationError):
    """The platform refused the whole batch because of its content (HTTP 400 on a bad row).

    The sync engine splits the batch to isolate the rows that cause it.
    """


class DestinationUnavailable(DestinationError):
    """Retries are exhausted (throttling, 5xx, timeouts): stop this sync; the next run resumes it."""


class DestinationAuthError(DestinationError):
    """Credentials are missing, expired or refused: nothing will work until someone fixes them."""


class AudiencePlatform(Protocol):
    kind: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    name: str

    def ensure_audience(self, segment: str, title: str, known_id: str | None) -> str:
        """The platform's id of this segment's audience (list, tag, user list), creating it if needed."""
        ...

    def add(self, audience_id: str, members: pd.DataFrame, batch: BatchRef) -> BatchResult: ...

    def remove(self, audience_id: str, refs: pd.DataFrame, batch: BatchRef) -> BatchResult:
        """``refs`` has columns customer_key and remote_ref, as recorded when each member was added."""
        ...

    def replace(self, audience_id: str, members: pd.DataFrame, batch: BatchRef) -> BatchResult:
        """Only for ``capabilities.supports_replace``; the first batch starts the replacement."""
        ...

    def close(self) -> None: ...
