"""The written contract: every schema is a valid Draft 2020-12 schema, the results row's
properties are the database's columns, and the files the library writes validate (the writers
of the command line and the sweep are validated where their tests make them)."""
import json

import jsonschema
import numpy as np
import pytest
import timm
import torch

import sls_fast
from _helpers import assert_valid, clustered
from sls_fast.common.schema import SCHEMA_VERSION, SCHEMAS
from sls_fast.harness.sweep.results import COLUMNS
from sls_fast.io.artifacts import read_pruned_metadata


@pytest.mark.parametrize("name", SCHEMAS)
def test_schemas_are_valid_and_versioned(name):
    s = sls_fast.schema(name)
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(s)
    if name != "results_row":  # the database carries its version in PRAGMA user_version
        assert s["properties"]["schema_version"] == {"const": SCHEMA_VERSION} or \
            s["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    s["title"] = "changed"
    assert sls_fast.schema(name)["title"] != "changed"  # a copy each time


def test_unknown_schema_is_a_value_error():
    with pytest.raises(ValueError, match="no schema named 'reports'"):
        sls_fast.schema("reports")


def test_results_row_schema_covers_the_columns_exactly():
    assert set(sls_fast.schema("results_row")["properties"]) == set(COLUMNS)


def test_layers_json_validates_and_a_broken_one_does_not():
    X, labels = clustered(np.random.default_rng(0), 3, 61, 5, 3, spread=0.3)
    feats = sls_fast.LayerFeatures(features=list(X.astype(np.float32)), labels=labels,
                                   layer_names=["a", "b", "c"], widths=[5, 5, 5])
    rep = sls_fast.score_features(feats, max_iter=250, tsne_backend="native", progress=False)
    doc = json.loads(rep.to_json())
    assert doc["schema_version"] == SCHEMA_VERSION
    assert_valid("layers", doc)
    doc["depth"] = 0
    with pytest.raises(AssertionError, match="depth"):
        assert_valid("layers", doc)


def test_artifact_metadata_validates_also_without_a_version(tmp_path):
    torch.manual_seed(0)
    m = sls_fast.add_adapters(timm.create_model("test_vit", pretrained=False), "convpass",
                              num_classes=3)
    path = str(tmp_path / "a.safetensors")
    sls_fast.save_pruned(path, sls_fast.truncate(m, 2, num_classes=3), 2, dataset="x")
    meta = read_pruned_metadata(path)
    assert meta["schema_version"] == SCHEMA_VERSION
    assert_valid("artifact", meta)
    del meta["schema_version"]  # an artifact written before the schema existed
    assert_valid("artifact", meta)
    meta["depth"] = "2"
    with pytest.raises(AssertionError, match="depth"):
        assert_valid("artifact", meta)
