"""The shared one-line checks of voice.json / model.json (metatts.records)."""

import numpy as np
import pytest

from metatts import records


def test_number_tests_take_numpy_and_refuse_bools():
  for x in (0, 7, np.int64(3), np.int32(-1)):
    assert records.is_int(x) and records.is_number(x)
  for x in (1.5, np.float32(0.25), float("nan")):
    assert records.is_number(x) and not records.is_int(x)
  for x in (True, False, np.bool_(True), "3", None, [1]):
    assert not records.is_int(x) and not records.is_number(x)


def _check(record, **kw):
  bad = records.one_line_error("dir/x.json", ValueError, "fix it")
  args = dict(fmt="fmt-x", version=2, what="an x file", redo="make it again")
  args.update(kw)
  records.check_header(record, bad, **args)


@pytest.mark.parametrize("record,message", [
    ([1], "dir/x.json: the file holds a list, not a JSON object; make it "
          "again."),
    ({"format": "y", "version": 1},
     "dir/x.json: format is 'y', not 'fmt-x' (not an x file); make it again."),
    ({"format": "fmt-x", "version": "1"},
     "dir/x.json: version is '1', not an integer >= 1; fix it."),
    ({"format": "fmt-x", "version": 0},
     "dir/x.json: version is 0, not an integer >= 1; fix it."),
    ({"format": "fmt-x", "version": 3},
     "dir/x.json: version is 3, newer than this metatts understands (2); "
     "upgrade metatts."),
])
def test_header_failures_are_one_line_naming_file_key_and_fix(record,
                                                             message):
  with pytest.raises(ValueError) as info:
    _check(record)
  assert info.value.args[0] == message


def test_header_fixes_can_be_specific_and_a_good_header_passes():
  with pytest.raises(ValueError, match="; point elsewhere.$"):
    _check({"format": "y"}, format_fix="point elsewhere")
  with pytest.raises(ValueError, match="; set it to 2.$"):
    _check({"format": "fmt-x", "version": None}, version_fix="set it to 2")
  for v in (1, 2, np.int64(2)):
    _check({"format": "fmt-x", "version": v})
