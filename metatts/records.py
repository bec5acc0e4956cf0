"""One-line checks of the JSON records metatts writes (voice.json, model.json).

A bad record fails with one line that names the file, the key and the fix
(docs/api.md, "Failures and what you see"). The voice and the model
validators (``metatts.api.validate_voice_record``,
``metatts.training.export.validate_model_info``) share the number tests,
the error-line builder and the header check (a JSON object, the format
name, a version this metatts reads) from here; the experiment config
schema (``metatts.experiments.validation``) shares the number tests.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, NoReturn, Optional


def is_int(x: Any) -> bool:
  """An integer (Python or numpy), not a bool."""
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_number(x: Any) -> bool:
  """A real number (Python or numpy), not a bool."""
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def one_line_error(where: str, error: type, fix: str
                   ) -> Callable[..., NoReturn]:
  """``bad(key, problem, how=fix)``: raises ``error("WHERE: KEY PROBLEM; HOW.")``."""

  def bad(key: str, problem: str, how: str = fix) -> NoReturn:
    raise error(f"{where}: {key} {problem}; {how}.")

  return bad


def check_header(record: Any, bad: Callable[..., NoReturn], *, fmt: str,
                 version: int, what: str, redo: str,
                 format_fix: Optional[str] = None,
                 version_fix: Optional[str] = None) -> None:
  """Checks that ``record`` is a JSON object of format ``fmt``, version 1..``version``.

  Args:
    record: the parsed JSON.
    bad: from :func:`one_line_error`.
    fmt: the expected ``format`` value.
    version: the newest ``version`` this metatts reads.
    what: the kind of file, for the message (e.g. "a metatts voice").
    redo: how to make the file again (the fix of a record that is not an
      object, and of a wrong format unless ``format_fix`` is given).
    format_fix: the fix of a wrong ``format``.
    version_fix: the fix of a version that is not an integer >= 1 (default:
      ``bad``'s own).
  """
  if not isinstance(record, dict):
    bad("the file", f"holds a {type(record).__name__}, not a JSON object",
        redo)
  if record.get("format") != fmt:
    bad("format", f"is {record.get('format')!r}, not {fmt!r} (not {what})",
        format_fix or redo)
  v = record.get("version")
  if not is_int(v) or v < 1:
    if version_fix is None:
      bad("version", f"is {v!r}, not an integer >= 1")
    bad("version", f"is {v!r}, not an integer >= 1", version_fix)
  if v > version:
    bad("version", f"is {v}, newer than this metatts understands "
        f"({version})", "upgrade metatts")
