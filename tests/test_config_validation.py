"""Tests of the config schema check ``metatts.experiments.validation``.

Validation only, no training: every shipped config (each file of
``experiments/configs`` with each argument its ``get_config`` accepts) passes;
each kind of bad value is refused with one line that names the key, the
value and the fix; ``metatts.experiments.run`` refuses before it creates the
workdir; and one subprocess of ``experiments/main.py`` with
``--config.train.num_steps=-5`` exits with status 2, one line on stderr and
no workdir.
"""

import copy
import importlib.util
import os
import re
import subprocess
import sys

import pytest

from metatts import experiments
from metatts.experiments import validation
from metatts.experiments.config import default_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "experiments", "configs")

def load_module(name):
  spec = importlib.util.spec_from_file_location(
      f"_validation_config_{name}", os.path.join(CONFIG_DIR, name + ".py"))
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, CONFIG_DIR)  # speech.py and base.py import siblings
  try:
    spec.loader.exec_module(module)
  finally:
    sys.path.remove(CONFIG_DIR)
  return module


def get_config(name, arg=None):
  module = load_module(name)
  return module.get_config() if arg is None else module.get_config(arg)


def config_arguments(name):
  """Every argument ``experiments/configs/<name>.py`` accepts (None: the
  default), read from the choices its ``get_config`` lists for a bad one;
  sinusoid's METHOD,SIZE pairs from its METHODS and SIZES."""
  module = load_module(name)
  if name == "sinusoid":
    return [None] + [f"{m},{s}" for m in module.METHODS
                     for s in module.SIZES] + list(module.METHODS)
  try:
    module.get_config("no-such-argument")
  except ValueError as e:
    return [None] + sorted(set(re.findall(r"'([\w.-]+)'", str(e)))
                           - {"no-such-argument"})
  raise AssertionError(f"{name}.py accepted an unknown argument")


FILES = sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py"))
SHIPPED = [(name, arg) for name in FILES for arg in config_arguments(name)]


def problems_of(config, workdir=None):
  try:
    validation.validate(config, workdir)
  except validation.ConfigError as e:
    assert str(e) == "\n".join(e.problems)
    assert isinstance(e, ValueError)
    return e.problems
  return []


def test_every_config_argument_is_found():
  assert {"quickstart", "sinusoid", "full", "base", "speech"} <= set(FILES)
  found = {name: [a for n, a in SHIPPED if n == name] for name in FILES}
  assert found["quickstart"] == [None, "quickstart", "smoke"]
  assert found["full"] == [None, "libritts", "vctk"]
  assert found["speech"] == [None]
  assert len(found["base"]) >= 3  # the default and its named variants
  assert len(found["sinusoid"]) == 1 + 6 * 3 + 6
  for name, args in found.items():
    for arg in args[1:]:  # each named argument builds a config
      get_config(name, arg)


@pytest.mark.parametrize("name,arg", SHIPPED,
                         ids=[f"{n}:{a or 'default'}" for n, a in SHIPPED])
def test_every_shipped_config_validates(name, arg):
  assert problems_of(get_config(name, arg)) == []


def test_every_tts_key_has_a_rule_and_its_default_passes_it():
  defaults = default_config()
  rules = validation.tts_rules()
  schema = validation.tts_schema()
  keys = set(schema)
  # A key of default_config without a range rule in tts_rules() still gets
  # its default's type checked (a key added by newer code); the range rules
  # are used for every key they name.
  assert len(set(rules) & keys) >= 0.9 * len(keys), sorted(keys - set(rules))
  for key in set(rules) & keys:
    assert schema[key] == rules[key], key
  for key, rule in schema.items():
    value = defaults
    for part in key.split("."):
      value = value[part]
    assert rule.problem(value) is None, (key, value)
  assert problems_of(defaults) == []


def test_every_sinusoid_key_has_a_rule():
  assert set(get_config("sinusoid", "maml,smoke").keys()) == set(
      validation.sinusoid_rules())


def test_registries_agree():
  from metatts.evaluation import pipeline  # pylint: disable=g-import-not-at-top
  assert set(validation.VALIDATORS) == set(experiments.EXPERIMENTS)
  assert validation._metric_names() == list(pipeline.ALL_METRICS)  # pylint: disable=protected-access


# (key, bad value, the "must ..." text, the fix) on quickstart.py:smoke.
TTS_BAD = [
    ("train.num_steps", -5, "must be an integer >= 1",
     "set --config.train.num_steps to a positive number."),
    ("train.num_steps", 0, "must be an integer >= 1", "a positive number"),
    ("train.num_tasks", 0, "must be an integer >= 1", "a positive number"),
    ("train.max_skipped", -1, "must be an integer >= 0",
     "0 or a positive number"),
    ("seed", -1, "must be an integer >= 0", "0 or a positive number"),
    ("train.inner_lr", 0.0, "must be a number > 0", "a positive number"),
    ("train.outer_lr", -1e-3, "must be a number > 0", "a positive number"),
    ("adapt.lr", float("nan"), "must be a number > 0", "a positive number"),
    ("train.meta_outer_lr", -0.1, "must be a number >= 0",
     "0 or a positive number"),
    ("train.reptile_epsilon", 1.5, "must be a number > 0 and <= 1",
     "a number > 0 and <= 1"),
    ("train.reptile_outer", "rmsprop", "must be one of ['sgd', 'adam']",
     "one of them"),
    ("train.task_map", "scan", "must be one of ['vmap', 'map']",
     "one of them"),
    ("train.init_from_fraction", 1.0, "must be a number >= 0 and < 1",
     "a number >= 0 and < 1"),
    ("adapt.steps", (0, -5), "integers from 0 to 10000", "'(0,5,20,100)'"),
    ("adapt.steps", (0, 2.5), "integers from 0 to 10000", "'(0,5,20,100)'"),
    ("adapt.steps", (), "a non-empty tuple", "'(0,5,20,100)'"),
    ("adapt.shots", (0, 5), "integers >= 1", "'(1,5)'"),
    ("adapt.default_steps", 10001, "an integer from 0 to 10000",
     "an integer from 0 to 10000"),
    ("adapt.max_speakers", 0, "must be an integer >= 1", "a positive number"),
    ("adapt.num_eval", 0, "must be an integer >= 1", "a positive number"),
    ("adapt.optimizer", "adamw", "must be one of ['sgd', 'adam']",
     "one of them"),
    ("adapt.enabled", 1, "must be True or False", "True or False"),
    ("data.corpus", "vtck", "must be one of ['synth', 'vctk', 'libritts', "
     "'generic']", "one of them"),
    ("data.synth_preset", "huge", "must be one of", "one of them"),
    ("data.max_frames", 8, "must be an integer >= 16", "a number >= 16"),
    ("data.root", "", "must be a string (not empty)", "a string"),
    ("methods", ("transfer", "maml"), "has unknown ['maml']",
     "a tuple such as"),
    ("methods", (), "must name at least one", "a tuple such as"),
    ("methods", ("transfer", "transfer"), "must not repeat a name",
     "a tuple such as"),
    ("train.filter", "speakr", "must be one of ['speaker'", "'speaker+decoder'"),
    ("adapt.filter", "", "must be one of ['speaker'", "'speaker+decoder'"),
    ("eval.metrics", ("secs", "bleu"), "has unknown ['bleu']",
     "a tuple such as"),
    ("vocoder.size", "huge", "must be one of", "one of them"),
    ("vocoder.method", "wavenet", "must be one of", "one of them"),
    ("vocoder.upsample_factors", (10, 0), "integers >= 1", "'(10,20)'"),
    ("train.speaker_encoder_size", "huge", "must be one of", "one of them"),
]


def _set(config, key, value):
  node = config
  parts = key.split(".")
  for part in parts[:-1]:
    node = node[part]
  # Bypass the ConfigDict's own type check (e.g. a float in an int field)
  # as a hand-built config or one loaded from JSON could.
  with node.ignore_type():
    node[parts[-1]] = value


@pytest.fixture(scope="module")
def smoke():
  return get_config("quickstart", "smoke")


@pytest.mark.parametrize("key,value,must,fix", TTS_BAD,
                         ids=[f"{k}={v!r}" for k, v, _, _ in TTS_BAD])
def test_bad_tts_value_is_one_line_naming_key_value_and_fix(smoke, key, value,
                                                            must, fix):
  if key not in validation.tts_schema():
    pytest.skip(f"{key} is not a key of this default_config()")
  config = copy.deepcopy(smoke)
  _set(config, key, value)
  problems = problems_of(config)
  assert len(problems) == 1, problems
  line = problems[0]
  assert "\n" not in line
  assert line.startswith(f"config.{key}={validation._fmt(value)}: ")  # pylint: disable=protected-access
  assert must in line, line
  assert f"set --config.{key} to " in line and fix in line, line
  assert line.endswith(".")


def test_the_exact_message_of_the_issue(smoke):
  config = copy.deepcopy(smoke)
  config.train.num_steps = -5
  assert problems_of(config) == [
      "config.train.num_steps=-5: must be an integer >= 1; set "
      "--config.train.num_steps to a positive number."]


def test_boundary_values_are_accepted(smoke):
  config = copy.deepcopy(smoke)
  config.train.num_steps = 1
  config.train.max_skipped = 0
  config.train.meta_outer_lr = 0.0
  config.train.reptile_epsilon = 1.0
  config.train.multitask_weight = 0.0
  config.data.max_train_speakers = 0
  config.adapt.steps = (0,)
  _set(config, "adapt.shots", [1])  # a list, as a hand-built config may have
  config.adapt.default_steps = 10000
  _set(config, "train.inner_lr", 1)  # an int where a float is expected
  config.train.filter = "all"
  config.adapt.filter = "speaker+decoder+postnet"
  config.vocoder.max_speakers = 0
  _set(config, "expected_minutes", 0.5)
  assert problems_of(config) == []


def test_every_failure_is_reported_one_per_line(smoke):
  config = copy.deepcopy(smoke)
  config.train.num_steps = -5
  config.adapt.lr = 0.0
  config.data.corpus = "vtck"
  problems = problems_of(config)
  assert [p.split("=", 1)[0] for p in sorted(problems)] == [
      "config.adapt.lr", "config.data.corpus", "config.train.num_steps"]


def test_free_form_sections_are_checked_by_their_consumers(smoke):
  config = copy.deepcopy(smoke)
  config.model.size = "huge"
  (line,) = problems_of(config)
  assert line.startswith("config.model={") and "'size': 'huge'" in line
  assert "Unknown Tacotron size 'huge'" in line and "\n" not in line
  config = copy.deepcopy(smoke)
  config.model.name = "wavenet"
  (line,) = problems_of(config)
  assert "'tacotron' or 'duration_tacotron'" in line
  config = copy.deepcopy(smoke)
  config.data.features.n_melz = 40
  (line,) = problems_of(config)
  assert "Unknown FeatureConfig keys ['n_melz']" in line
  config = copy.deepcopy(smoke)
  config.train.inner_steps.fomaml = 0
  (line,) = problems_of(config)
  assert line.startswith("config.train.inner_steps=") and "['fomaml']" in line
  config = copy.deepcopy(smoke)
  config.train.inner_steps.fomamll = 1
  (line,) = problems_of(config)
  assert "unknown learner(s) ['fomamll']" in line
  config = copy.deepcopy(smoke)
  config.data.synth_overrides.voices = ("nope",)
  (line,) = problems_of(config)
  assert line.startswith("config.data.synth_overrides=")
  assert "Unknown base voice 'nope'" in line


def test_cross_key_checks(smoke, tmp_path):
  config = copy.deepcopy(smoke)
  config.vocoder.upsample_factors = (10, 10)
  assert problems_of(config) == [
      "config.vocoder.upsample_factors=(10,10): must multiply to the "
      "features' hop_length 200 (not 100); set "
      "--config.vocoder.upsample_factors to factors whose product is 200."]
  config.vocoder.enabled = False  # then the vocoder is not built
  assert problems_of(config) == []
  config = copy.deepcopy(smoke)
  config.data.heldout_seen = ("p1",)
  config.data.heldout_unseen = ("p1", "p2")
  (line,) = problems_of(config)
  assert line.startswith("config.data.heldout_seen=('p1',): shares ['p1']")
  # init_from: a method of this run, an export an earlier run left in the
  # workdir, or an export folder.
  config = copy.deepcopy(smoke)
  config.train.init_from = "transfer"
  assert problems_of(config) == []
  config.train.init_from = "meta-maml"
  (line,) = problems_of(config, str(tmp_path))
  assert "names method 'meta-maml', which config.methods" in line
  os.makedirs(tmp_path / "meta-maml" / "model")
  assert problems_of(config, str(tmp_path)) == []
  config.train.init_from = str(tmp_path / "missing")
  (line,) = problems_of(config)
  assert "nor an existing export folder" in line
  config.train.init_from = str(tmp_path / "meta-maml" / "model")
  assert problems_of(config) == []


def test_missing_and_unknown_keys(smoke):
  config = copy.deepcopy(smoke)
  config.unlock()
  del config.train["num_steps"]
  config.train.num_stepz = 5
  assert sorted(problems_of(config)) == sorted([
      "config.train.num_steps is missing; add it (start from "
      "metatts.experiments.config.default_config()).",
      "config.train.num_stepz is not a key of the tts config; remove it or "
      "fix its spelling (keys of config.train: " + ", ".join(sorted(
          k.split(".", 1)[1] for k in validation.tts_schema()
          if k.startswith("train."))) + ")."])
  import ml_collections  # pylint: disable=g-import-not-at-top
  assert problems_of(ml_collections.ConfigDict({"experiment": "speech"})) == [
      "config.experiment='speech': must be one of ['sinusoid', 'tts', 'vocoder']; set it "
      "in the config's get_config()."]


SINUSOID_BAD = [
    ("num_steps", -5, "must be an integer >= 1"),
    ("method", "mamal", "must be one of ['fomaml', 'imaml', 'maml'"),
    ("inner_lr", 0.0, "must be a number > 0"),
    ("num_eval_tasks", 1, "must be an integer >= 2"),
    ("num_support", 0, "must be an integer >= 1"),
    ("eval_every", -1, "must be an integer >= 0"),
    ("layer_sizes", (1,), "must be a tuple of at least 2 integers >= 1"),
    ("layer_sizes", (2, 40, 1), "must start and end with 1"),
    ("progress", "yes", "must be True or False"),
]


@pytest.mark.parametrize("key,value,must", SINUSOID_BAD,
                         ids=[f"{k}={v!r}" for k, v, _ in SINUSOID_BAD])
def test_bad_sinusoid_value(key, value, must):
  config = get_config("sinusoid", "maml,smoke")
  _set(config, key, value)
  (line,) = problems_of(config)
  assert line.startswith(f"config.{key}={validation._fmt(value)}: {must}")  # pylint: disable=protected-access
  assert f"; set --config.{key} to " in line


def test_run_refuses_before_touching_the_workdir(tmp_path):
  workdir = tmp_path / "run"
  for config in (get_config("sinusoid", "maml,smoke"),
                 get_config("quickstart", "smoke")):
    if "train" in config:
      config.train.num_steps = -5
    else:
      config.num_steps = -5
    with pytest.raises(validation.ConfigError, match=r"num_steps=-5: must"):
      experiments.run(config, str(workdir))
    assert not workdir.exists()


def test_launcher_prints_one_line_and_exits_2(tmp_path):
  workdir = tmp_path / "W"
  proc = subprocess.run(
      [sys.executable, "experiments/main.py",
       "--config", "experiments/configs/quickstart.py:smoke",
       "--workdir", str(workdir), "--config.train.num_steps=-5"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.splitlines() == [
      "error: config.train.num_steps=-5: must be an integer >= 1; set "
      "--config.train.num_steps to a positive number."], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not workdir.exists()  # no results, no config.json, no folder
