"""The one JSON line every W2 bgtransfer client prints, and its exit code."""

from __future__ import annotations

import json


def report(t_open: float, t0: float, t1: float, t2: float, errors: list[str], count: int) -> int:
    """``t_open`` session opened, ``t0``-``t1`` the submit phase, ``t2`` the last completion."""
    print(
        json.dumps(
            {
                "open_s": t0 - t_open,
                "submit_s": t1 - t0,
                "window_s": t2 - t0,
                "count": count,
                "errors": len(errors),
                "first_error": errors[0] if errors else None,
            }
        )
    )
    return 0 if not errors else 1
