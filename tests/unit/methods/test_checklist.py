"""The checklist of ``docs/adding-a-method.md``, enforced for every method of
``METHODS``: its name is its registry key; every field declares its explorer
control (so the layout explorer shows every parameter without a second list);
it has a kernel or is native (native methods get Origin's, for probes); and its
kernel says whether it has near/far rules, the torch path running exactly the
rules it declares."""

from __future__ import annotations

import dataclasses

import pytest

from mesa_viz import kernels
from mesa_viz.kernels.near_far import rules_kernel
from mesa_viz.methods import (METHODS, Choice, Derived, Method, Slider, Toggle, control_of,
                              get_method, parameters)

T = 64


@pytest.mark.parametrize("name", list(METHODS))
def test_the_registry_key_is_the_methods_name(name):
    cls = METHODS[name]
    assert cls.name == name and issubclass(cls, Method)
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen


@pytest.mark.parametrize("name", list(METHODS))
def test_every_field_declares_its_explorer_control(name):
    controls = parameters(name)
    assert set(controls) == {f.name for f in dataclasses.fields(METHODS[name])}
    for field, control in controls.items():
        assert isinstance(control, (Slider, Choice, Toggle, Derived)), (field, control)
        if isinstance(control, Slider):
            assert control.lo < control.hi and control.step > 0, field
        if isinstance(control, Choice):
            assert control.options and all(isinstance(o, str) for o in control.options), field


def test_a_field_without_a_control_is_refused_by_name():
    @dataclasses.dataclass(frozen=True)
    class Bare(Method):
        name = "bare"
        width: int | None = None

    with pytest.raises(ValueError, match="method field 'width' declares no explorer control"):
        control_of(next(f for f in dataclasses.fields(Bare) if f.name == "width"))


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_has_a_kernel_or_is_native(name):
    cls = METHODS[name]
    entry = kernels.KERNELS.get(cls)
    assert entry is not None or cls.native, f"{name}: neither a kernel nor native"
    if entry is not None:
        assert entry.rules is None or callable(entry.rules)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_kernel_says_whether_it_has_rules(name):
    """A kernel that runs on its rules (the torch near/far path) declares them;
    past ``T`` they give the positions the Triton launch and that path share."""
    entry = kernels.KERNELS[METHODS[name]]
    if entry.run is rules_kernel:
        assert entry.rules is not None, f"{name} runs on rules it does not declare"
    if entry.rules is None:
        return
    m = get_method(name, train_length=T).resolve(3 * T, prefill_length=3 * T)
    i0 = m.plan().last_start if m.chunked else 0
    rules = entry.rules(m, i0)
    assert isinstance(rules, kernels.Rules), name
    assert kernels.fused_rules(m, i0) == rules
