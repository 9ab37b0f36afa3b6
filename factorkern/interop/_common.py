"""What the checkpoint importers share."""

from __future__ import annotations


def require(state_dict: dict, key: str, library: str):
    """state_dict[key], or a KeyError naming the library and a few of the keys there are."""
    if key not in state_dict:
        some = ", ".join(sorted(state_dict)[:8])
        raise KeyError(f"{library} checkpoint has no {key!r} (it has: {some or 'no keys'}"
                       f"{', ...' if len(state_dict) > 8 else ''})")
    return state_dict[key]
