"""The sweep and ``auto``: which row of each group ``auto`` takes here, and the sweep's timings
added to this device's verification record (``factorkern.records``), the record ``auto``
dispatches from.

Marking: each op x shape x M x dtype group is called once more with ``backend="auto"`` and the
backend ``factorkern.dispatch`` resolved is recorded (``dispatch.observe``): that backend's
``fk:`` row gets ``auto = True`` (shown as "(auto)" in the table). LittleBit's opt-in popcount
rows are never marked (``auto`` never quantizes activations).

Extending: on a GPU with a usable record, every checked kernel row becomes a record row with
``source = "sweep"`` (status "pass" when its error is within the sweep's tolerance, "fail"
otherwise), with the library path's (``fk:torch``) and dense ``F.linear``'s times of the same
group. Sweep rows only add evidence: ``auto`` takes a kernel in a cell only where verify's own
rows passed, and a sweep row that is slower or wrong removes the kernel from that cell. The
record is written back where it was read, or to the user cache when it is one shipped in the
package.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional


def mark(group: list, case, factors: dict, x) -> Optional[tuple]:
    """Set ``auto`` and ``shape_class`` on the rows of a group; returns (backend, why, cell) or
    None when the auto call raised."""
    from factorkern import dispatch

    try:
        with dispatch.observe() as seen:
            case.call(factors, x, "auto")
    except Exception:
        return None
    if not seen:
        return None
    _op, backend, why, cell = seen[-1]
    for r in group:
        r["auto"] = r["kind"] == "factorkern" and r["backend"] == f"fk:{backend}"
        r["shape_class"] = cell[2] if cell else None
    return backend, why, cell


def record_rows(rows: list, tol: dict) -> list:
    """The sweep's checked kernel rows in the record's row schema."""
    from factorkern import records

    groups: dict = {}
    for r in rows:
        groups.setdefault((r["op"], r.get("config"), r["shape"], r["M"], r["dtype"]), []).append(r)
    out = []
    for (op, _config, shape, m, dtype), group in groups.items():
        by = {r["backend"]: r for r in group}
        lib, dense = by.get("fk:torch", {}), by.get("dense", {})
        for r in group:
            name = r["backend"]
            if r["kind"] != "factorkern" or name == "fk:torch" or ":popcount" in name[3:] \
                    or r.get("rel_err") is None or not r.get("shape_class"):
                continue
            out_f, in_f = (int(v) for v in shape.split("x"))
            out.append({"op": op, "backend": name[3:], "dtype": dtype, "out": out_f,
                        "in": in_f, "sizes": {"config": r.get("config", "")},
                        "shape_class": r["shape_class"], "m": m,
                        "m_bucket": records.m_bucket(m),
                        "status": "pass" if r.get("ok") else "fail", "rel_err": r["rel_err"],
                        "tol": tol.get(dtype), "detail": r.get("error") or "",
                        "ms": r.get("ms"), "library_ms": lib.get("ms"),
                        "dense_ms": dense.get("ms"), "library_rel_err": lib.get("rel_err"),
                        "source": "sweep"})
    return out


def extend_record(rows: list, tol: dict, notes: list) -> Optional[str]:
    """Add the sweep's rows to this GPU's record (module docstring); returns its path."""
    import torch

    from factorkern import dispatch, records

    if not torch.cuda.is_available():
        return None
    table, found = dispatch._table(dispatch._report_device())
    if found.record is None:
        notes.append("no verification record for this GPU and software: auto takes the "
                     "library path everywhere; run `python -m factorkern.verify` first, and the "
                     "sweep will add its timings to that record")
        return None
    new = record_rows(rows, tol)
    rec = records.extend(copy.deepcopy(found.record), new)
    path = Path(found.path)
    if path.parent.resolve() == records.shipped_dir():
        path = records.cache_dir() / records.file_name(rec["device"], rec["software"])
    records.save(rec, path)
    dispatch.reload_records()
    notes.append(f"auto: the rows marked (auto) are what auto takes here; {len(new)} sweep rows "
                 f"added to the record {path}")
    return str(path)
