"""Chinese mobile numbers: one normal form, the carrier from its segment, masking for logs."""

from __future__ import annotations

import re
import unicodedata

from scheduler.exceptions import InvalidPhoneNumber

MOBILE = "mobile"
UNICOM = "unicom"
TELECOM = "telecom"
BROADNET = "broadnet"
CARRIERS = (MOBILE, UNICOM, TELECOM, BROADNET)

# National allocation table (2023), see DOMAIN.md. Longest prefix wins.
# Virtual operators (162, 165, 167, 170, 171) resell a host network's capacity and are
# counted against that host carrier, which is what quotas per carrier measure.
_PREFIXES: dict[str, str | None] = {}


def _add(carrier: str | None, *prefixes: str) -> None:
    for prefix in prefixes:
        _PREFIXES[prefix] = carrier


_add(MOBILE, *(f"134{d}" for d in "012345678"), "135", "136", "137", "138", "139")
_add(MOBILE, "147", "148", "150", "151", "152", "157", "158", "159", "172", "178")
_add(MOBILE, "182", "183", "184", "187", "188", "195", "197", "198", "165")
_add(MOBILE, "1703", "1705", "1706")
_add(UNICOM, "130", "131", "132", "145", "146", "155", "156", "166", "175", "176")
_add(UNICOM, "185", "186", "196", "167", "171", "1704", "1707", "1708", "1709")
_add(TELECOM, "133", "149", "153", "173", "177", "180", "181", "189", "190", "191")
_add(TELECOM, "193", "199", "162", "1700", "1701", "1702")
_add(TELECOM, *(f"1740{d}" for d in "012345"))
_add(BROADNET, "192")
# Satellite numbers: valid allocations, but not mobile phones an SMS campaign can reach.
_add(None, "1349", "174")

_SEPARATORS = re.compile(r"[\s\-()（）]")


def normalize(raw: str) -> str:
    """Return the 11-digit form of a Chinese mobile number, or raise InvalidPhoneNumber.

    Accepts spaces and dashes, `+86`, `0086` and `86` prefixes, full-width characters (as
    Chinese input methods type them) and Excel's trailing `.0` on a number stored as a float.
    """
    digits = _SEPARATORS.sub("", unicodedata.normalize("NFKC", raw).strip())
    if digits.endswith(".0"):
        digits = digits[:-2]
    if digits.startswith("+86"):
        digits = digits[3:]
    elif digits.startswith("0086"):
        digits = digits[4:]
    elif len(digits) == 13 and digits.startswith("86"):
        digits = digits[2:]
    # isascii: str.isdigit() also accepts other scripts' digits (٣, ३), which no gateway takes.
    if len(digits) != 11 or not (digits.isascii() and digits.isdigit()) or digits[0] != "1":
        raise InvalidPhoneNumber(f"not an 11-digit Chinese mobile number: {mask(raw)}")
    if _lookup(digits) is None:
        raise InvalidPhoneNumber(_unallocated(digits))
    return digits


def _unallocated(number: str) -> str:
    if number.startswith(("1349", "174")):
        return f"satellite number, not a mobile phone: {mask(number)}"
    return f"number segment not allocated to a mobile carrier: {mask(number)}"


def _lookup(number: str) -> str | None:
    for length in (5, 4, 3):
        prefix = number[:length]
        if prefix in _PREFIXES:
            return _PREFIXES[prefix]
    return None


def carrier_of(number: str) -> str:
    """The host carrier of a normalised number (virtual operators count as their host)."""
    carrier = _lookup(number)
    if carrier is None:
        raise InvalidPhoneNumber(_unallocated(number))
    return carrier


def mask(number: str) -> str:
    """138****5678: what logs and reports show of a number (personal information under PIPL)."""
    digits = re.sub(r"\D", "", number)
    if len(digits) >= 11:
        digits = digits[-11:]
        return f"{digits[:3]}****{digits[-4:]}"
    if len(digits) > 4:
        return f"{'*' * (len(digits) - 4)}{digits[-4:]}"
    return "****"


# A mobile number inside free text (a log line, a traceback, an SQL parameter list).
_IN_TEXT = re.compile(r"(?<!\d)(?:\+?86)?1\d{10}(?!\d)")


def mask_in_text(text: str) -> str:
    """Every mobile number in `text` masked as `mask` masks one (the log chain's processor)."""
    return _IN_TEXT.sub(lambda m: mask(m.group(0)), text)


def e164(number: str) -> str:
    return f"+86{number}"
