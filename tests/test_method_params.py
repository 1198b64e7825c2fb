"""Every method declares the accepted range of each hyperparameter beside its default, and
``create_method`` refuses a value outside it before anything trains."""

from __future__ import annotations

import inspect

import pytest

from kdscope.methods import METHODS, Interval, InvalidParameterError, Options, create_method
from kdscope.methods.params import Either, LayerNames, NameList, check_params


@pytest.mark.parametrize("name", METHODS.names())
def test_every_hyperparameter_has_a_declared_range_and_its_default_is_in_it(name):
    cls = METHODS.get(name)
    params = inspect.signature(cls.__init__).parameters
    for param, p in params.items():
        if param == "self":
            continue
        assert param in cls.constraints, f"{name}.{param} declares no accepted range"
        assert cls.constraints[param].accepts(p.default), f"{name}.{param}'s default is refused"


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        # a real number, open below
        ("kd", {"temperature": 0}, "Method 'kd': parameter temperature=0 is out of range; "
         "accepted: a real number > 0."),
        ("kd", {"temperature": -2}, "temperature=-2 is out of range; accepted: a real number > 0"),
        # a real number in a closed interval
        ("kd", {"alpha": 1.5}, "Method 'kd': parameter alpha=1.5 is out of range; accepted: a "
         "real number in [0, 1]."),
        # a non-negative loss weight
        ("fitnet", {"beta": -100}, "parameter beta=-100 is out of range; accepted: a real "
         "number >= 0"),
        # an integer
        ("dkd", {"warmup": 2.5}, "parameter warmup=2.5 is out of range; accepted: an integer >= 0"),
        # one of a set of options
        ("random_control", {"mode": "shuffle"}, "accepted: one of 'gaussian', 'permute'"),
        # layer names
        ("at", {"student_layers": "layer1"}, "accepted: None (the default layers) or a list of "
         "layer names"),
        # either of two kinds
        ("dml", {"peers": 0}, "accepted: an integer >= 1 or a non-empty list of names"),
        # not a number at all, and not finite
        ("kd", {"temperature": "4"}, "temperature='4' is out of range"),
        ("kd", {"alpha": float("nan")}, "alpha=nan is out of range"),
    ],
)  # fmt: skip
def test_out_of_range_values_are_refused_with_the_method_parameter_value_and_range(
    name, params, message
):
    with pytest.raises(InvalidParameterError) as err:
        create_method(name, **params)
    assert message in str(err.value)


def test_constraint_kinds():
    assert Interval(0, 1).accepts(0) and Interval(0, 1).accepts(1)
    assert not Interval(0, 1, closed="neither").accepts(0)
    assert not Interval(0, 1, closed="left").accepts(1) and Interval(0, 1, closed="left").accepts(0)
    assert not Interval(0, None).accepts(True)  # a bool is not a number here
    assert Interval(2, None, integer=True).accepts(3) and not Interval(
        2, None, integer=True
    ).accepts(3.0)
    assert Interval(None, 5, closed="right").describe() == "a real number <= 5"
    assert Options(("a", "b")).accepts("a") and not Options(("a", "b")).accepts("c")
    assert (
        LayerNames().accepts(None)
        and LayerNames().accepts(["x"])
        and not LayerNames().accepts([""])
    )
    assert NameList().accepts(["resnet8"]) and not NameList().accepts([])
    either = Either((Interval(1, None, integer=True), NameList()))
    assert either.accepts(2) and either.accepts(["a"]) and not either.accepts(0.5)
    check_params("m", {"x": Interval(0, 1)}, {"x": 0.5, "unconstrained": -1})


def test_a_directly_built_method_is_checked_when_a_step_is_made(digits):
    from kdscope.methods.response import VanillaKD
    from kdscope.models import create_model
    from kdscope.train import DistillStep

    teacher, student = create_model("resnet8", 10, 1), create_model("resnet8", 10, 1)
    with pytest.raises(InvalidParameterError, match="temperature=0 is out of range"):
        DistillStep(student, teacher, VanillaKD(temperature=0))
