"""Judging budgets: the one place a value is compared with its limit. Validation and `edgepack bench` (which
re-judges the latency budget on a device measurement) both build their rows here."""

from __future__ import annotations


def row(name: str, value: float, limit: float, op: str) -> dict:
    """A budget row: {name, value, limit, op, passed}; ``op`` is "<=" or ">="."""
    passed = value <= limit if op == "<=" else value >= limit
    return {"name": name, "value": value, "limit": limit, "op": op, "passed": bool(passed)}


def rejudge(row_: dict, value: float) -> dict:
    """The same budget row judged on a new value (e.g. a device measurement)."""
    return {**row_, **row(row_["name"], value, row_["limit"], row_["op"])}


def all_passed(rows: list[dict]) -> bool:
    """Every row passed; a row with ``passed`` None (an inconclusive device estimate) is no failure."""
    return all(r["passed"] is not False for r in rows)
