"""The app's number boxes refuse a value out of range, name the field and keep Start off; nothing typed is
swapped for the last valid value (Streamlit's box does that with a min or max: they are left off, and the
config's validator, or the page, checks the value instead; tests/browser/test_forms_browser.py shows it in
a browser).

Every field of every settings form with a range in its metadata is tried below its minimum and above its
maximum, so a new field is covered as soon as it has a range.
"""

from __future__ import annotations

import dataclasses

import pytest
from streamlit.testing.v1 import AppTest

from core.app.app_data import ROOT_ENV
from core.config import CollectConfig, EvaluateConfig, EvolveConfig, RecordConfig, RNNConfig, VAEConfig
from core.stages import STAGES
from pages._ui import label
from tests.conftest import ROOT, make_app_root

TIMEOUT = 120  # seconds a script run may take (the first one loads TensorFlow)
FORMS = [  # (page, form prefix, config class, stage of its Start button)
    ("1_Collect.py", "collect", CollectConfig, "collect"),
    ("2_Train_VAE.py", "vae", VAEConfig, "train-vae"),
    ("3_Train_RNN.py", "rnn", RNNConfig, "train-rnn"),
    ("4_Evolve.py", "evolve", EvolveConfig, "evolve"),
    ("4_Evolve.py", "evaluate", EvaluateConfig, "evaluate"),
    ("4_Evolve.py", "record", RecordConfig, "record"),
]


def test_the_table_lists_every_form_with_a_start_button():
    assert {stage for *_, stage in FORMS} == {name for name, s in STAGES.items() if s.page}


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_data, tiny_world_model):
    return make_app_root(tmp_path_factory.mktemp("forms_root"), tiny_data, tiny_world_model)


def open_page(root, monkeypatch, page: str) -> AppTest:
    monkeypatch.setenv(ROOT_ENV, str(root))
    at = AppTest.from_file(str(ROOT / "pages" / page), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def out_of_range(f: dataclasses.Field) -> list:
    """Values just outside a field's range, of the field's type."""
    meta, kind = f.metadata, type(f.default)
    bad = []
    if meta.get("min") is not None:
        bad.append(kind(meta["min"]) if meta.get("above_min") else kind(meta["min"] - 1))
    if meta.get("max") is not None:
        bad.append(kind(meta["max"] + 1))
    return bad


def errors(at: AppTest) -> str:
    return "\n".join(e.value for e in at.error)


def form_script(stage: str) -> None:
    """A page with nothing but ``stage``'s settings form and its Start button (AppTest runs it)."""
    from core.stages import STAGES
    from pages import _ui
    _ui.start_button(stage, _ui.config_form(STAGES[stage].config, "form"))


def assert_refused(at: AppTest, key: str, name: str, bad, start: str) -> None:
    at.number_input(key=key).set_value(bad).run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.number_input(key=key).value == bad  # kept as typed, not the last valid value
    assert f"Check the settings: {label(name)}: {bad!r} is too" in errors(at), (key, bad, errors(at))
    assert at.button(key=start).disabled, (key, bad)


@pytest.mark.parametrize("stage", [f[3] for f in FORMS])
def test_every_field_out_of_range_is_refused_by_name(root, monkeypatch, stage):
    """Each field in the form, one value out of range each (above the maximum where there is one: below the
    minimum, the other side, is checked without a browser session in the next test)."""
    monkeypatch.setenv(ROOT_ENV, str(root))
    at = AppTest.from_function(form_script, args=(stage,), default_timeout=TIMEOUT).run()
    start = f"start.{stage}"
    assert not at.exception and not at.button(key=start).disabled, errors(at)
    tried = []
    for f in dataclasses.fields(STAGES[stage].config):
        if out_of_range(f):
            key = f"form.{f.name}"
            good = at.number_input(key=key).value
            assert_refused(at, key, f.name, out_of_range(f)[-1], start)
            at.number_input(key=key).set_value(good)  # back on the next run
            tried.append(f.name)
    at.run()
    assert not at.error and not at.button(key=start).disabled, errors(at)  # every value back: Start is on
    assert len(tried) >= 3, tried


@pytest.mark.parametrize("cls", [f[2] for f in FORMS], ids=[f[1] for f in FORMS])
def test_every_value_out_of_range_is_named_as_the_form_names_the_field(cls):
    from core.config import ConfigError, from_dict
    from pages._ui import settings_problem
    for f in dataclasses.fields(cls):
        for bad in out_of_range(f):
            with pytest.raises(ConfigError) as e:
                from_dict(cls, {f.name: bad})
            assert settings_problem(e.value).startswith(f"{label(f.name)}: {bad!r} is too"), settings_problem(e.value)


@pytest.mark.parametrize("page, prefix, cls, stage", FORMS, ids=[f[1] for f in FORMS])
def test_the_pages_forms_refuse_a_value_out_of_range(root, monkeypatch, page, prefix, cls, stage):
    """Each page's own form (with the fields it hides or sets itself) and its Start button."""
    at = open_page(root, monkeypatch, page)
    start = f"start.{stage}"
    assert not at.button(key=start).disabled, errors(at)
    boxes = {w.key for w in at.number_input}
    f = next(f for f in dataclasses.fields(cls) if out_of_range(f) and f"{prefix}.{f.name}" in boxes)
    assert_refused(at, f"{prefix}.{f.name}", f.name, out_of_range(f)[-1], start)


def test_an_emptied_box_is_refused_by_name(root, monkeypatch):
    at = open_page(root, monkeypatch, "1_Collect.py")
    at.number_input(key="collect.episodes").set_value(None).run()
    assert "Check the settings: Episodes is empty: give a number" in errors(at)
    assert at.button(key="start.collect").disabled


def test_the_message_names_the_field_for_the_cli_and_the_form():
    from core.config import ConfigError, from_dict
    from pages._ui import settings_problem
    with pytest.raises(ConfigError) as e:
        from_dict(EvolveConfig, {"sigma0": -0.5})
    assert str(e.value) == "--sigma0=-0.5 is too small: it must be at least 1e-06"
    assert settings_problem(e.value) == "Sigma0: -0.5 is too small: it must be at least 1e-06"


def test_the_boxes_outside_the_forms_refuse_a_value_out_of_range(root, monkeypatch):
    at = open_page(root, monkeypatch, "1_Collect.py")  # two episodes collected: 0 and 1 can be shown first
    at.number_input(key="collect.browse_first").set_value(5).run()
    assert "First episode shown: 5 is too large: it must be at most 1" in [w.value for w in at.warning]
    assert not at.get("video")
    at = open_page(root, monkeypatch, "5_Dream.py")
    at.number_input(key="dream.frame").set_value(-1).run()
    assert "Frame: -1 is too small: it must be at least 0" in errors(at)
    assert at.button(key="dream.new").disabled
    at.number_input(key="dream.frame").set_value(10).run()
    assert not at.error and not at.button(key="dream.new").disabled
    at.segmented_control(key="dream.mode").set_value("Real vs dream").run()
    at.number_input(key="dream.sbs_steps").set_value(10).run()
    assert "Steps: 10 is too small: it must be at least 25" in errors(at)
    assert at.button(key="dream.sbs_go").disabled
