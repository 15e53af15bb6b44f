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
