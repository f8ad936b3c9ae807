"""Number normalisation and carrier detection over the whole allocation table of DOMAIN.md."""

from __future__ import annotations

import pytest

from scheduler.exceptions import InvalidPhoneNumber
from scheduler.phones import carrier_of, e164, mask, normalize

# The national allocation table (2023) as DOMAIN.md gives it, virtual operators under the host
# carrier whose network they resell.
TABLE: dict[str, tuple[str, ...]] = {
    "mobile": (
        *(f"134{d}" for d in "012345678"),
        "135",
        "136",
        "137",
        "138",
        "139",
        "147",
        "148",
        "150",
        "151",
        "152",
        "157",
        "158",
        "159",
        "172",
        "178",
        "182",
        "183",
        "184",
        "187",
        "188",
        "195",
        "197",
        "198",
        # virtual operators on Mobile
        "165",
        "1703",
        "1705",
        "1706",
    ),
    "unicom": (
        "130",
        "131",
        "132",
        "145",
        "146",
        "155",
        "156",
        "166",
        "175",
        "176",
        "185",
        "186",
        "196",
        # virtual operators on Unicom
        "167",
        "171",
        "1704",
        "1707",
        "1708",
        "1709",
    ),
    "telecom": (
        "133",
        "149",
        "153",
        "173",
        *(f"1740{d}" for d in "012345"),
        "177",
        "180",
        "181",
        "189",
        "190",
        "191",
        "193",
        "199",
        # virtual operators on Telecom
        "162",
        "1700",
        "1701",
        "1702",
    ),
    "broadnet": ("192",),
}
CASES = [(prefix, carrier) for carrier, prefixes in TABLE.items() for prefix in prefixes]


def _number(prefix: str, tail: str = "13572468") -> str:
    return prefix + tail[: 11 - len(prefix)]


@pytest.mark.parametrize(("prefix", "carrier"), CASES)
def test_every_allocated_segment_maps_to_its_host_carrier(prefix: str, carrier: str) -> None:
    for tail in ("00000000", "99999999", "13572468"):
        number = _number(prefix, tail)
        assert normalize(number) == number
        assert carrier_of(number) == carrier


ALLOCATED = {p for _c, prefixes in TABLE.items() for p in prefixes}


def _allocated(number: str) -> bool:
    return any(number.startswith(p) for p in ALLOCATED)


def test_every_other_three_digit_segment_is_rejected() -> None:
    """Walk 100..199 and every 4/5-digit split: whatever the table does not list is refused."""
    for head in range(100, 200):
        for tail in range(100):
            number = f"{head}{tail:02d}" + "123456"
            if _allocated(number):
                assert carrier_of(normalize(number)) in TABLE
            else:
                with pytest.raises(InvalidPhoneNumber):
                    normalize(number)
                with pytest.raises(InvalidPhoneNumber):
                    carrier_of(number)


@pytest.mark.parametrize("number", ["13490000000", "13499999999", "17406123456", "17499999999"])
def test_satellite_numbers_are_rejected_as_such(number: str) -> None:
    with pytest.raises(InvalidPhoneNumber, match="satellite"):
        normalize(number)


@pytest.mark.parametrize(
    "raw",
    [
        "13800138000",
        "138 0013 8000",
        "138-0013-8000",
        " 138 0013 8000 ",
        "+86 13800138000",
        "+86-138-0013-8000",
        "+8613800138000",
        "8613800138000",
        "008613800138000",
        "(+86) 138 0013 8000",
        "（86）13800138000",
        "+86 138\u00a00013\u00a08000",
    ],
)
def test_written_forms_normalise_to_eleven_digits(raw: str) -> None:
    assert normalize(raw) == "13800138000"


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "1380013800",  # ten digits
        "138001380001",  # twelve
        "23800138000",  # does not start with 1
        "1380013800a",
        "电话未填",
        "+1 13800138000",
        "0571-12340",  # the survey hotline, a landline
        "057112340123",
        "10086",
        "11000000000",  # segment 110 is not a mobile allocation
        "14000000000",
        "+86 1380013800",
    ],
)
def test_what_is_not_a_chinese_mobile_number_is_rejected(raw: str) -> None:
    with pytest.raises(InvalidPhoneNumber):
        normalize(raw)


def test_rejection_messages_do_not_reveal_the_number() -> None:
    with pytest.raises(InvalidPhoneNumber) as info:
        normalize("13490001234")
    assert "13490001234" not in str(info.value)
    assert "134****1234" in str(info.value)
    with pytest.raises(InvalidPhoneNumber) as info:
        normalize("1380013800")
    assert "1380013800" not in str(info.value)


def test_mask_and_e164() -> None:
    assert mask("13800138000") == "138****8000"
    assert mask("+86 138 0013 8000") == "138****8000"
    assert mask("12") == "****"
    assert e164("13800138000") == "+8613800138000"


@pytest.mark.parametrize(
    "raw",
    [
        "１３８００１３８０００",
        "＋８６ １３８ ００１３ ８０００",
        "13800138000.0",
        "+86 138-0013-8000.0",
    ],
)
def test_full_width_and_excel_float_forms_normalise(raw: str) -> None:
    assert normalize(raw) == "13800138000"


@pytest.mark.parametrize("raw", ["138٠٠١٣٨٠٠٠", "138००१३८०००", "1.38001E+10", "13800138000.5"])
def test_digits_of_other_scripts_and_lossy_floats_are_rejected(raw: str) -> None:
    """Before the fix, str.isdigit() let Arabic-Indic and Devanagari digits through."""
    with pytest.raises(InvalidPhoneNumber):
        normalize(raw)
