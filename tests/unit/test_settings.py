"""The settings' one source: every TaskSettings field reaches TaskSettings through `sls-fast
run` flags, `sls-fast sweep` flags and a TOML sweep spec; SweepOptions through flags and TOML;
the cache keys' and adaptation groups' field sets come from the fields' metadata."""
import argparse
import dataclasses

import pytest

from sls_fast.cli import build_parser
from sls_fast.cli.options import settings_from_args, sweep_from_args
from sls_fast.harness.settings import (AXES, QUICK, STAGES, SweepOptions, TaskSettings, affecting,
                                      default_of, setting_fields)
from sls_fast.harness.sweep.spec import SHARED, SweepSpec, adapt_group, spec_keys

# a valid value other than the default, for every field (a new field fails here until added)
VALUES = dict(model="resnet18", data="lfw", method="lora", alpha=0.45, repeats=3,
              tsne_backend="native", tsne_iter=333, perplexity=12.5, criterion="knn",
              criteria="knn,cka", criterion_params="knn.k=5", oracle="full", strategy="FT", epochs=2, prune_epochs=3,
              image_size=40, batch_size=16, lr=0.005, score_points=50, adapter_dim=4,
              adapter_scale=2.5, num_classes=7, checkpoint="w.pth", compile=False,
              timing="authors", throughput_iters=5, on_bad_image="skip", seed=3, device="cpu")
OPTIONS = dict(out="somewhere", address="auto", num_cpus=3, gpus_per_cell=0.5,
               cpus_per_cell=1.5, max_retries=1, retry_failed=True, cache_dir="/mnt/shared/cache")


def _flag_args(f, value, plural=False):
    if f.metadata["kind"] is bool:
        assert value is not f.default
        return [f.metadata["flag"] or "--" + f.name.replace("_", "-")]
    flag = "--" + AXES[f.name] if plural else (f.metadata["flag"] or "--" + f.name.replace("_", "-"))
    return [flag, str(value)]


def _toml(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def test_every_field_has_a_value_here_and_a_complete_description():
    names = [f.name for f in setting_fields()]
    assert sorted(VALUES) == sorted(names)
    assert sorted(OPTIONS) == sorted(f.name for f in setting_fields(SweepOptions))
    for f in setting_fields():
        assert f.metadata["help"] and f.metadata["kind"] in (int, float, str, bool)
        assert set(f.metadata["affects"]) <= set(STAGES) and f.metadata["affects"], f.name
        assert VALUES[f.name] != f.default
    TaskSettings(**VALUES)  # the values are valid together


@pytest.mark.parametrize("name", sorted(VALUES))
def test_run_flags_reach_the_settings(name):
    f = next(f for f in setting_fields() if f.name == name)
    args = build_parser().parse_args(["run", *_flag_args(f, VALUES[name])])
    settings = settings_from_args(args)
    assert getattr(settings, name) == VALUES[name]
    others = {g.name: getattr(settings, g.name) for g in setting_fields() if g.name != name}
    assert others == {g.name: g.default for g in setting_fields() if g.name != name}


@pytest.mark.parametrize("name", sorted(VALUES))
def test_sweep_flags_and_toml_reach_every_cell(name, tmp_path):
    f = next(f for f in setting_fields() if f.name == name)
    value = VALUES[name]
    if name == "checkpoint":  # given per model
        flags = ["--models", "resnet18", "--checkpoint", f"resnet18={value}"]
        toml = f'models = ["resnet18"]\ncheckpoints = {{ resnet18 = "{value}" }}\n'
    elif name == "criteria":  # the criteria each cell scores: every one of the sweep's axis
        assert name not in SHARED
        for argv in (["sweep", "--criteria", "sls", "knn", "cka"],
                     ["sweep", "--spec", str(tmp_path / "c.toml")]):
            (tmp_path / "c.toml").write_text('criteria = ["sls", "knn", "cka"]\n')
            cells = sweep_from_args(build_parser().parse_args(argv))[0].cells()
            assert [c.settings.criterion for c in cells] == ["sls", "knn", "cka"]
            assert {c.settings.criteria for c in cells} == {value}
            assert {c.settings.oracle for c in cells} == {"probe"}  # several: the oracle is on
        return
    elif name == "num_classes":  # given per task (VTAB-1k), never shared
        assert name not in SHARED
        with pytest.raises(SystemExit):
            build_parser().parse_args(["sweep", "--num-classes", "7"])
        return
    elif name in AXES:
        flags = _flag_args(f, value, plural=True)
        toml = f"{AXES[name]} = [{_toml(value)}]\n"
    else:
        flags = _flag_args(f, value)
        toml = f"{name} = {_toml(value)}\n"
    spec_file = tmp_path / "sweep.toml"
    spec_file.write_text(toml)
    for argv in (["sweep", *flags], ["sweep", "--spec", str(spec_file)]):
        spec, _ = sweep_from_args(build_parser().parse_args(argv))
        cells = spec.cells()
        assert len(cells) == 1 and getattr(cells[0].settings, name) == value, argv


def test_sweep_options_through_flags_and_toml(tmp_path):
    flags, toml = [], ""
    for f in setting_fields(SweepOptions):
        value = OPTIONS[f.name]
        flags += [f"--{f.name.replace('_', '-')}"] + ([] if isinstance(value, bool) else [str(value)])
        toml += f"{f.name} = {_toml(value)}\n"
    spec_file = tmp_path / "sweep.toml"
    spec_file.write_text(toml)
    for argv in (["sweep", *flags], ["sweep", "--spec", str(spec_file)]):
        _, options = sweep_from_args(build_parser().parse_args(argv))
        assert dataclasses.asdict(options) == OPTIONS, argv


def test_flags_override_the_spec_file_and_quick(tmp_path):
    spec_file = tmp_path / "sweep.toml"
    spec_file.write_text("quick = true\nepochs = 5\ncompile = false\nalphas = [0.2, 0.4]\n")
    spec, _ = sweep_from_args(build_parser().parse_args(
        ["sweep", "--spec", str(spec_file), "--epochs", "6", "--image-size", "48"]))
    s = spec.cells()[0].settings
    assert (s.epochs, s.image_size, s.compile, s.tsne_iter) == (6, 48, False, QUICK["tsne_iter"])
    assert [c.settings.alpha for c in spec.cells()] == [0.2, 0.4]
    # run --quick: an explicit option wins over the reduced setting
    s = settings_from_args(build_parser().parse_args(["run", "--quick", "--image-size", "48"]))
    assert s.image_size == 48 and s.epochs == QUICK["epochs"]


def test_unknown_spec_key_names_the_file_and_the_known_keys(tmp_path):
    spec_file = tmp_path / "bad.toml"
    spec_file.write_text("alphaz = [0.3]\n")
    with pytest.raises(ValueError, match=r"bad.toml: unknown key\(s\) \['alphaz'\]"):
        sweep_from_args(build_parser().parse_args(["sweep", "--spec", str(spec_file)]))
    assert set(SHARED) <= set(spec_keys()) and "compile" in spec_keys() and "out" in spec_keys()


def test_other_commands_take_the_settings_defaults():
    parser = build_parser()
    prune = parser.parse_args(["prune", "--report", "x"])
    assert prune.prune_epochs == default_of("prune_epochs") == 4
    assert prune.strategy == default_of("strategy") and prune.batch_size == default_of("batch_size")
    score = parser.parse_args(["score", "--model", "resnet18"])
    for name in ("alpha", "tsne_backend", "tsne_iter", "repeats", "batch_size", "seed", "device"):
        assert getattr(score, name) == default_of(name), name
    bench = parser.parse_args(["bench", "--model", "resnet18"])
    assert bench.throughput_iters is None and bench.batch_size == default_of("batch_size")


def test_stage_field_sets_decide_the_groups():
    """Cells differing only in what does not affect the adaptation share it; a setting that
    affects it splits them."""
    assert affecting("select") == ("alpha", "criterion")
    assert affecting("oracle") == ("oracle",)
    assert set(affecting("adapt")) == {"model", "data", "method", "epochs", "image_size",
                                       "batch_size", "lr", "adapter_dim", "adapter_scale",
                                       "num_classes", "checkpoint", "on_bad_image", "seed",
                                       "device"}
    base = TaskSettings()
    for f in setting_fields():
        other = dataclasses.replace(base, **{f.name: VALUES[f.name]})
        same = adapt_group(other) == adapt_group(base)
        assert same == ("adapt" not in f.metadata["affects"]), f.name


def test_sweep_spec_fields_are_generated():
    names = [f.name for f in dataclasses.fields(SweepSpec)]
    assert names[:5] == list(AXES.values())
    assert set(names) == set(AXES.values()) | set(SHARED) | {"quick", "checkpoints"}
    spec = SweepSpec(alphas=[0.3, 0.5], lr=0.01, adapter_dim=4, compile=False)
    assert {c.settings.lr for c in spec.cells()} == {0.01}
    assert SweepSpec().alphas == [default_of("alpha")]
    with pytest.raises(TypeError):
        SweepSpec(num_classes=3)  # per task, not shared
    assert isinstance(build_parser(), argparse.ArgumentParser)
