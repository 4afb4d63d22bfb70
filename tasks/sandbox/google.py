"""A local Data Manager API that enforces Google's Customer Match contract (destinations.md).

Why a server and not a mock: what has to be right is the JSON Google receives — the destination, the
hashed identifiers (64 lowercase hex with ``encoding: HEX``), an address with all four of its required
parts, consent values from the ``CONSENT_GRANTED|CONSENT_DENIED`` enum, accepted Customer Match terms,
at most 10,000 members — and how the client reacts to Google's answers: 401 UNAUTHENTICATED,
400 INVALID_ARGUMENT with a reason, 429 RESOURCE_EXHAUSTED with a ``google.rpc.RetryInfo`` delay, and a
``requestId`` whose status is polled. Each user list is kept as a set of members (their hashed
identifiers) so tests assert what Google would hold.

``added``/``removed`` count, per identifier (``email:<hash>``, ``phone:<hash>``, ``address:<json>``),
every identifier a request got into / out of a list. Members whose consent was denied are accepted
but not added (status: PROCESSING_ERROR_REASON_DENIED_CONSENT); members carrying one of
``invalid_hashes`` are counted as failed records (PARTIAL_SUCCESS or FAILED).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from tasks.sandbox.server import ContractServer, Request, Response

MAX_MEMBERS = 10_000
MAX_IDENTIFIERS = 10
MAX_DESTINATIONS = 10
ACCOUNT_TYPES = ("GOOGLE_ADS", "DISPLAY_VIDEO_ADVERTISER", "DISPLAY_VIDEO_PARTNER", "DATA_PARTNER")
CONSENT = ("CONSENT_GRANTED", "CONSENT_DENIED")
DOMAIN = "datamanager.googleapis.com"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_REGION = re.compile(r"^[A-Z]{2}$")


class Invalid(Exception):
    def __init__(self, reason: str, message: str, field_path: str = "") -> None:
        super().__init__(message)
        self.reason, self.message, self.field_path = reason, message, field_path


def rpc_error(code: int, status: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status, "details": details or []}}


@dataclass
class Upload:
    kind: str  # "ingest" | "remove"
    destination: dict[str, Any]
    records: int
    identifiers: int
    errors: dict[str, int] = field(default_factory=dict)  # reason -> records
    polls: int = 0


class GoogleServer(ContractServer):
    platform = "google"

    def __init__(self, token: str = "google-test-token", user_lists: tuple[str, ...] = ("4400123",)) -> None:
        super().__init__()
        self._defaults = (token, tuple(user_lists))
        self.reset()
        self.route("POST", r"/v1/audienceMembers:ingest", self._ingest)
        self.route("POST", r"/v1/audienceMembers:remove", self._remove)
        self.route("GET", r"/v1/requestStatus:retrieve", self._status)

    def reset_state(self) -> None:
        self.token, user_lists = self._defaults
        self.lists: dict[str, dict[str, frozenset[str]]] = {ul: {} for ul in user_lists}  # list -> member -> ids
        self.uploads: dict[str, Upload] = {}
        self.processing_polls = 1  # requestStatus answers PROCESSING this many times before the final status
        self.invalid_hashes: set[str] = set()

    # --- test helpers -----------------------------------------------------------------------
    def members(self, user_list: str) -> set[frozenset[str]]:
        return set(self.lists.get(user_list, {}).values())

    def hashes(self, user_list: str, kind: str = "email") -> set[str]:
        """The identifiers of one kind ('email', 'phone', 'address') held in a list (hashes, or address JSON)."""
        prefix = f"{kind}:"
        return {i[len(prefix) :] for ids in self.lists.get(user_list, {}).values() for i in ids if i.startswith(prefix)}

    def throttle(self, times: int = 1, retry_delay: str | None = "2s", path: str = "") -> None:
        """The next ``times`` matching requests get 429 RESOURCE_EXHAUSTED (with google.rpc.RetryInfo)."""
        details: list[dict[str, Any]] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "RESOURCE_EXHAUSTED",
                "domain": "datamanager.googleapis.com",
            }
        ]
        if retry_delay is not None:
            details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay})
        body = rpc_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded for the Data Manager API; retry later.", details)
        self.fail_next(Response(429, body), times, path)

    def server_errors(self, times: int = 1, status: int = 500, path: str = "") -> None:
        body = rpc_error(status, "INTERNAL" if status == 500 else "UNAVAILABLE", "Internal error encountered.")
        self.fail_next(Response(status, body), times, path)

    def bodies(self, path: str = "/v1/audienceMembers") -> list[dict[str, Any]]:
        return [r.request.json() for r in self.recorded if r.request.path.startswith(path) and r.request.body]

    # --- handlers ---------------------------------------------------------------------------
    def _authorized(self, req: Request) -> Response | None:
        if (req.header("authorization") or "") != f"Bearer {self.token}":
            return Response(
                401,
                rpc_error(
                    401,
                    "UNAUTHENTICATED",
                    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
                    "or other valid authentication credential.",
                ),
            )
        return None

    def _ingest(self, req: Request, m: re.Match[str]) -> Response:
        return self._members(req, removing=False)

    def _remove(self, req: Request, m: re.Match[str]) -> Response:
        return self._members(req, removing=True)

    def _members(self, req: Request, removing: bool) -> Response:
        denied = self._authorized(req)
        if denied is not None:
            return denied
        try:
            body = req.json()
        except ValueError:
            return self._invalid(Invalid("INVALID_FORMAT", "Invalid JSON payload received."))
        try:
            destination, members, validate_only, consent = self._validate(body, removing)
        except Invalid as exc:
            return self._invalid(exc)
        request_id = str(uuid.uuid4())
        upload = Upload(
            "remove" if removing else "ingest",
            destination,
            len(members),
            sum(len(ids) for ids in members),
        )
        self.uploads[request_id] = upload
        if validate_only:
            return Response(200, {"requestId": request_id})
        held = self.lists[destination["productDestinationId"]]
        for ids in members:
            hashes = {i.split(":", 1)[1] for i in ids if not i.startswith("address:")}
            if hashes & self.invalid_hashes:
                upload.errors["PROCESSING_ERROR_REASON_INVALID_FORMAT"] = (
                    upload.errors.get("PROCESSING_ERROR_REASON_INVALID_FORMAT", 0) + 1
                )
                continue
            if removing:
                for key, held_ids in list(held.items()):
                    if held_ids & ids:
                        del held[key]
                for i in ids:
                    self.removed[i] += 1
            elif consent != ("CONSENT_GRANTED", "CONSENT_GRANTED"):
                upload.errors["PROCESSING_ERROR_REASON_DENIED_CONSENT"] = (
                    upload.errors.get("PROCESSING_ERROR_REASON_DENIED_CONSENT", 0) + 1
                )
            else:
                merged = ids
                for other, held_ids in list(held.items()):  # the same person again: merged, not duplicated
                    if held_ids & ids:
                        del held[other]
                        merged = merged | held_ids
                held[json.dumps(sorted(merged))] = merged
                for i in ids:
                    self.added[i] += 1
        return Response(200, {"requestId": request_id})

    def _invalid(self, exc: Invalid) -> Response:
        details: list[dict[str, Any]] = [
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": exc.field_path, "description": exc.message, "reason": exc.reason}],
            },
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": exc.reason,
                "domain": "datamanager.googleapis.com",
            },
        ]
        return Response(400, rpc_error(400, "INVALID_ARGUMENT", exc.message, details))

    def _validate(
        self, body: Any, removing: bool
    ) -> tuple[dict[str, Any], list[frozenset[str]], bool, tuple[str, str] | None]:
        if not isinstance(body, dict):
            raise Invalid("INVALID_FORMAT", "Invalid JSON payload received: expected an object.")
        destination = self._destination(body.get("destinations"))
        encoding = body.get("encoding")
        if encoding not in ("HEX", "BASE64"):
            raise Invalid("INVALID_ENUM_VALUE", "encoding must be HEX or BASE64.", "encoding")
        validate_only = body.get("validateOnly", False)
        if not isinstance(validate_only, bool):
            raise Invalid("INVALID_FORMAT", "validateOnly must be a boolean.", "validateOnly")
        consent: tuple[str, str] | None = None
        if not removing:
            raw = body.get("consent")
            if not isinstance(raw, dict) or "adUserData" not in raw or "adPersonalization" not in raw:
                raise Invalid(
                    "REQUIRED_FIELD_MISSING",
                    "consent.adUserData and consent.adPersonalization are required.",
                    "consent",
                )
            if raw["adUserData"] not in CONSENT or raw["adPersonalization"] not in CONSENT:
                raise Invalid(
                    "INVALID_ENUM_VALUE", "consent values must be CONSENT_GRANTED or CONSENT_DENIED.", "consent"
                )
            consent = (raw["adUserData"], raw["adPersonalization"])
            terms = body.get("termsOfService")
            if not isinstance(terms, dict) or terms.get("customerMatchTermsOfServiceStatus") != "ACCEPTED":
                raise Invalid(
                    "TERMS_AND_CONDITIONS_NOT_SIGNED",
                    "termsOfService.customerMatchTermsOfServiceStatus must be ACCEPTED for Customer Match.",
                    "termsOfService",
                )
        raw_members = body.get("audienceMembers")
        if not isinstance(raw_members, list) or not raw_members:
            raise Invalid("REQUIRED_FIELD_MISSING", "audienceMembers must be a non-empty list.", "audienceMembers")
        if len(raw_members) > MAX_MEMBERS:
            raise Invalid(
                "TOO_MANY_AUDIENCE_MEMBERS",
                f"The maximum number of audience members allowed per request is {MAX_MEMBERS}.",
                "audienceMembers",
            )
        members = [self._member(i, m, encoding) for i, m in enumerate(raw_members)]
        return destination, members, validate_only, consent

    def _destination(self, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, list) or not raw:
            raise Invalid("REQUIRED_FIELD_MISSING", "destinations must be a non-empty list.", "destinations")
        if len(raw) > MAX_DESTINATIONS:
            raise Invalid("TOO_MANY_DESTINATIONS", "At most 10 destinations per request.", "destinations")
        for i, dest in enumerate(raw):
            account = dest.get("operatingAccount") if isinstance(dest, dict) else None
            if not isinstance(account, dict) or account.get("accountType") not in ACCOUNT_TYPES:
                raise Invalid("INVALID_DESTINATION", "operatingAccount.accountType is invalid.", f"destinations[{i}]")
            if not str(account.get("accountId", "")).isdigit():
                raise Invalid("INVALID_DESTINATION", "operatingAccount.accountId is invalid.", f"destinations[{i}]")
            if dest.get("productDestinationId") not in self.lists:
                raise Invalid(
                    "INVALID_USER_LIST_ID", "The user list is invalid.", f"destinations[{i}].productDestinationId"
                )
        if len(raw) != 1:
            raise Invalid("TOO_MANY_DESTINATIONS", "This sandbox takes one destination per request.", "destinations")
        return dict(raw[0])

    def _member(self, index: int, raw: Any, encoding: str) -> frozenset[str]:
        where = f"audienceMembers[{index}]"
        ids = raw.get("userData", {}).get("userIdentifiers") if isinstance(raw, dict) else None
        if not isinstance(ids, list) or not ids:
            raise Invalid("INVALID_AUDIENCE_MEMBER", "userData.userIdentifiers must be a non-empty list.", where)
        if len(ids) > MAX_IDENTIFIERS:
            raise Invalid("TOO_MANY_USER_IDENTIFIERS", "At most 10 user identifiers per audience member.", where)
        out: set[str] = set()
        for ident in ids:
            if not isinstance(ident, dict) or len(ident) != 1:
                raise Invalid("INVALID_AUDIENCE_MEMBER", "Each user identifier has exactly one field.", where)
            ((kind, value),) = ident.items()
            if kind == "emailAddress":
                out.add("email:" + self._hash(value, encoding, where))
            elif kind == "phoneNumber":
                out.add("phone:" + self._hash(value, encoding, where))
            elif kind == "address":
                out.add("address:" + self._address(value, encoding, where))
            else:
                raise Invalid("INVALID_AUDIENCE_MEMBER", "Unknown user identifier.", where)
        return frozenset(out)

    def _hash(self, value: Any, encoding: str, where: str) -> str:
        if not isinstance(value, str):
            raise Invalid("INVALID_FORMAT", "Hashed identifiers are strings.", where)
        if encoding == "BASE64":
            try:
                value = base64.b64decode(value, validate=True).hex()
            except (binascii.Error, ValueError):
                raise Invalid("INVALID_BASE64_ENCODING", "A base64 encoded value is malformed.", where) from None
        if not _HEX64.match(value):  # never echo the value: it may be raw PII
            reason = "INVALID_SHA256_FORMAT" if re.fullmatch(r"[0-9a-fA-F]+", value) else "INVALID_HEX_ENCODING"
            raise Invalid(reason, "User identifiers must be SHA-256 hashes in lowercase hex.", where)
        return value

    def _address(self, value: Any, encoding: str, where: str) -> str:
        if not isinstance(value, dict):
            raise Invalid("INVALID_FORMAT", "address must be an object.", where)
        for part in ("givenName", "familyName", "regionCode", "postalCode"):
            if not isinstance(value.get(part), str) or not value[part]:
                raise Invalid("REQUIRED_FIELD_MISSING", f"address.{part} is required.", where)
        given = self._hash(value["givenName"], encoding, where)
        family = self._hash(value["familyName"], encoding, where)
        if not _REGION.match(value["regionCode"]):
            raise Invalid("INVALID_FORMAT", "address.regionCode must be ISO-3166-1 alpha-2.", where)
        if _HEX64.match(value["postalCode"]):
            raise Invalid("INVALID_POSTAL_CODE", "address.postalCode is sent unhashed.", where)
        return json.dumps([given, family, value["regionCode"], value["postalCode"]], separators=(",", ":"))

    def _status(self, req: Request, m: re.Match[str]) -> Response:
        denied = self._authorized(req)
        if denied is not None:
            return denied
        request_id = (req.query.get("requestId") or [""])[0]
        upload = self.uploads.get(request_id)
        if upload is None:
            return Response(404, rpc_error(404, "NOT_FOUND", "Request not found."))
        upload.polls += 1
        failed = sum(upload.errors.values())
        if upload.polls <= self.processing_polls:
            status = "PROCESSING"
        elif failed == 0:
            status = "SUCCESS"
        elif failed < upload.records:
            status = "PARTIAL_SUCCESS"
        else:
            status = "FAILED"
        counts = {"recordCount": str(upload.records), "userIdentifierCount": str(upload.identifiers)}
        per: dict[str, Any] = {"destination": upload.destination, "requestStatus": status}
        if upload.kind == "ingest":
            per["audienceMembersIngestionStatus"] = {"userDataIngestionStatus": counts}
        else:
            per["audienceMembersRemovalStatus"] = {"userDataRemovalStatus": counts}
        if status in ("PARTIAL_SUCCESS", "FAILED"):
            per["errorInfo"] = {
                "errorCounts": [{"recordCount": str(n), "reason": reason} for reason, n in upload.errors.items()]
            }
        return Response(200, {"requestStatusPerDestination": [per]})
