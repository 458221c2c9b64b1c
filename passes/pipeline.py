"""Text pipelines: `canonicalize,prune-channels{ratio=0.5,criterion=l1},qdq-insert`.

Passes are separated by commas outside braces; options are `key=value` separated by
commas inside braces. List-valued options use `;` (e.g. `exclude=conv1;fc`).
"""

from __future__ import annotations

from slimcc.errors import PipelineError
from slimcc.passes.base import Pass, get_pass, options_of, parse_option


def split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside braces, rejecting unbalanced braces."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "{":
            depth += 1
            if depth > 1:
                raise PipelineError(f"nested braces in pipeline {text!r}")
        elif char == "}":
            depth -= 1
            if depth < 0:
                raise PipelineError(f"unbalanced '}}' in pipeline {text!r}")
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise PipelineError(f"unbalanced '{{' in pipeline {text!r}")
    parts.append("".join(current))
    return [p.strip() for p in parts]


def parse_pass(item: str) -> Pass:
    """Parse one `name{key=value,...}` item into a configured pass instance."""
    if not item:
        raise PipelineError("empty pass name in pipeline (stray comma?)")
    name, brace, rest = item.partition("{")
    name = name.strip()
    if brace and not rest.endswith("}"):
        raise PipelineError(f"text after '}}' in {item!r}")
    cls = get_pass(name)
    infos = {info.name: info for info in options_of(cls)}
    kwargs = {}
    body = rest[:-1].strip() if brace else ""
    for assignment in filter(None, (a.strip() for a in body.split(","))):
        key, eq, value = assignment.partition("=")
        key = key.strip()
        if not eq:
            raise PipelineError(f"{name}: option {assignment!r} needs a value (key=value)")
        if key not in infos:
            valid = ", ".join(infos) or "none"
            raise PipelineError(f"{name}: unknown option {key!r}; valid options: {valid}")
        if key in kwargs:
            raise PipelineError(f"{name}: option {key!r} given twice")
        kwargs[key] = parse_option(name, infos[key], value.strip())
    try:
        return cls(**kwargs)
    except PipelineError:
        raise
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"{name}: {exc}") from None


def parse_pipeline(text: str) -> list[Pass]:
    """Parse pipeline text into configured passes (one-line PipelineError on any mistake)."""
    if not text or not text.strip():
        raise PipelineError("empty pipeline; give passes like 'canonicalize,prune-channels{ratio=0.5}'")
    return [parse_pass(item) for item in split_top_level(text.strip())]


def format_pipeline(passes: list[Pass]) -> str:
    """The pipeline text that rebuilds `passes` (round-trips through parse_pipeline)."""
    return ",".join(p.spec() for p in passes)
