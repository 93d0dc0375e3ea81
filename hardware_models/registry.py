"""One rule for every name registry in the project (architectures, small stems, spec schemes, targets,
capabilities, escalation policies): a name is registered once.

Why here: `hardware_models` is the package every other one already imports (spaces, search), so the rule can
live in one place without a new dependency between packages. A second registration under a name is a bug
(two modules claiming one name, or a module imported twice under two paths) and fails at import time.
"""

from __future__ import annotations

from typing import Any


def register_once(table: dict[str, Any], key: str, value: Any, what: str) -> None:
    """`table[key] = value`, refusing a key that is already there; `what` names the kind in the error."""
    if key in table:
        raise ValueError(f"{what} {key!r} is registered twice")
    table[key] = value
