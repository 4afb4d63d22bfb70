"""Per-platform normalization and hashing of identifiers (emails, phones, names, places) for audience uploads.

Why one normalizer per destination: a match only happens when we hash exactly the string the platform hashed
on its side, and the platforms disagree (shared/destinations.md, checked against test-vectors/hashing.json):

* Meta wants phones as digits with the country code and no ``+`` (``84912345678``), names as lowercase letters
  only, and has no Gmail rule;
* Google wants phones in E.164 *with* ``+`` and, for gmail.com/googlemail.com only, drops dots and ``+suffix``
  before the ``@``;
* TikTok wants digits with the country code and no ``+``; Klaviyo/Brevo want plain E.164; Mailchimp keys members
  by the MD5 of the lowercase email.

So ``0912 345 678``, ``+84 912 345 678`` and ``84912345678`` must all give the same string *per platform*, and
names keep their Vietnamese letters (``Nguyễn`` -> ``nguyễn``; Meta's own SDK drops non-ASCII letters, which would
make every Vietnamese name hash like its unaccented twin).

Already hashed: some sources hand us SHA-256 hex instead of the raw value. Hashing it again would produce a
value no platform can match, so :func:`is_sha256` recognises 64 hex characters, the platform normalizers pass
such values through (lowercased), and :func:`hash_once` never hashes them a second time.

Why a fast path for phones: ``phonenumbers.parse`` + ``is_valid_number`` cost 20-50 µs per value, i.e. 20-50 s
for a million phones. Almost every phone we hold is Vietnamese in one of a few spellings (E.164, ``0`` + 9/10
digits, ``84`` + 9/10 digits), so those are decided on the whole column at once with Arrow string kernels and the
regular expressions of phonenumbers' own Vietnamese metadata (read at import time, so the fast path says "valid"
exactly when ``is_valid_number`` would). Only the values it cannot decide (foreign numbers, odd spellings, invalid
numbers) go through phonenumbers the way :func:`tasks.normalize.contact.normalize_phone` does, once per distinct
value. On the benchmark's million phones (97 % Vietnamese) that is 97 % of the rows decided without phonenumbers.

Phone rules (Vietnam is the default region):

* Vietnamese readings (national, ``84…``, ``+84…``) must be valid numbers, so every spelling agrees on every
  platform, and so do valid foreign numbers written with their country code (``+`` or ``00``);
* for the hashed platforms only (Meta, Google, TikTok), whose own normalizers take the digits as given:
  a foreign number written with its country code is kept when its length is possible for that country (Meta's
  guide uses the fictional ``+1 (555) 987-6543``, which phonenumbers calls invalid), and at least 10 digits
  written without ``+`` that are no valid Vietnamese number are read as "country code included" when that is a
  valid number (TikTok's documented form: ``374-93-828222`` -> ``37493828222``). A wrong guess there costs a
  hash that matches nobody;
* :func:`e164_phone` feeds SMS (Klaviyo, Brevo), where a guess would text a stranger: valid numbers only,
  Vietnamese unless the country code is written.

Conventions: inputs are Series (or anything ``pd.Series`` accepts) of strings; other scalars are coerced
(integers and integral floats to their digits, e.g. phones read as numbers), anything unusable becomes NA and
nothing raises. Results keep the input's index and name and use pandas' default string dtype ``str`` (missing
values are NaN there, as in any ``str`` column: test with ``pd.isna``). Regular expressions here are RE2 (Arrow
kernels), not Python ``re``.

Hashing is one ``hashlib`` call per value, on UTF-8 bytes taken straight from Arrow. Deduplicating first does
not pay: on a million distinct emails ``factorize`` plus the take-back cost more than hashing every value
(``python -m bench.hashing_bench`` prints both), and audiences repeat little, so values are hashed as they come.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc
from phonenumbers import CountryCodeSource, NumberParseException, PhoneMetadata, PhoneNumberDesc

from tasks.normalize.contact import EMAIL_PATTERN

__all__ = [
    "DEFAULT_REGION",
    "e164_phone",
    "google_email",
    "google_name",
    "google_phone",
    "hash_once",
    "is_sha256",
    "mailchimp_subscriber_hash",
    "md5_hex",
    "meta_city",
    "meta_country",
    "meta_email",
    "meta_gender",
    "meta_name",
    "meta_phone",
    "sha256_hex",
    "split_vietnamese_name",
    "tiktok_email",
    "tiktok_phone",
]

DEFAULT_REGION = "VN"
_TEXT = pa.large_string()  # what pandas' "str" dtype holds, so no cast on the way in or out
_SHA256 = r"^[0-9a-fA-F]{64}$"
_NOT_LETTER = r"[^\p{L}\p{M}]+"  # combining marks stay: they belong to the letter they follow
_SPACES = r"[\s\p{Z}]+"
_GENDER = {"m": "m", "male": "m", "nam": "m", "f": "f", "female": "f", "nữ": "f", "nu": "f"}

# --------------------------------------------------------------------------------------
# Series <-> Arrow
# --------------------------------------------------------------------------------------


def _coerce(value: Any) -> str | None:
    """One non-string cell as text, or None: phones often arrive as numbers (84912345678 or 912345678.0)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return None


def _as_series(values: object) -> pd.Series:
    return values if isinstance(values, pd.Series) else pd.Series(values)


def _to_arrow(series: pd.Series) -> pa.LargeStringArray:
    """The column as one Arrow large_string array (no copy for pandas' own "str" dtype)."""
    dtype = series.dtype
    arrow_text = (isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow") or (
        isinstance(dtype, pd.ArrowDtype) and pa.types.is_string(dtype.pyarrow_dtype)
    )
    if arrow_text:
        arr = pa.array(series.array)
    else:
        arr = pa.array([_coerce(v) for v in series.to_numpy(dtype=object)], type=_TEXT)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr if arr.type == _TEXT else arr.cast(_TEXT)


_KEEP = object()


def _to_series(arr: pa.Array, like: pd.Series, name: object = _KEEP) -> pd.Series:
    """Back to pandas' "str" dtype with the input's index (and name)."""
    values = pd.array(arr if arr.type == _TEXT else arr.cast(_TEXT), dtype="str")
    return pd.Series(values, index=like.index, name=like.name if name is _KEEP else name)


def _apply(values: object, op: Callable[[pa.Array], pa.Array]) -> pd.Series:
    series = _as_series(values)
    return _to_series(op(_to_arrow(series)), series)


# --------------------------------------------------------------------------------------
# Arrow building blocks
# --------------------------------------------------------------------------------------


def _null_if_empty(arr: pa.Array) -> pa.Array:
    return pc.if_else(pc.equal(pc.binary_length(arr), 0), pa.scalar(None, _TEXT), arr)


def _sha256_mask(arr: pa.Array) -> pa.Array:
    return pc.fill_null(pc.match_substring_regex(pc.utf8_trim_whitespace(arr), _SHA256), False)


def _keep_hashed(raw: pa.Array, normalized: pa.Array) -> pa.Array:
    """Values already SHA-256 hex pass through (trimmed, lowercased) instead of being normalized into junk."""
    mask = _sha256_mask(raw)
    if not pc.any(mask).as_py():
        return normalized
    return pc.if_else(mask, pc.ascii_lower(pc.utf8_trim_whitespace(raw)), normalized)


def _hex_digest(arr: pa.Array, new: Callable[[bytes], Any]) -> pa.Array:
    """Lowercase hex digest of each value's UTF-8 bytes; nulls stay null."""
    data = pc.cast(arr, pa.large_binary()).to_pylist()
    return pa.array([None if b is None else new(b).hexdigest() for b in data], type=_TEXT)


def _clean_email(arr: pa.Array) -> pa.Array:
    """Trim + lowercase; NA unless it has the syntax of tasks.normalize.contact.normalize_email."""
    email = pc.utf8_lower(pc.utf8_trim_whitespace(arr))
    return pc.if_else(pc.match_substring_regex(email, EMAIL_PATTERN), email, pa.scalar(None, _TEXT))


def _nfc(arr: pa.Array) -> pa.Array:
    """One spelling per letter: 'ễ' typed as e + two combining marks and as one code point hash alike."""
    return pc.utf8_normalize(arr, form="NFC")


def _letters_only(arr: pa.Array) -> pa.Array:
    return _null_if_empty(pc.replace_substring_regex(pc.utf8_lower(_nfc(arr)), _NOT_LETTER, ""))


# --------------------------------------------------------------------------------------
# Phones
# --------------------------------------------------------------------------------------

_Rule = tuple[str, list[int]]  # anchored national-number pattern (RE2), possible lengths


def _vn_rules() -> tuple[int, _Rule, list[_Rule]]:
    """Country code, general rule and mobile/fixed-line rules from phonenumbers' own metadata for VN, so the
    fast path follows the library (and its updates) instead of a hand-copied numbering plan."""
    meta = PhoneMetadata.metadata_for_region(DEFAULT_REGION)
    general = meta.general_desc if meta is not None else None
    if meta is None or meta.country_code is None or general is None or general.national_number_pattern is None:
        raise RuntimeError(f"phonenumbers has no usable metadata for {DEFAULT_REGION}")
    general_lengths = [n for n in general.possible_length if n > 0]

    def rule(desc: PhoneNumberDesc) -> _Rule:
        lengths = [n for n in desc.possible_length if n > 0] or general_lengths
        return f"^(?:{desc.national_number_pattern})$", lengths

    types = [rule(d) for d in (meta.mobile, meta.fixed_line) if d is not None and d.national_number_pattern]
    return meta.country_code, rule(general), types


_VN_COUNTRY_CODE, _VN_GENERAL, _VN_TYPES = _vn_rules()
_VN_CODE = str(_VN_COUNTRY_CODE)  # "84"


def _matches(national: pa.Array, rule: _Rule) -> pa.Array:
    pattern, lengths = rule
    length_ok = pc.is_in(pc.binary_length(national), value_set=pa.array(lengths, pa.int64()))
    return pc.and_(length_ok, pc.match_substring_regex(national, pattern))


def _vn_valid(national: pa.Array) -> pa.Array:
    """What phonenumbers.is_valid_number says for a Vietnamese national number, for mobile and fixed-line
    numbers (other types are left to phonenumbers): it matches the general pattern and a type's pattern."""
    by_type = _matches(national, _VN_TYPES[0])
    for rule in _VN_TYPES[1:]:
        by_type = pc.or_(by_type, _matches(national, rule))
    return pc.fill_null(pc.and_(_matches(national, _VN_GENERAL), by_type), False)


_OTHER, _DIGIT, _SEPARATOR, _PLUS = 0, 1, 2, 3
_BYTE_KIND = np.zeros(256, dtype=np.uint8)  # every byte not listed (letters, UTF-8 of non-ASCII) is "other"
_BYTE_KIND[np.frombuffer(b"0123456789", dtype=np.uint8)] = _DIGIT
_BYTE_KIND[np.frombuffer(b" ().-/", dtype=np.uint8)] = _SEPARATOR
_BYTE_KIND[ord("+")] = _PLUS


def _scan(text: pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """(ASCII digits of each value, count of bytes that are neither digits, separators ' ().-/' nor '+',
    count of '+'), from one pass of numpy over the Arrow buffers: a regular-expression replace of the non-digits
    alone costs about three times the whole scan on a million phones."""
    text = pa.concat_arrays([text]) if text.offset else text  # own buffers, offset 0
    _, offsets_buf, data_buf = text.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[: len(text) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.empty(0, np.uint8)
    data = data[offsets[0] : offsets[-1]]
    starts = offsets[:-1] - offsets[0]
    nonempty = np.diff(offsets) > 0
    kind = _BYTE_KIND[data]

    def per_value(mask: np.ndarray) -> np.ndarray:
        if not len(data):
            return np.zeros(len(text), dtype=np.int64)
        # reduceat sums data[starts[i]:starts[i+1]]; an empty value would get one byte instead of 0
        counts = np.add.reduceat(mask.view(np.uint8), np.minimum(starts, len(data) - 1), dtype=np.int64)
        return np.where(nonempty, counts, 0)

    is_digit = kind == _DIGIT
    digit_offsets = np.concatenate(([0], np.cumsum(per_value(is_digit))))
    validity = pc.is_valid(text).buffers()[1]
    digits = pa.LargeStringArray.from_buffers(
        len(text), pa.py_buffer(digit_offsets), pa.py_buffer(data[is_digit].tobytes()), validity
    )
    return digits, per_value(kind == _OTHER), per_value(kind == _PLUS)


def _fast_vn(text: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(E.164, decided) for the common Vietnamese spellings of trimmed values, all on the whole column.

    Forms read, mirroring normalize_phone: '+84' + national; '84' + 9/10 digits without '+' (normalize_phone reads
    84 followed by at least 9 digits as the country code); '0' + 9/10 digits; 9/10 digits without a leading 0;
    digits may be separated by ' ().-/' and a single '+' may only lead ('+84…' or '(+84)…'). A row is decided only
    when the national number is a valid mobile or fixed-line number; everything else is left to phonenumbers.
    """
    digits, other, pluses = _scan(text)
    leading_plus = pc.fill_null(pc.or_(pc.starts_with(text, "+"), pc.starts_with(text, "(+")), False)
    plus = pc.and_(pa.array(pluses == 1), leading_plus)
    shape_ok = pa.array((other == 0) & (pluses <= 1))
    shape_ok = pc.and_(shape_ok, pc.or_(pa.array(pluses == 0), plus))
    size = pc.binary_length(digits)
    cc = pc.fill_null(pc.starts_with(digits, _VN_CODE), False)
    zero = pc.fill_null(pc.starts_with(digits, "0"), False)
    long = pc.is_in(size, value_set=pa.array([11, 12], pa.int64()))  # 84 + 9 (mobile) or 10 (landline)
    short = pc.is_in(size, value_set=pa.array([9, 10], pa.int64()))
    national_len = pc.is_in(size, value_set=pa.array([10, 11], pa.int64()))
    with_cc = pc.and_(cc, long)
    with_zero = pc.and_(pc.and_(pc.invert(plus), zero), national_len)
    bare = pc.and_(pc.and_(pc.invert(plus), pc.invert(zero)), short)
    national = pc.if_else(
        with_cc,
        pc.utf8_slice_codeunits(digits, len(_VN_CODE)),
        pc.if_else(with_zero, pc.utf8_slice_codeunits(digits, 1), digits),
    )
    form_ok = pc.and_(shape_ok, pc.or_(with_cc, pc.or_(with_zero, bare)))
    decided = pc.fill_null(pc.and_(form_ok, _vn_valid(national)), False)
    return pc.binary_replace_slice(national, 0, 0, "+" + _VN_CODE), decided


_EXPLICIT_CC = (CountryCodeSource.FROM_NUMBER_WITH_PLUS_SIGN, CountryCodeSource.FROM_NUMBER_WITH_IDD)
_NON_DIGIT = re.compile(r"\D")
_E164 = phonenumbers.PhoneNumberFormat.E164
# A Vietnamese number missing its leading 0 has 9 (mobile) or 10 (landline) digits; country code + number
# written without '+' is read only from 10 digits on, and only when no Vietnamese reading is valid.
_MIN_IMPLIED_DIGITS = 10


def _slow_e164(raw: str, for_hashing: bool) -> str | None:
    """One value the fast path could not decide, parsed once (see the module docstring for the rules).

    The first reading is tasks.normalize.contact.normalize_phone's, inlined so that foreign numbers are parsed
    once rather than twice (the tests check the two agree).
    """
    text = raw.strip()
    digits = _NON_DIGIT.sub("", text)
    if not digits:
        return None
    if not text.startswith("+") and digits.startswith(_VN_CODE) and len(digits) >= 11:
        text = "+" + digits
    try:
        number = phonenumbers.parse(text, DEFAULT_REGION, keep_raw_input=True)
    except NumberParseException:
        number = None
    if number is not None:
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, _E164)
        if number.country_code_source in _EXPLICIT_CC:  # the country code was written: no other reading
            foreign = number.country_code != _VN_COUNTRY_CODE
            if for_hashing and foreign and phonenumbers.is_possible_number(number):
                return phonenumbers.format_number(number, _E164)
            return None
    implied = phonenumbers.normalize_digits_only(text)
    if not for_hashing or len(implied) < _MIN_IMPLIED_DIGITS or implied.startswith("0"):
        return None
    try:  # written without '+' but with the country code ('374-93-828222')
        number = phonenumbers.parse("+" + implied, None)
    except NumberParseException:
        return None
    return phonenumbers.format_number(number, _E164) if phonenumbers.is_valid_number(number) else None


def _phones(arr: pa.Array, *, for_hashing: bool) -> pa.Array:
    """E.164 ('+84912345678') per value, or null; the fast path first, phonenumbers once per undecided value."""
    text = pc.utf8_trim_whitespace(arr)
    fast, decided = _fast_vn(text)
    result = pc.if_else(decided, fast, pa.scalar(None, _TEXT))
    undecided = pc.and_(pc.invert(decided), pc.is_valid(text))
    if not pc.any(undecided).as_py():
        return result
    encoded = pc.dictionary_encode(pc.filter(text, undecided))
    solved = pa.array([_slow_e164(v, for_hashing) for v in encoded.dictionary.to_pylist()], type=_TEXT)
    return pc.replace_with_mask(result, undecided, pc.take(solved, encoded.indices))


def _without_plus(e164: pa.Array) -> pa.Array:
    return pc.utf8_slice_codeunits(e164, 1)


# --------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------


def sha256_hex(values: pd.Series) -> pd.Series:
    """Lowercase hex SHA-256 of each value's UTF-8 bytes, exactly as given; NA stays NA."""
    return _apply(values, lambda arr: _hex_digest(arr, hashlib.sha256))


def md5_hex(values: pd.Series) -> pd.Series:
    """Lowercase hex MD5 of each value's UTF-8 bytes, exactly as given; NA stays NA."""
    return _apply(values, lambda arr: _hex_digest(arr, hashlib.md5))


def is_sha256(values: pd.Series) -> pd.Series:
    """True where the value (ignoring surrounding spaces) is 64 hex characters of either case: already hashed."""
    series = _as_series(values)
    mask = _sha256_mask(_to_arrow(series))
    return pd.Series(mask.to_numpy(zero_copy_only=False).astype(bool), index=series.index, name=series.name)


def hash_once(normalized: pd.Series) -> pd.Series:
    """SHA-256 hex of normalized values, except values already SHA-256 hex, which pass through lowercased.

    NA and blank strings give NA: the hash of '' is a valid-looking identifier that matches nobody.
    """
    series = _as_series(normalized)
    arr = _to_arrow(series)
    trimmed = pc.utf8_trim_whitespace(arr)
    hashed = pc.fill_null(pc.match_substring_regex(trimmed, _SHA256), False)
    skip = pc.or_(hashed, pc.fill_null(pc.equal(pc.binary_length(trimmed), 0), False))
    out = _hex_digest(pc.if_else(skip, pa.scalar(None, _TEXT), arr) if pc.any(skip).as_py() else arr, hashlib.sha256)
    if pc.any(hashed).as_py():
        out = pc.if_else(hashed, pc.ascii_lower(trimmed), out)
    return _to_series(out, series)


# --------------------------------------------------------------------------------------
# Meta Custom Audiences
# --------------------------------------------------------------------------------------


def meta_email(values: pd.Series) -> pd.Series:
    """Trim + lowercase, NA unless it looks like an email (no Gmail dot rule)."""
    return _apply(values, lambda arr: _keep_hashed(arr, _clean_email(arr)))


def meta_phone(values: pd.Series) -> pd.Series:
    """Digits with the country code, no '+', no leading zeros: '0912 345 678' -> '84912345678'."""
    return _apply(values, lambda arr: _keep_hashed(arr, _without_plus(_phones(arr, for_hashing=True))))


def meta_name(values: pd.Series) -> pd.Series:
    """Lowercase letters only, Vietnamese letters kept: 'Nguyễn' -> 'nguyễn', "O'Neil" -> 'oneil'."""
    return _apply(values, lambda arr: _keep_hashed(arr, _letters_only(arr)))


def meta_city(values: pd.Series) -> pd.Series:
    """Lowercase letters only, no spaces or punctuation: 'Hồ Chí Minh' -> 'hồchíminh'."""
    return _apply(values, lambda arr: _keep_hashed(arr, _letters_only(arr)))


def _country(arr: pa.Array) -> pa.Array:
    code = pc.ascii_lower(pc.utf8_trim_whitespace(arr))
    ok = pc.match_substring_regex(code, r"^[a-z]{2}$")
    return _keep_hashed(arr, pc.if_else(ok, code, pa.scalar(None, _TEXT)))


def meta_country(values: pd.Series) -> pd.Series:
    """ISO-3166 alpha-2, lowercase: 'VN' -> 'vn'; anything but two letters ('United States') -> NA."""
    return _apply(values, _country)


def _gender(arr: pa.Array) -> pa.Array:
    word = pc.utf8_lower(_nfc(pc.utf8_trim_whitespace(arr)))
    keys = pa.array(list(_GENDER), _TEXT)
    codes = pa.array(list(_GENDER.values()), _TEXT)
    return _keep_hashed(arr, pc.take(codes, pc.index_in(word, value_set=keys)))


def meta_gender(values: pd.Series) -> pd.Series:
    """'m' or 'f' from m/f/male/female and Vietnamese nam/nữ (also unaccented 'nu'); anything else NA."""
    return _apply(values, _gender)


# --------------------------------------------------------------------------------------
# Google Customer Match (Data Manager API)
# --------------------------------------------------------------------------------------


def _google_email(arr: pa.Array) -> pa.Array:
    email = _clean_email(arr)
    gmail = pc.fill_null(pc.or_(pc.ends_with(email, "@gmail.com"), pc.ends_with(email, "@googlemail.com")), False)
    if pc.any(gmail).as_py():  # fold only the Gmail rows: the regexes cost more than the filter
        sub = pc.filter(email, gmail)
        user = pc.replace_substring(pc.replace_substring_regex(sub, r"(?:\+[^@]*)?@.*$", ""), ".", "")
        domain = pc.replace_substring_regex(sub, r"^[^@]*@", "")
        joined = pc.binary_join_element_wise(user, domain, pa.scalar("@", _TEXT))
        folded = pc.if_else(pc.greater(pc.binary_length(user), 0), joined, pa.scalar(None, _TEXT))
        email = pc.replace_with_mask(email, gmail, folded)
    return _keep_hashed(arr, email)


def google_email(values: pd.Series) -> pd.Series:
    """Trim + lowercase; for gmail.com/googlemail.com also drop '.' and '+suffix' before the '@'."""
    return _apply(values, _google_email)


def google_phone(values: pd.Series) -> pd.Series:
    """E.164 with '+': '   +1-800-555-0100' -> '+18005550100', '0912345678' -> '+84912345678'."""
    return _apply(values, lambda arr: _keep_hashed(arr, _phones(arr, for_hashing=True)))


def _google_name(arr: pa.Array) -> pa.Array:
    return _keep_hashed(arr, _null_if_empty(pc.utf8_lower(_nfc(pc.utf8_trim_whitespace(arr)))))


def google_name(values: pd.Series) -> pd.Series:
    """Trim + lowercase (given or family name); letters typed decomposed are composed (NFC) first."""
    return _apply(values, _google_name)


# --------------------------------------------------------------------------------------
# TikTok
# --------------------------------------------------------------------------------------


def tiktok_email(values: pd.Series) -> pd.Series:
    """Trim + lowercase, NA unless it looks like an email."""
    return _apply(values, lambda arr: _keep_hashed(arr, _clean_email(arr)))


def tiktok_phone(values: pd.Series) -> pd.Series:
    """Digits with the country code, no '+': '374-93-828222' -> '37493828222', '0912345678' -> '84912345678'."""
    return _apply(values, lambda arr: _keep_hashed(arr, _without_plus(_phones(arr, for_hashing=True))))


# --------------------------------------------------------------------------------------
# Email platforms (plain values)
# --------------------------------------------------------------------------------------


def mailchimp_subscriber_hash(values: pd.Series) -> pd.Series:
    """Mailchimp's member key: MD5 hex of the trimmed, lowercased email; NA for anything not an email."""
    return _apply(values, lambda arr: _hex_digest(_clean_email(arr), hashlib.md5))


def e164_phone(values: pd.Series) -> pd.Series:
    """'+84912345678' (Klaviyo phone_number, Brevo SMS); NA unless a valid number: these ones get messages."""
    return _apply(values, lambda arr: _phones(arr, for_hashing=False))


def split_vietnamese_name(full_names: pd.Series) -> pd.DataFrame:
    """Vietnamese full names, family name first, as first_name (given name: the last word) and last_name
    (family name: the first word): 'Nguyễn Văn An' -> first 'An', last 'Nguyễn'. Middle names are dropped; a single
    word is a first_name only; extra spaces are removed; case is kept (these are sent as plain text)."""
    series = _as_series(full_names)
    spaced = pc.replace_substring_regex(_nfc(_to_arrow(series)), _SPACES, " ")
    name = _null_if_empty(pc.utf8_trim_whitespace(spaced))
    several = pc.fill_null(pc.match_substring(name, " "), False)
    first = pc.replace_substring_regex(name, r"^.* ", "")
    last = pc.if_else(several, pc.replace_substring_regex(name, r" .*$", ""), pa.scalar(None, _TEXT))
    return pd.DataFrame(
        {"first_name": _to_series(first, series, name=None), "last_name": _to_series(last, series, name=None)},
        index=series.index,
    )
