"""US states and territories, and ``"City, ST"`` place names built on their codes.

:data:`US_STATES` maps each postal abbreviation to its name; :func:`check_us_location` is a
:data:`~conveyor_hf.tools.validated.Validator` for ``"City, ST"`` arguments (its error
says how to write the place), and :func:`split_us_location` splits a valid one::

    check_us_location("Austin, Texas")   # "'Texas' in 'Austin, Texas' is a state name, ..."
    split_us_location("Austin, tx")      # ('Austin', 'TX')
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["US_STATES", "check_us_location", "split_us_location"]

#: Postal abbreviations of the 50 states, the District of Columbia and the inhabited territories.
US_STATES: dict[str, str] = {
    "AL": "Alabama", "AK": "Alaska", "AZ": "Arizona", "AR": "Arkansas", "CA": "California",
    "CO": "Colorado", "CT": "Connecticut", "DE": "Delaware", "FL": "Florida", "GA": "Georgia",
    "HI": "Hawaii", "ID": "Idaho", "IL": "Illinois", "IN": "Indiana", "IA": "Iowa",
    "KS": "Kansas", "KY": "Kentucky", "LA": "Louisiana", "ME": "Maine", "MD": "Maryland",
    "MA": "Massachusetts", "MI": "Michigan", "MN": "Minnesota", "MS": "Mississippi",
    "MO": "Missouri", "MT": "Montana", "NE": "Nebraska", "NV": "Nevada", "NH": "New Hampshire",
    "NJ": "New Jersey", "NM": "New Mexico", "NY": "New York", "NC": "North Carolina",
    "ND": "North Dakota", "OH": "Ohio", "OK": "Oklahoma", "OR": "Oregon", "PA": "Pennsylvania",
    "RI": "Rhode Island", "SC": "South Carolina", "SD": "South Dakota", "TN": "Tennessee",
    "TX": "Texas", "UT": "Utah", "VT": "Vermont", "VA": "Virginia", "WA": "Washington",
    "WV": "West Virginia", "WI": "Wisconsin", "WY": "Wyoming",
    "DC": "District of Columbia",
    "PR": "Puerto Rico", "GU": "Guam", "VI": "U.S. Virgin Islands", "AS": "American Samoa",
    "MP": "Northern Mariana Islands",
}
_BY_NAME = {name.casefold(): code for code, name in US_STATES.items()}
_LOCATION = re.compile(r"\s*([^,]+?)\s*,\s*([^,]+?)\s*")


def _state_code(text: str) -> str | None:
    code = text.replace(".", "").replace(" ", "").upper()
    return code if code in US_STATES else None


def split_us_location(value: str) -> tuple[str, str]:
    """``"Austin, tx"`` → ``("Austin", "TX")``; raises ValueError if it is not valid."""
    error = check_us_location(value)
    if error is not None:
        raise ValueError(error)
    match = _LOCATION.fullmatch(value)
    assert match is not None  # checked above
    return match.group(1), _state_code(match.group(2)) or ""


def check_us_location(value: Any) -> str | None:
    """Validator: ``value`` must be ``"City, ST"`` with ST a US state/territory code."""
    if not isinstance(value, str):
        return f"{value!r} is not a place name; write 'City, ST', e.g. 'Austin, TX'"
    match = _LOCATION.fullmatch(value)
    if match is None:
        return (
            f"{value!r} is not of the form 'City, ST'; write the city, a comma and the "
            "two-letter state code, e.g. 'Austin, TX'"
        )
    city, state = match.groups()
    if not any(c.isalpha() for c in city):
        return f"{city!r} in {value!r} is not a city name; write 'City, ST', e.g. 'Austin, TX'"
    if _state_code(state) is not None:
        return None
    code = _BY_NAME.get(state.casefold())
    if code is not None:
        return f"{state!r} in {value!r} is a state name, not its abbreviation; write '{city}, {code}'"
    return (
        f"{state!r} in {value!r} is not a US state or territory abbreviation; use a two-letter "
        "code such as TX, CA or NY (this tool only knows US places)"
    )
