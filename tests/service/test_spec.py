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


# ----------------------------------------------------------------------------- what would fail at run
def problems_of(text: str, **kwargs) -> dict[str, tuple[int | None, str]]:
    with pytest.raises(SpecError) as err:
        parse_spec(text, **kwargs)
    return {p.path: (p.line, p.message) for p in err.value.problems}


def test_a_negative_seed_is_refused_with_its_line():
    assert problems_of("seed: -1\n" + GOOD) == {"seed": (1, "Input should be greater than or equal to 0, got -1")}
    assert "seed" in problems_of(GOOD + f"seed: {2**32}\n")
    assert parse_spec(GOOD + f"seed: {2**32 - 1}\n").seed == 2**32 - 1


PBT_OK = PBT + "checkpoint: {keep: null}\n"


def test_pbt_may_not_mutate_what_shapes_the_weights():
    text = PBT_OK.replace("mutations: {train.optimizer.lr: {loguniform: [1.0e-4, 1.0e-1]}}", """mutations:
    model.filters: {choice: [32, 64]}
    model.dropout: {uniform: [0.0, 0.5]}
    model.activation: {choice: [relu, gelu]}
    data.image_size: {choice: [8, 16]}
    train.optimizer.name: {choice: [sgd, adam]}""")
    found = problems_of(text)
    assert set(found) == {"scheduler.mutations.model.filters", "scheduler.mutations.model.dropout",
                          "scheduler.mutations.data.image_size", "scheduler.mutations.train.optimizer.name"}
    line, message = found["scheduler.mutations.model.filters"]
    assert line == 15
    assert "copies the donor's weights" in message and "must match" in message  # why
    assert "{grid: [...]} or {choice: [...]} instead" in message  # what to do
    assert "can be 0 here" in found["scheduler.mutations.model.dropout"][1]
    assert "input shape" in found["scheduler.mutations.data.image_size"][1]
    assert "optimizer state" in found["scheduler.mutations.train.optimizer.name"][1]
    # dropout above 0 and activations own no parameters: fine
    ok = PBT_OK.replace("mutations: {train.optimizer.lr: {loguniform: [1.0e-4, 1.0e-1]}}",
                        "mutations: {model.dropout: {uniform: [0.1, 0.5]}, model.activation: {choice: [relu, gelu]}}")
    assert parse_spec(ok).scheduler.mutations.keys() == {"model.dropout", "model.activation"}


def test_a_grid_over_a_mutated_value_is_refused_naming_both_places():
    text = PBT_OK.replace("search: {algorithm: random, num_samples: 4}", "search: {algorithm: grid}")
    text = text.replace("train: {epochs: 3}", "train:\n  epochs: 3\n  optimizer: {lr: {grid: [0.01, 0.001]}}")
    ((path, (line, message)),) = problems_of(text).items()
    assert path == "scheduler.mutations.train.optimizer.lr" and line == 16
    assert "a grid at train.optimizer.lr (line 11) and mutated here" in message
    # a sampled start is how a PBT population begins (sweeps/cnn_pbt.yaml): fine
    sampled = PBT_OK.replace("train: {epochs: 3}", "train: {epochs: 3, optimizer: {lr: {loguniform: [1.0e-4, 1.0e-1]}}}")
    assert "train.optimizer.lr" in search_space(parse_spec(sampled))


def test_a_trial_count_over_the_cap_names_its_factors_without_enumerating_the_grid():
    import time

    hundred = "{grid: [" + ", ".join(str(i) for i in range(1, 101)) + "]}"
    text = GOOD.replace("{grid: [2, 3, 4]}", hundred).replace("{grid: [64, 128, 152]}", hundred)
    text = text.replace("{grid: [2, 3]}", hundred).replace("{grid: [2, 4]}", hundred)
    start = time.monotonic()
    found = problems_of(text, overrides=["search.num_samples=2"])
    assert time.monotonic() - start < 2  # 200,000,000 trials: counted, never listed
    ((path, (line, message)),) = found.items()
    assert path == "model.num_conv_layers" and line == 5  # the largest factor (the first of equals)
    assert message.startswith("model.num_conv_layers 100 × model.filters 100 × model.kernel_size 100 × "
                              "model.num_fc_layers 100 × search.num_samples 2 = 200,000,000 trials > 10,000")
    assert "--max-trials 200000000" in message
    assert num_trials(parse_spec(text, overrides=["search.num_samples=2"], max_trials=200_000_000)) == 200_000_000
    assert "search.num_samples" in problems_of(GOOD, overrides=["search.num_samples=1000"])  # 36,000


@pytest.mark.parametrize("written, amp", [("off", "off"), ("on", "auto"), ("false", "off"), ("true", "auto"),
                                          ("'off'", "off"), ("bf16", "bf16"), ("auto", "auto")])
def test_amp_off_and_on_unquoted_are_read_as_meant(written, amp):
    assert parse_spec(GOOD.replace("train: {epochs: 3}", f"train: {{epochs: 3, amp: {written}}}")).train.amp == amp
    assert parse_spec(GOOD, overrides=[f"train.amp={written}"]).train.amp == amp


def test_amp_still_refuses_what_it_does_not_know():
    line, message = problems_of(GOOD, overrides=["train.amp=fp8"])["train.amp"]
    assert "'auto', 'off', 'bf16' or 'fp16'" in message


def test_the_pbt_mutable_model_fields_leave_every_models_state_dict_unchanged():
    """The rule in spec.py, checked on the real models: mutating a PBT_MUTABLE_MODEL_FIELDS field
    (dropout above 0) keeps every parameter's name and shape; a dropout of 0 does not."""
    pytest.importorskip("torch")
    from service.core.spec import PBT_MUTABLE_MODEL_FIELDS, CIFAR10NetSpec, CNNSpec, MLPSpec, ResNetSpec, SmallResNetSpec
    from trainer.models import build_model

    def shapes(spec):
        return {k: tuple(v.shape) for k, v in build_model(spec, (3, 16, 16), 10).state_dict().items()}

    families = [MLPSpec(name="mlp", hidden_sizes=[32, 16]), CNNSpec(name="cnn", filters=8, hidden_size=16),
                CIFAR10NetSpec(name="cifar10net", conv_channels=[8, 8], fc1=16, fc2=8),
                SmallResNetSpec(name="small_resnet", h_1=8, h_2=8), ResNetSpec(name="resnet", head="mlp", head_widths=[16])]
    for spec in families:
        for field in set(PBT_MUTABLE_MODEL_FIELDS) & set(type(spec).model_fields):
            values = ("relu", "gelu", "tanh") if "activation" in field else (0.1, 0.5)
            variants = [shapes(spec.model_copy(update={field: v})) for v in values]
            assert all(v == variants[0] for v in variants), f"{spec.name}.{field}"
    cnn = families[1]
    assert shapes(cnn.model_copy(update={"dropout": 0.0})) != shapes(cnn.model_copy(update={"dropout": 0.3}))


# ----------------------------------------------------------------------------- conditional spaces
CONDITIONAL = """\
name: conditional
data: {name: digits}
model: {name: cnn, filters: 8}
train:
  epochs: 1
  optimizer:
    grid:
      - name: sgd
        lr: {grid: [0.1, 0.01]}
        momentum: {grid: [0.8, 0.9, 0.95]}
      - name: adam
        lr: {grid: [1.0e-3, 3.0e-3]}
      - {name: adagrad}
search: {algorithm: grid, num_samples: 2}
"""


def test_a_grid_over_branches_crosses_each_branch_with_its_own_grids_and_a_trial_has_its_branch_only():
    from service.core.spec import config_keys

    spec = parse_spec(CONDITIONAL)
    assert num_trials(spec) == (2 * 3 + 2 + 1) * 2  # sgd's 6 points, adam's 2, adagrad's 1; × num_samples
    assert config_keys(spec) == ["train.optimizer.name", "train.optimizer.lr", "train.optimizer.momentum"]
    sgd = concrete(spec, {"train.optimizer.name": "sgd", "train.optimizer.lr": 0.1, "train.optimizer.momentum": 0.95})
    assert (sgd.train.optimizer.name, sgd.train.optimizer.lr, sgd.train.optimizer.momentum) == ("sgd", 0.1, 0.95)
    adam = concrete(spec, {"train.optimizer.name": "adam", "train.optimizer.lr": 3e-3})
    assert (adam.train.optimizer.name, adam.train.optimizer.lr) == ("adam", 3e-3)
    assert adam.train.optimizer.momentum == 0.9  # the default: nothing of the SGD branch
    assert search_space(sgd) == search_space(adam) == {}
    with pytest.raises(ValueError, match=r"lacks values for \['train.optimizer.name'\]"):
        concrete(spec, {"train.optimizer.lr": 0.1})
    found = problems_of(CONDITIONAL, max_trials=10)  # the cap counts the branches' points
    assert found["train.optimizer"][1].startswith("train.optimizer 9 × search.num_samples 2 = 18 trials > 10")
    # a grid over whole models that are plain, as before: one trial each, the model its config
    plain = parse_spec(CONDITIONAL.replace("model: {name: cnn, filters: 8}",
                                           "model: {grid: [{name: mlp, hidden_sizes: [32]}, {name: cnn, filters: 8}]}"))
    assert num_trials(plain) == 2 * 9 * 2 and config_keys(plain)[0] == "model"


def test_a_bad_branch_value_is_reported_at_its_branch_path_with_every_other_problem():
    text = CONDITIONAL.replace("epochs: 1", "epochs: 0").replace(
        "momentum: {grid: [0.8, 0.9, 0.95]}", "momentum: {grid: [0.8, 1.5]}").replace(
        "{name: adagrad}", "{name: adagrad, lrr: 0.1}")
    text = text.replace("model: {name: cnn, filters: 8}", "model:\n  choice:\n    - {name: mlp, dropout: {uniform: [0, 0.5]}}\n"
                        "    - {name: cnn, filters: 8}")
    found = problems_of(text)
    assert found["train.epochs"] == (8, "Input should be greater than 0, got 0")
    assert found["train.optimizer.grid[0].momentum.grid[1]"] == (13, "Input should be less than 1, got 1.5")
    assert found["train.optimizer.grid[2].lrr"][0] == 16
    assert "did you mean 'lr'?" in found["train.optimizer.grid[2].lrr"][1]  # the branch's own keys
    # spec-wide, on what parsed (the bad values set aside): a grid search cannot sample, not even in a branch
    line, message = found["search.algorithm"]
    assert line == 17 and "['model', 'model.choice[0].dropout'] are sampled" in message
    assert len(found) == 4


def test_conditional_spaces_refuse_what_their_searcher_or_scheduler_cannot_run():
    drawn = CONDITIONAL.replace("grid:\n      - name: sgd", "choice:\n      - name: sgd").replace(
        "algorithm: grid", "algorithm: random")
    found = problems_of(drawn)  # a random search draws a branch per trial: its grids have no fixed points
    assert set(found) == {"train.optimizer.choice[0].lr", "train.optimizer.choice[0].momentum", "train.optimizer.choice[1].lr"}
    assert found["train.optimizer.choice[0].momentum"][0] == 10
    assert "write {choice: [...]} here, or make train.optimizer a {grid: [...]}" in found["train.optimizer.choice[1].lr"][1]
    tpe = drawn.replace("{grid: [0.1, 0.01]}", "{loguniform: [1.0e-3, 1.0e-1]}").replace(
        "{grid: [0.8, 0.9, 0.95]}", "{uniform: [0.8, 0.99]}").replace("{grid: [1.0e-3, 3.0e-3]}", "{choice: [1.0e-3, 3.0e-3]}")
    assert num_trials(parse_spec(tpe.replace("random", "optuna"))) == 2
    pbt = problems_of(tpe + "scheduler: {name: pbt, mutations: {train.label_smoothing: {uniform: [0, 0.2]}}}\n"
                      "checkpoint: {keep: 3}\n")
    ((line, message),) = pbt.values()
    assert list(pbt) == ["scheduler.name"] and line == 15
    assert message.startswith("scheduler 'pbt' cannot run a conditional search space (train.optimizer:")


# ----------------------------------------------------------------------------- objectives and constraints
OPTUNA = """\
name: mo-test
data: {name: digits}
model: {name: mlp, hidden_sizes: {choice: [[8], [32]]}}
search: {algorithm: optuna, num_samples: 4}
"""


@pytest.mark.parametrize("metric, mode", [("params", "min"), ("inference_ms", "min"), ("train_seconds", "min"),
                                          ("samples_per_second", "max"), ("train_acc", "max")])
def test_the_objective_may_be_any_reported_metric_with_its_natural_mode(metric, mode):
    assert parse_spec(GOOD + f"objective: {{metric: {metric}}}\n").objective.mode == mode


def test_an_unknown_objective_metric_lists_the_reported_ones_and_one_without_a_direction_needs_a_mode():
    from service.core.record import METRICS

    with pytest.raises(SpecError) as err:
        parse_spec(GOOD + "objective: {metric: val_accuracy}\n")
    (problem,) = err.value.problems
    assert problem.path == "objective.metric" and problem.line == 10
    assert "did you mean val_acc" in problem.message
    assert all(m in problem.message for m in METRICS)  # every valid name, from the record's EpochResult
    with pytest.raises(SpecError, match="lr has no natural direction: give mode"):
        parse_spec(GOOD + "objective: {metric: lr}\n")
    assert parse_spec(GOOD + "objective: {metric: lr, mode: max}\n").objective.mode == "max"


def test_objectives_set_the_first_as_the_objective_and_dump_without_it():
    spec = parse_spec(OPTUNA + "objectives: [{metric: val_acc}, {metric: params}]\n")
    assert [(o.metric, o.mode) for o in spec.objectives] == [("val_acc", "max"), ("params", "min")]
    assert spec.objective == spec.objectives[0]
    dumped = spec.model_dump(mode="json")
    assert "objective" not in dumped and SweepSpec.model_validate(dumped) == spec  # spec.yaml validates again
    assert concrete(spec, {"model.hidden_sizes": [8]}).objectives == spec.objectives
    one = parse_spec(OPTUNA).model_dump(mode="json")
    assert "objectives" not in one and "constraints" not in one  # as before they existed


def test_objectives_are_checked_together_each_at_its_key():
    text = (OPTUNA.replace("optuna", "random") + "objective: {metric: val_acc}\n"
            "objectives:\n  - {metric: val_acc}\n  - {metric: val_acc}\n")
    with pytest.raises(SpecError) as err:
        parse_spec(text)
    found = {p.path: (p.line, p.message) for p in err.value.problems}
    assert found["objective"][0] == 5 and "either objective" in found["objective"][1]
    assert found["objectives[1].metric"][0] == 8 and "val_acc is objectives[0] already" in found["objectives[1].metric"][1]
    assert "need search.algorithm: optuna" in found["objectives"][1] and "'random'" in found["objectives"][1]
    with pytest.raises(SpecError, match="at least 2 items"):
        parse_spec(OPTUNA + "objectives: [{metric: val_acc}]\n")


def test_a_scheduler_that_judges_by_one_metric_is_allowed_with_a_note():
    from service.core.spec import spec_notes

    spec = parse_spec(OPTUNA + "scheduler: {name: asha}\nobjectives: [{metric: val_loss}, {metric: inference_ms}]\n")
    assert spec_notes(spec) == ["scheduler asha judges trials by val_loss, the first objective (min): it stops "
                                "trials that are behind on val_loss alone"]
    assert spec_notes(parse_spec(OPTUNA + "objectives: [{metric: val_loss}, {metric: params}]\n")) == []
    assert spec_notes(parse_spec(GOOD + "scheduler: {name: asha}\n")) == []


@pytest.mark.parametrize("text, metric, op, bound", [
    ("params <= 2e6", "params", "<=", 2e6), ("inference_ms<5", "inference_ms", "<", 5.0),
    ("  val_acc >= 0.9 ", "val_acc", ">=", 0.9), ("train_seconds > .5", "train_seconds", ">", 0.5),
    ("val_loss <= -1.5E-1", "val_loss", "<=", -0.15)])
def test_a_constraint_is_metric_op_number(text, metric, op, bound):
    from service.core.spec import parse_constraint

    c = parse_constraint(text)
    assert (c.metric, c.op, c.bound) == (metric, op, bound)
    assert c.before_training == (metric == "params")


def test_bad_constraints_are_reported_with_their_index_and_line():
    text = OPTUNA + 'constraints:\n  - "params <= 2e6"\n  - "params == 3"\n  - "size < 3"\n  - "params < inf"\n'
    with pytest.raises(SpecError) as err:
        parse_spec(text)
    found = {p.path: (p.line, p.message) for p in err.value.problems}
    assert set(found) == {"constraints[1]", "constraints[2]", "constraints[3]"}
    assert found["constraints[1]"][0] == 7 and "'params == 3' is not 'metric op number'" in found["constraints[1]"][1]
    assert found["constraints[2]"][0] == 8 and "unknown metric 'size'" in found["constraints[2]"][1]
    assert found["constraints[3]"][0] == 9


def test_an_augmentation_without_parameters_may_be_written_by_its_name_alone():
    spec = parse_spec("name: t\ndata:\n  name: digits\n  augment: [hflip, {name: random_crop, padding: 2}]\n"
                      "model: {name: cnn}\n")
    assert spec.data.augment == parse_spec(
        "name: t\ndata:\n  name: digits\n  augment: [{name: hflip}, {name: random_crop, padding: 2}]\n"
        "model: {name: cnn}\n").data.augment
    assert [a.name for a in spec.data.augment] == ["hflip", "random_crop"] and spec.data.augment[0].p == 0.5
    grid = parse_spec("name: t\nseed: 0\ndata:\n  name: digits\n  augment: {grid: [[], [hflip, random_crop]]}\n"
                      "model: {name: cnn}\n")
    assert [[a.name for a in option] for option in grid.data.augment.grid] == [[], ["hflip", "random_crop"]]
    found = problems_of("name: t\ndata:\n  name: digits\n  augment: [hflp]\nmodel: {name: cnn}\n")
    line, message = found["data.augment[0].name"]
    assert line == 4 and "did you mean 'hflip'?" in message


def test_ray_tunes_names_point_at_ours_and_every_one_is_reported():
    found = problems_of("name: t\ndata: {name: digits}\nmodel: {name: cnn}\n"
                        "scheduler: {name: asha, max_t: 10, time_attr: training_iteration}\nnum_samples: 4\n")
    assert found["scheduler.max_t"] == (4, found["scheduler.max_t"][1]) and "train.epochs" in found["scheduler.max_t"][1]
    assert "epochs" in found["scheduler.time_attr"][1]
    assert found["num_samples"][0] == 5 and "search.num_samples" in found["num_samples"][1]


# A spec.yaml as sweepctl wrote it before the data and scheduler sections were unions by name:
# every dataset's and every scheduler's fields, at their defaults.
BEFORE_THE_UNIONS = """\
name: written-before
seed: 0
data: {name: digits, path: null, sha256: null, download: false, val_fraction: 0.2, val_split: random,
       augment: [], num_samples: 2048, image_size: 16, channels: 3, num_classes: 10}
model: {name: mlp, hidden_sizes: [16]}
scheduler: {name: asha, grace_period: 2, reduction_factor: 3.0, brackets: 1, min_samples: 3,
            perturbation_interval: 2, quantile: 0.25, mutations: {}, synchronous: true}
"""


def test_a_spec_written_before_the_unions_validates_and_dumps_only_what_applies():
    spec = parse_spec(BEFORE_THE_UNIONS)
    dumped = spec.model_dump(mode="json")
    assert dumped["data"] == {"name": "digits", "val_fraction": 0.2, "val_split": "random", "augment": []}
    assert dumped["scheduler"] == {"name": "asha", "grace_period": 2, "reduction_factor": 3.0, "brackets": 1}
    median = parse_spec(BEFORE_THE_UNIONS.replace("name: asha", "name: median"))
    assert median.model_dump(mode="json")["scheduler"] == {"name": "median", "grace_period": 2, "min_samples": 3}
    assert SweepSpec.model_validate(dumped) == spec


def test_a_field_of_another_kind_of_dataset_or_scheduler_is_refused_naming_the_kind_it_belongs_to():
    text = BEFORE_THE_UNIONS.replace("image_size: 16", "image_size: 32").replace("quantile: 0.25", "quantile: 0.5")
    with pytest.raises(SpecError) as caught:
        parse_spec(text)
    problems = [str(p) for p in caught.value.problems]
    assert problems == ["data.image_size (line 4): applies to data.name 'synthetic' only: remove it here",
                        "scheduler.quantile (line 7): applies to scheduler.name 'pbt' only: remove it here"]
    with pytest.raises(SpecError) as caught:
        parse_spec("name: x\ndata: {val_fraction: 0.2}\nmodel: {name: mlp}\nscheduler: {grace_period: 2}\n")
    assert [str(p) for p in caught.value.problems] == [
        "data (line 2): needs a name: one of 'synthetic', 'digits', 'mnist', 'fashion_mnist', 'cifar10', 'cifar100'",
        "scheduler.grace_period (line 4): applies to scheduler.name 'asha' or 'median' only: remove it here"]
