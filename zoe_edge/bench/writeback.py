"""Write bench scores into ``models.yaml`` without disturbing the owner's file.

A round-trip YAML load keeps comments, key order and quoting; only ``models.<name>.bench.<suite>``
is replaced. The new text is validated as a registry before it replaces the old file, and the
replacement is atomic (a temporary file in the same directory, then ``os.replace``), so a crash or
Ctrl-C leaves either the old file or the new one, never half of each.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zoe_edge.bench.suite import SuiteResult
from zoe_edge.errors import RegistryError
from zoe_edge.registry import parse_registry


def _yaml() -> Any:
    try:
        from ruamel.yaml import YAML
    except ImportError:  # pragma: no cover - the [bench] extra brings it
        raise RegistryError("models.yaml", ["--write needs ruamel.yaml: pip install 'zoe-edge[bench]'"]) from None
    yaml = YAML()  # round-trip mode: comments and order survive
    yaml.preserve_quotes = True
    yaml.width = 120
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def _flow(data: dict[str, Any]) -> Any:
    from ruamel.yaml.comments import CommentedMap

    m = CommentedMap(data)
    m.fa.set_flow_style()
    return m


def suite_record(result: SuiteResult) -> Any:
    """``{at, settings, scores}`` with one flow-style line per score, as the registry schema expects."""
    from ruamel.yaml.comments import CommentedMap

    scores = CommentedMap()
    for name, est in result.scores.items():
        scores[name] = _flow(est.as_dict())
    return CommentedMap([("at", result.at), ("settings", _flow(dict(result.settings))), ("scores", scores)])


def render(text: str, results: Sequence[SuiteResult]) -> str:
    """The registry text with ``results`` written under their models (pure: text in, text out)."""
    yaml = _yaml()
    from ruamel.yaml.comments import CommentedMap

    doc = yaml.load(text)
    models = doc["models"]
    for result in results:
        entry = models[result.model]
        if entry.get("bench") is None:
            entry["bench"] = CommentedMap()
        entry["bench"][result.suite] = suite_record(result)
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def write_scores(path: Path, results: Sequence[SuiteResult]) -> None:
    """Store ``results`` in the registry at ``path`` atomically; raises RegistryError if it would not load."""
    if not results:
        return
    text = path.read_text(encoding="utf-8")
    new = render(text, results)
    import yaml as pyyaml

    parse_registry(pyyaml.safe_load(new), str(path))  # never write a registry the daemon would refuse
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(new)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
