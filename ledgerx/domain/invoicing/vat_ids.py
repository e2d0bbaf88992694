"""Whether a value looks like an EU VAT identification number of a given member state.

Format only: the published per-state structures (the European Commission's VIES list). No check
digits are verified, on purpose: a false "invalid" here would charge VAT to a business that owes
none, check-digit rules change (the Netherlands' sole-proprietor numbers since 2020 fail the old
mod 11 test), and only VIES can say a number is actually registered.
"""

from __future__ import annotations

import re

# Body patterns after the prefix, by ISO 3166-1 country code (upper case, already stripped of
# spaces, dots and dashes).
_BODIES: dict[str, str] = {
    "AT": r"U\d{8}",
    "BE": r"[01]\d{9}",  # 0 for the old enterprise numbers, 1 since 2023
    "BG": r"\d{9,10}",
    "CY": r"\d{8}[A-Z]",
    "CZ": r"\d{8,10}",
    "DE": r"\d{9}",
    "DK": r"\d{8}",
    "EE": r"\d{9}",
    "ES": r"[A-Z]\d{7}[A-Z0-9]|\d{8}[A-Z]",  # a letter first or last (or both): CIF, NIE, DNI
    "FI": r"\d{8}",
    "FR": r"[0-9A-HJ-NP-Z]{2}\d{9}",  # a 2-character key (no I or O), then the 9-digit SIREN
    "GR": r"\d{9}",
    "HR": r"\d{11}",
    "HU": r"\d{8}",
    "IE": r"\d{7}[A-W][A-IW]?|\d[A-Z+*]\d{5}[A-W]",  # the current form, and the old one
    "IT": r"\d{11}",
    "LT": r"\d{9}|\d{12}",
    "LU": r"\d{8}",
    "LV": r"\d{11}",
    "MT": r"\d{8}",
    "NL": r"\d{9}B\d{2}",
    "PL": r"\d{10}",
    "PT": r"\d{9}",
    "RO": r"[1-9]\d{1,9}",
    "SE": r"\d{10}01",  # the 10-digit organisation number, then 01
    "SI": r"\d{8}",
    "SK": r"\d{10}",
}

# The VAT prefix is the ISO code except for Greece, whose VAT numbers start with EL (not GR).
_PREFIX = {country: ("EL" if country == "GR" else country) for country in _BODIES}

# ASCII: \d would otherwise take any script's digits.
_PATTERNS = {country: re.compile(body, re.ASCII) for country, body in _BODIES.items()}

COUNTRIES = frozenset(_BODIES)  # the EU member states (ISO codes: Greece is GR)

_SEPARATORS = re.compile(r"[\s.\-]+")


def normalize(value: str) -> str:
    """The value as compared: upper case, without spaces, dots and dashes."""
    return _SEPARATORS.sub("", value).upper()


def valid_looking(value: str, country: str) -> bool:
    """Whether `value` has the format of an EU VAT number of `country` (ISO code, either case;
    "EL" is taken for Greece too). An unknown or non-EU country gives False."""
    code = country.strip().upper()
    if code == "EL":
        code = "GR"
    pattern = _PATTERNS.get(code)
    if pattern is None:
        return False
    number = normalize(value)
    # The prefix is optional, but a value that starts with two letters is read as prefixed. Only a
    # French number without its prefix can start with two letters (a letter key), and without this a
    # German "DE" + 9 digits would pass as French (key "DE") and "FR" + SIREN, key missing, too.
    if number[:2].isalpha():
        if not number.startswith(_PREFIX[code]):
            return False
        number = number[2:]
    return pattern.fullmatch(number) is not None
