"""The written contract of sls_fast's files for other front ends: JSON Schemas (Draft 2020-12),
shipped as package data in ``sls_fast/common/schemas/``.

``report`` (a run's or a scoring's ``report.json``), ``layers`` (``layers.json``, a
LayerReport), ``results_row`` (one row of a sweep's ``results.sqlite`` as JSON) and ``artifact``
(the metadata of a pruned artifact). Every file sls_fast writes carries
``schema_version`` (:data:`SCHEMA_VERSION`; the results database in SQLite's ``user_version``).
They live in ``common`` because writers in every layer stamp the version.

Example:
    >>> from sls_fast.common.schema import schema
    >>> schema("report")["$schema"]
    'https://json-schema.org/draft/2020-12/schema'
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Dict

__all__ = ["SCHEMA_VERSION", "SCHEMAS", "schema"]

SCHEMA_VERSION = 1
SCHEMAS = ("report", "layers", "results_row", "artifact")
_CACHE: Dict[str, Dict[str, Any]] = {}


def schema(name: str) -> Dict[str, Any]:
    """The JSON Schema called ``name`` (one of :data:`SCHEMAS`), as a new dict.

    Validate a file with the ``jsonschema`` package, e.g.
    ``jsonschema.validate(json.load(open("report.json")), sls_fast.schema("report"))``.
    """
    if name not in SCHEMAS:
        raise ValueError(f"no schema named {name!r}; the schemas: {list(SCHEMAS)}")
    if name not in _CACHE:
        path = os.path.join(os.path.dirname(__file__), "schemas", f"{name}.schema.json")
        with open(path) as f:
            _CACHE[name] = json.load(f)
    return copy.deepcopy(_CACHE[name])
