"""Normalize + hash 1,000,000 emails and 1,000,000 phones for Meta and Google (target: under 10 s in total).

``python -m bench.hashing_bench`` generates synthetic identifiers with a fixed seed (no personal data:
``user{i}@example.com`` variants with case and space noise, Gmail addresses with dots and ``+tags``, a few
malformed ones; phones in the four Vietnamese spellings, a few foreign numbers and junk), then times
``hash_once(<platform>_email(...))`` and ``hash_once(<platform>_phone(...))`` for Meta and Google, the way the
delivery step uses them. It prints one table with each figure against the 10 s budget, the peak RSS of this
process, and a spot check of a sample of rows against a scalar reference (``tasks.normalize.contact``,
``phonenumbers`` and ``hashlib`` one value at a time); the exit code is non-zero if the spot check fails.

The machine is shared and noisy: the ratio time/target is the figure to watch, absolute seconds are context.
Results go to ``var/bench/hashing.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import phonenumbers
import pyarrow.compute as pc

from tasks.normalize import hashing
from tasks.normalize.contact import normalize_email, normalize_phone

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "var" / "bench"
ROWS = 1_000_000
TARGET_S = 10.0
SEED = 20261124
SAMPLE = 3_000

# Vietnamese mobile prefixes (after the country code) and a few foreign numbers in E.164 with spacing.
VN_PREFIXES = np.array(
    [
        "32",
        "33",
        "34",
        "35",
        "36",
        "37",
        "38",
        "39",
        "56",
        "58",
        "59",
        "70",
        "76",
        "77",
        "78",
        "79",
        "81",
        "82",
        "83",
        "84",
        "85",
        "86",
        "88",
        "90",
        "91",
        "93",
        "94",
        "96",
        "97",
        "98",
    ]
)
FOREIGN = ["+1 (212) 555-{:04d}", "+44 20 7946 {:04d}", "+65 9123 {:04d}", "+81 90-1234-{:04d}"]
JUNK = ["n/a", "12345", "", "   ", "0000", "không có", "+84 12"]


def _rss_mib() -> float:
    """Current resident set, to tell the work's own memory from the interpreter and its imports."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_emails(rows: int, rng: np.random.Generator) -> pd.Series:
    """About 70 % plain example.com addresses with case/space noise, 25 % Gmail with dots and +tags, 3 %
    malformed, 2 % missing."""
    kind = rng.random(rows)
    noise = rng.integers(0, 4, rows)
    values: list[str | None] = []
    for i, (k, n) in enumerate(zip(kind.tolist(), noise.tolist(), strict=True)):
        if k < 0.70:
            email = f"user{i}@example.com"
            email = (email.upper(), f"  {email} ", f"User{i}@Example.COM", email)[n]
        elif k < 0.95:
            email = (
                f"first.last{i}@gmail.com",
                f"First.Last{i}+promo@GMAIL.com",
                f"f.l.{i}@googlemail.com",
                f" firstlast{i}@gmail.com",
            )[n]
        elif k < 0.98:
            email = (f"user{i}@", f"user {i}@example.com", f"user{i}.example.com", f"user{i}@@example.com")[n]
        else:
            email = None
        values.append(email)
    return pd.Series(values, dtype="str", name="email")


def make_phones(rows: int, rng: np.random.Generator) -> pd.Series:
    """Vietnamese mobiles in four spellings (E.164, '0xxx xxx xxx', '0xxx.xxx.xxx', '84xxxxxxxxx'), about 1 %
    foreign numbers written with '+', 1 % junk and 1 % missing."""
    national = np.char.add(
        VN_PREFIXES[rng.integers(0, len(VN_PREFIXES), rows)],
        [f"{x:07d}" for x in rng.integers(0, 10_000_000, rows).tolist()],
    )
    kind = rng.random(rows)
    form = rng.integers(0, 4, rows)
    values: list[str | None] = []
    for i, (n, k, f) in enumerate(zip(national.tolist(), kind.tolist(), form.tolist(), strict=True)):
        if k < 0.97:
            phone = (f"+84{n}", f"0{n[:3]} {n[3:6]} {n[6:]}", f"0{n[:3]}.{n[3:6]}.{n[6:]}", f"84{n}")[f]
        elif k < 0.98:
            phone = FOREIGN[f].format(i % 10_000)
        elif k < 0.99:
            phone = JUNK[i % len(JUNK)]
        else:
            phone = None
        values.append(phone)
    return pd.Series(values, dtype="str", name="phone")


# --------------------------------------------------------------------------------------
# Scalar reference for the spot check (one value at a time, no fast path)
# --------------------------------------------------------------------------------------


def _sha(value: str | None) -> str | None:
    return None if value is None else hashlib.sha256(value.encode()).hexdigest()


def ref_meta_email(raw: str | None) -> str | None:
    return _sha(normalize_email(raw))


def ref_google_email(raw: str | None) -> str | None:
    email = normalize_email(raw)
    if email is None:
        return None
    user, domain = email.split("@")
    if domain in ("gmail.com", "googlemail.com"):
        user = user.split("+")[0].replace(".", "")
    return _sha(f"{user}@{domain}") if user else None


def ref_e164(raw: str | None) -> str | None:
    """The hashed platforms' phone rule, one value at a time: normalize_phone; else, for a foreign number written
    with '+', E.164 when its length is possible; else digits written without '+' (10 or more) read as country
    code + number when that is valid."""
    if raw is None:
        return None
    e164 = normalize_phone(raw)
    if e164 is not None:
        return e164
    if re.match(r"^\s*\(?\+", raw):
        number = phonenumbers.parse(raw, "VN")
        if number.country_code != 84 and phonenumbers.is_possible_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        return None
    digits = re.sub(r"\D", "", raw)
    if len(digits) < 10 or digits.startswith("0"):
        return None
    try:
        number = phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException:
        return None
    return (
        phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        if phonenumbers.is_valid_number(number)
        else None
    )


def ref_meta_phone(raw: str | None) -> str | None:
    e164 = ref_e164(raw)
    return _sha(e164[1:]) if e164 else None


def ref_google_phone(raw: str | None) -> str | None:
    return _sha(ref_e164(raw))


# name -> (input column, vectorized normalizer, scalar reference of normalize+hash)
CASES: dict[str, tuple[str, Callable[[pd.Series], pd.Series], Callable[[str | None], str | None]]] = {
    "meta email": ("email", hashing.meta_email, ref_meta_email),
    "meta phone": ("phone", hashing.meta_phone, ref_meta_phone),
    "google email": ("email", hashing.google_email, ref_google_email),
    "google phone": ("phone", hashing.google_phone, ref_google_phone),
}
# Published examples (shared/test-vectors/hashing.json) plus the Vietnamese spellings, through the same calls.
KNOWN: list[tuple[str, str, str]] = [
    ("meta phone", "0912 345 678", hashlib.sha256(b"84912345678").hexdigest()),
    ("meta phone", "+1 (555) 987-6543", "1ef970831d7963307784fa8688e8fce101a15685d62aa765fed23f3a2c576a4e"),
    ("google phone", "84912345678", hashlib.sha256(b"+84912345678").hexdigest()),
    ("google phone", "   +1-800-555-0100", "fb4f73a6ec5fdb7077d564cdd22c3554b43ce49168550c3b12c547b78c517b30"),
    ("meta email", " Mary@Example.com ", "f1904cf1a9d73a55fa5de0ac823c4403ded71afd4c3248d00bdcd0866552bb79"),
    (
        "google email",
        "Jefferson.Loves.hiking@gmail.com",
        "515d2f967f73864e76937ab2b897210a86fd286016903b1b08c3da07c75f513e",
    ),
    ("google email", "user.name+NYC@Example.com", "f109a2a632fbcea5fc82049f50beed3d8621bf9034399f437fb622222acccdac"),
]


def run(name: str, data: dict[str, pd.Series]) -> tuple[pd.Series, float]:
    column, normalize, _ = CASES[name]
    started = time.perf_counter()
    hashed = hashing.hash_once(normalize(data[column]))
    return hashed, time.perf_counter() - started


def spot_check(data: dict[str, pd.Series], results: dict[str, pd.Series], rng: np.random.Generator) -> list[str]:
    """Rows where the vectorized result differs from the scalar reference (a sample plus the known values)."""
    problems: list[str] = []
    for name, (column, _, reference) in CASES.items():
        rows = rng.choice(len(data[column]), size=min(SAMPLE, len(data[column])), replace=False)
        for row in rows.tolist():
            raw = data[column].iloc[row]
            raw = None if pd.isna(raw) else raw
            got = results[name].iloc[row]
            got = None if pd.isna(got) else got
            if got != reference(raw):
                problems.append(f"{name}: row {row} {raw!r} -> {got!r}, expected {reference(raw)!r}")
    for name, raw, expected in KNOWN:
        got = hashing.hash_once(CASES[name][1](pd.Series([raw]))).iloc[0]
        if got != expected:
            problems.append(f"{name}: {raw!r} -> {got!r}, expected {expected!r}")
    return problems


def dedupe_probe(values: pd.Series) -> dict[str, float]:
    """Hashing the normalized emails one by one vs factorize + hash the distinct values + take back (context for
    the choice in tasks.normalize.hashing)."""
    normalized = hashing.meta_email(values).dropna()
    started = time.perf_counter()
    [hashlib.sha256(v.encode()).hexdigest() for v in normalized.tolist()]
    direct = time.perf_counter() - started
    started = time.perf_counter()
    codes, uniques = pd.factorize(normalized)
    digests = np.array([hashlib.sha256(v.encode()).hexdigest() for v in uniques.tolist()], dtype=object)
    digests[codes]
    deduped = time.perf_counter() - started
    return {"direct_s": direct, "factorize_s": deduped, "unique_share": len(uniques) / max(len(normalized), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS, help="emails and phones each (default 1,000,000)")
    parser.add_argument("--no-probe", action="store_true", help="skip the dedupe-vs-direct hashing probe")
    args = parser.parse_args()
    rng = np.random.default_rng(SEED)
    print(f"Hashing benchmark: {args.rows:,} emails + {args.rows:,} phones, seed {SEED}", flush=True)
    started = time.perf_counter()
    data = {"email": make_emails(args.rows, rng), "phone": make_phones(args.rows, rng)}
    print(f"synthetic data generated in {time.perf_counter() - started:.1f}s", flush=True)
    for name in CASES:  # imports, regex compilation and metadata load outside the measured runs
        run(name, {k: v.head(1000) for k, v in data.items()})
    baseline = _rss_mib()

    results: dict[str, pd.Series] = {}
    seconds: dict[str, float] = {}
    for name in CASES:
        results[name], seconds[name] = run(name, data)
        print(f"  {name:<13}{seconds[name]:>7.2f}s", flush=True)
    total = sum(seconds.values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # Diagnostic only: the private fast path, to report the share of phones that never reach phonenumbers.
    _, decided = hashing._fast_vn(pc.utf8_trim_whitespace(hashing._to_arrow(data["phone"])))
    fast_share = float(np.asarray(decided).mean())
    problems = spot_check(data, results, np.random.default_rng(SEED + 1))
    probe = None if args.no_probe else dedupe_probe(data["email"])

    header = f"{'step':<31}{'rows':>11}{'seconds':>9}{'rows/s':>12}{'of 10 s':>9}"
    print("\n" + header)
    print("-" * len(header))
    for name in CASES:
        print(
            f"{name + ' (normalize+hash)':<31}{args.rows:>11,}{seconds[name]:>9.2f}"
            f"{args.rows / seconds[name]:>12,.0f}{seconds[name] / TARGET_S:>9.2f}"
        )
    print(
        f"{'total (all four steps)':<31}{4 * args.rows:>11,}{total:>9.2f}{4 * args.rows / total:>12,.0f}"
        f"{total / TARGET_S:>9.2f}"
    )
    verdict = "met" if total < TARGET_S else "NOT met"
    print(f"\ntarget: total < {TARGET_S:.0f} s -> {total:.2f} s, time/target {total / TARGET_S:.2f} ({verdict})")
    print(f"peak RSS {peak:,.0f} MiB (process, incl. {baseline:,.0f} MiB of data and imports before the runs)")
    hashed_counts = {name: int(results[name].notna().sum()) for name in CASES}
    print(
        f"phones decided by the vectorized fast path: {fast_share:.1%} (the rest go through phonenumbers once per "
        f"distinct value); rows hashed: " + ", ".join(f"{k} {v:,}" for k, v in hashed_counts.items())
    )
    if probe:
        print(
            f"hashing {args.rows:,} emails directly {probe['direct_s']:.2f}s vs factorize+hash uniques+take back "
            f"{probe['factorize_s']:.2f}s ({probe['unique_share']:.0%} distinct)"
        )
    print(
        f"spot check ({SAMPLE:,} rows per step + {len(KNOWN)} published values vs a scalar reference): "
        + ("OK" if not problems else f"{len(problems)} FAILED")
    )
    for line in problems[:20]:
        print("  " + line)

    doc: dict[str, Any] = {
        "rows_each": args.rows,
        "cpus": os.cpu_count(),
        "seconds": seconds,
        "total_s": total,
        "target_s": TARGET_S,
        "time_over_target": total / TARGET_S,
        "peak_rss_mib": peak,
        "baseline_rss_mib": baseline,
        "fast_path_share_phones": fast_share,
        "hashed": hashed_counts,
        "dedupe_probe": probe,
        "spot_check_failures": problems,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "hashing.json").write_text(json.dumps(doc, indent=2))
    print(f"\nresults: {OUT / 'hashing.json'}")
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
