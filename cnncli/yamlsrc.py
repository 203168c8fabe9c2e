"""Safe YAML loading that remembers where each mapping came from.

``yaml.safe_load`` forgets line numbers, but every spec error must name its line. We let
PyYAML's safe composer build the node graph (no arbitrary tags, no code) and convert it
ourselves: mappings become :class:`YDict` with a ``line`` attribute. Aliases are expanded
while converting, under a budget, so a "billion laughs" document fails fast instead of
exhausting memory.
"""

from __future__ import annotations

from typing import Any

import yaml

from cnncli.errors import SpecError

_PLAIN_TAGS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})

#: Most nodes a document may expand to (aliases included). Real specs use a few thousand.
MAX_NODES = 200_000


class YDict(dict):
    """A dict that knows the 1-based YAML line of the mapping (and of each key)."""

    line: int | None = None
    key_lines: dict[str, int]


class YList(list):
    """A list that knows the 1-based YAML line of each item."""

    line: int | None = None
    item_lines: list[int]


#: libyaml's parser when PyYAML has it (ResNet-50's spec composes in 1 ms instead of 12);
#: the error texts differ a little from the pure-Python parser's, the lines do not.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: libyaml composes nested nodes by C recursion and crashes the process (a segfault, no
#: error) somewhere between 10,000 and 30,000 levels. Every level of nesting takes one of
#: these characters, so a text with fewer of them cannot nest deeper; one with more (the
#: shipped specs have 59-776) goes to the pure-Python parser, which raises RecursionError.
_NESTING_MARKS = "[{-:?"
_C_MAX_MARKS = 5000


def _loader_for(text: str) -> type:
    if _LOADER is yaml.SafeLoader:
        return _LOADER
    marks = sum(text.count(c) for c in _NESTING_MARKS)
    return _LOADER if marks <= _C_MAX_MARKS else yaml.SafeLoader


def load_yaml(text: str, file: str | None = None) -> Any:
    """Parse one YAML document with safe semantics, keeping line numbers."""
    try:
        # The reader checks every character (Python's when it is built, libyaml's as it
        # reads): a NUL byte fails in one of the two places.
        loader = _loader_for(text)(text)
    except yaml.reader.ReaderError as exc:
        raise _bad_character(exc, text, file) from None
    try:
        node = loader.get_single_node()
    except yaml.reader.ReaderError as exc:  # libyaml counts bytes: let Python's reader say
        raise _bad_character(_python_reader_error(text) or exc, text, file) from None
    except yaml.YAMLError as exc:
        # An unclosed bracket or quote is reported at the end of the stream; the context
        # mark says where it was opened, which is the line the user needs.
        problem_mark = getattr(exc, "problem_mark", None)
        context_mark = getattr(exc, "context_mark", None)
        at_end = problem_mark is not None and problem_mark.index >= len(text.rstrip())
        mark = context_mark if (context_mark is not None and at_end) else problem_mark
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context = getattr(exc, "context", None)
        detail = f"{problem} ({context})" if context else problem
        raise SpecError(f"YAML syntax error: {detail}", file=file, line=line) from None
    except RecursionError:
        raise SpecError("YAML nesting is too deep", file=file) from None
    finally:
        loader.dispose()
    if node is None:
        return None
    budget = [MAX_NODES]
    try:
        return _convert(node, loader, budget, file)
    except RecursionError:
        raise SpecError("YAML nesting is too deep", file=file) from None


def _python_reader_error(text: str) -> yaml.reader.ReaderError | None:
    """The pure-Python reader's error for ``text`` (character positions), if it has one."""
    try:
        yaml.SafeLoader(text).dispose()
    except yaml.reader.ReaderError as exc:
        return exc
    return None


def _bad_character(exc: yaml.reader.ReaderError, text: str, file: str | None) -> SpecError:
    line = text[: exc.position].count("\n") + 1
    char = exc.character if isinstance(exc.character, int) else 0
    return SpecError(f"unacceptable character #x{char:04x} at column "
                     f"{exc.position - text.rfind(chr(10), 0, exc.position)} (control "
                     "characters such as NUL are not allowed in YAML)", file=file, line=line)


def _convert(node: yaml.Node, loader: yaml.SafeLoader, budget: list[int], file: str | None) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise SpecError(
            f"document expands to more than {MAX_NODES:,} nodes (YAML alias bomb?)",
            file=file,
            line=node.start_mark.line + 1,
        )
    line = node.start_mark.line + 1
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
        raise SpecError(
            f"unsupported YAML tag {node.tag} (plain mappings and lists only)", file=file, line=line
        )
    if isinstance(node, yaml.MappingNode):
        out = YDict()
        out.line = line
        out.key_lines = {}
        merged: list[YDict] = []
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                value = _convert(value_node, loader, budget, file)
                merged.extend(value if isinstance(value, list) else [value])
                continue
            key = _convert(key_node, loader, budget, file)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise SpecError("mapping keys must be plain scalars", file=file, line=line)
            if key in out:
                raise SpecError(
                    f"duplicate key '{key}'", file=file, line=key_node.start_mark.line + 1
                )
            out[key] = _convert(value_node, loader, budget, file)
            out.key_lines[str(key)] = key_node.start_mark.line + 1
        for extra in merged:
            if not isinstance(extra, dict):
                raise SpecError("'<<' merge needs a mapping", file=file, line=line)
            for k, v in extra.items():
                out.setdefault(k, v)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = YList()
        items.line = line
        items.item_lines = []
        for child in node.value:
            items.append(_convert(child, loader, budget, file))
            items.item_lines.append(child.start_mark.line + 1)
        return items
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"bad YAML value: {problem}", file=file, line=line) from None
