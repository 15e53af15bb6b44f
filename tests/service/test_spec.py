"""The spec language: primitives, trial counts, overrides, errors. No torch, no Ray."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.core.loading import SpecError, parse_spec
from service.core.spec import Grid, SweepSpec, concrete, num_trials, search_space

GOOD = """\
name: grid-test
data: {name: digits}
model:
  name: cnn
  num_conv_layers: {grid: [2, 3, 4]}
  filters: {grid: [64, 128, 152]}
  kernel_size: {grid: [2, 3]}
  num_fc_layers: {grid: [2, 4]}
train: {epochs: 3}
"""


def test_grid_expansion_counts_the_cross_product_times_samples():
    spec = parse_spec(GOOD)
    assert num_trials(spec) == 3 * 3 * 2 * 2
    assert num_trials(parse_spec(GOOD, overrides=["search.num_samples=2"])) == 72
    assert list(search_space(spec)) == [
        "model.num_conv_layers", "model.filters", "model.kernel_size", "model.num_fc_layers",
    ]


def test_primitive_values_are_validated_with_the_field_type():
    with pytest.raises(SpecError) as err:
        parse_spec(GOOD.replace("[64, 128, 152]", "[64, -1]"))
    (problem,) = err.value.problems
    assert problem.path == "model.filters.grid[1]"
    assert problem.line == 6
    assert "greater than 0" in problem.message


def test_sampled_primitives_need_random_search():
    text = GOOD + "search: {algorithm: grid}\n"
    text = text.replace("kernel_size: {grid: [2, 3]}", "kernel_size: {randint: [2, 5]}")
    with pytest.raises(SpecError, match="model.kernel_size"):
        parse_spec(text)
    spec = parse_spec(text.replace("algorithm: grid", "algorithm: random"))
    assert "model.kernel_size" in search_space(spec)


@pytest.mark.parametrize(
    "primitive, fragment",
    [
        ("{loguniform: [0.1, 0.001]}", "lo must be < hi"),
        ("{loguniform: [0.0, 0.1]}", "greater than 0"),  # lr is positive: the field type says so first
        ("{uniform: [0.5, 0.5]}", "lo must be < hi"),
        ("{quniform: [0.1, 0.5, 0]}", "greater than 0"),
        ("{grid: []}", "at least 1 item"),
    ],
)
def test_range_primitives_reject_bad_bounds(primitive, fragment):
    with pytest.raises(SpecError, match=fragment) as err:
        parse_spec(GOOD, overrides=[f"train.optimizer.lr={primitive}", "search.algorithm=random"])
    assert err.value.problems[0].path.startswith("train.optimizer.lr")


def test_set_overrides_are_typed_by_the_schema():
    spec = parse_spec(GOOD, overrides=["train.epochs=1", "train.optimizer.lr=0.01", "model.filters={grid: [8, 16]}"])
    assert spec.train.epochs == 1 and isinstance(spec.train.epochs, int)
    assert spec.train.optimizer.lr == 0.01
    assert spec.model.filters == Grid[int](grid=[8, 16]) or spec.model.filters.grid == [8, 16]
    with pytest.raises(SpecError) as err:
        parse_spec(GOOD, overrides=["train.epochs=many", "oops"])
    sources = {(p.path, p.source) for p in err.value.problems}
    assert ("train.epochs", "--set") in sources
    assert ("oops", "--set") in sources


def test_concrete_puts_trial_values_back_into_the_spec():
    spec = parse_spec(GOOD)
    trial = {"model.num_conv_layers": 3, "model.filters": 128, "model.kernel_size": 2, "model.num_fc_layers": 4}
    resolved = concrete(spec, trial)
    assert (resolved.model.num_conv_layers, resolved.model.filters) == (3, 128)
    assert search_space(resolved) == {}
    with pytest.raises(ValueError, match="lacks values"):
        concrete(spec, {"model.filters": 64})


def test_objective_mode_defaults_to_the_metrics_direction_and_rejects_the_wrong_one():
    assert parse_spec(GOOD + "objective: {metric: val_loss}\n").objective.mode == "min"
    with pytest.raises(SpecError, match="val_loss should be minimized"):
        parse_spec(GOOD + "objective: {metric: val_loss, mode: max}\n")


def test_name_must_be_a_dns_label():
    with pytest.raises(ValidationError):
        SweepSpec.model_validate({"name": "Grid_Test", "data": {"name": "digits"}, "model": {"name": "mlp"}})


def test_duplicate_keys_and_broken_yaml_are_reported_with_lines():
    with pytest.raises(SpecError) as err:
        parse_spec(GOOD + "train: {epochs: 4}\n")
    assert err.value.problems[0].message == "key appears twice"
    assert err.value.problems[0].line == 10
    with pytest.raises(SpecError, match="not valid YAML"):
        parse_spec("name: [unclosed\n")


PBT = GOOD.replace("{grid: [2, 3, 4]}", "2").replace("{grid: [64, 128, 152]}", "64").replace(
    "{grid: [2, 3]}", "3").replace("{grid: [2, 4]}", "2") + """\
search: {algorithm: random, num_samples: 4}
scheduler:
  name: pbt
  perturbation_interval: 1
  mutations: {train.optimizer.lr: {loguniform: [1.0e-4, 1.0e-1]}}
"""


def test_pbt_specs_are_checked_for_what_would_break_or_deadlock_at_run_time():
    assert parse_spec(PBT + "checkpoint: {keep: 3}\n").scheduler.synchronous
    with pytest.raises(SpecError, match="donor's checkpoint could be deleted"):
        parse_spec(PBT)  # default keep: 2
    with pytest.raises(SpecError, match="never starts them all"):
        parse_spec(PBT + "checkpoint: {keep: null}\nresources: {max_concurrent_trials: 2}\n")
    with pytest.raises(SpecError, match="train.optimizer.lrr"):
        parse_spec(PBT.replace("train.optimizer.lr:", "train.optimizer.lrr:") + "checkpoint: {keep: null}\n")
    with pytest.raises(SpecError, match="need a distribution"):
        parse_spec(PBT.replace("{loguniform: [1.0e-4, 1.0e-1]}", "0.1") + "checkpoint: {keep: null}\n")


def test_pbt_perturbations_are_clipped_into_the_mutation_range():
    pytest.importorskip("ray")
    from trainer.driver.space import scheduler

    spec = parse_spec(PBT.replace(
        "mutations: {train.optimizer.lr: {loguniform: [1.0e-4, 1.0e-1]}}",
        "mutations: {train.optimizer.momentum: {uniform: [0.8, 0.99]}, train.batch_size: {randint: [16, 65]}}",
    ) + "checkpoint: {keep: null}\n")
    explore = scheduler(spec)._custom_explore_fn
    assert explore({"train.optimizer.momentum": 0.99 * 1.2, "train.batch_size": 80}) == {
        "train.optimizer.momentum": 0.99, "train.batch_size": 64,
    }
    assert explore({"train.optimizer.momentum": 0.85})["train.optimizer.momentum"] == 0.85
    parse_spec(PBT + "checkpoint: {keep: null}\n", overrides=["train.optimizer.momentum=0.99"])  # in range: valid
