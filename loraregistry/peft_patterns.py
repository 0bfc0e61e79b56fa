"""peft's ``rank_pattern`` / ``alpha_pattern`` key matching, for keys read from untrusted files.

peft matches a pattern key against a module name as ``re.match(rf"(.*\\.)?({key})$", name)``. Handing a key
from a stranger's file to ``re`` lets it backtrack for hours (``(.|.)*Z``), so this module matches the same
language with a Thompson NFA simulated one character at a time (work: name length x pattern states, never
exponential), with the state sets it meets cached as a lazy DFA.

The subset understood is what peft users write: literals, ``\\.``-style escapes, ``\\d \\w \\s`` (and their
negations), ``.``, character classes, groups (``(...)``, ``(?:...)``, ``(?P<name>...)``), ``|``, ``* + ?``
(greedy or lazy) and ``{m}``, ``{m,}``, ``{,n}``, ``{m,n}``, anchors ``^`` and ``$``. Anything else
(backreferences, lookaround, flags, possessive quantifiers, a pattern over ``MAX_PATTERN_LENGTH`` characters or
one that expands to over ``MAX_STATES`` states) is taken as a literal module name, matched exactly or as a
``.name`` suffix: never an exception, never a regex built from file contents.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, TypeVar

MAX_PATTERN_LENGTH = 1_000  # characters in one pattern key
MAX_PATTERNS = 1_000  # pattern keys looked at per table (a config with more is not a real peft config)
MAX_STATES = 4_000  # NFA states after expanding {m,n}; bounds the work per character
_MAX_GROUP_DEPTH = 50
_DFA_CACHE_LIMIT = 20_000  # cached (state set, character) steps per pattern

V = TypeVar("V")


class _Unsupported(Exception):
    """The pattern uses syntax outside the subset (or is too big): it is matched as a literal name."""


# --- parsing: pattern text -> a small syntax tree ----------------------------------------------------------

class _Set(NamedTuple):
    """One character matcher: ``chars`` (a frozenset), ``ranges`` ((lo, hi) code points), ``categories``
    (d/w/s/D/W/S), negated; ``.`` is a negated set of {"\\n"}."""

    chars: frozenset[str]
    ranges: tuple[tuple[int, int], ...]
    categories: str
    negated: bool

    def accepts(self, ch: str) -> bool:
        hit = (ch in self.chars or any(lo <= ord(ch) <= hi for lo, hi in self.ranges)
               or any(_in_category(ch, c) for c in self.categories))
        return hit != self.negated


def _in_category(ch: str, category: str) -> bool:
    # Python's re on str patterns: \d = Unicode decimal, \w = alphanumeric or "_", \s = Unicode whitespace.
    lower = category.lower()
    if lower == "d":
        hit = ch.isdecimal()
    elif lower == "w":
        hit = ch.isalnum() or ch == "_"
    else:
        hit = ch.isspace()
    return hit if category.islower() else not hit


_ANY = _Set(frozenset("\n"), (), "", True)
_CATEGORIES = "dwsDWS"
_SPECIAL = set(".^$*+?{}[]\\|()")


class _Parser:
    """Recursive descent over the pattern text. Nodes: ("set", _Set), ("cat", [..]), ("alt", [..]),
    ("rep", node, min, max | None), ("bol",), ("eol",)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0

    def parse(self):
        node = self._alternation()
        if self.pos != len(self.text):  # a ")" with no "(": re refuses it too
            raise _Unsupported
        return node

    def _peek(self) -> str | None:
        return self.text[self.pos] if self.pos < len(self.text) else None

    def _alternation(self):
        branches = [self._concatenation()]
        while self._peek() == "|":
            self.pos += 1
            branches.append(self._concatenation())
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def _concatenation(self):
        items: list[Any] = []
        while (ch := self._peek()) is not None and ch not in "|)":
            atom = self._atom()
            items.append(self._quantified(atom))
        return ("cat", items)

    def _atom(self):
        ch = self.text[self.pos]
        self.pos += 1
        if ch == ".":
            return ("set", _ANY)
        if ch == "^":
            return ("bol",)
        if ch == "$":
            return ("eol",)
        if ch == "\\":
            return ("set", self._escape())
        if ch == "[":
            return ("set", self._char_class())
        if ch == "(":
            return self._group()
        if ch in "*+?":
            raise _Unsupported  # nothing to repeat: re refuses it
        if ch == "{" and self._repeat_bounds(self.pos - 1) is not None:
            raise _Unsupported  # a valid {m,n} with nothing before it: re refuses it
        return ("set", _Set(frozenset(ch), (), "", False))  # "{", "}", "]" alone are literals, as in re

    def _escape(self) -> _Set:
        if self.pos >= len(self.text):
            raise _Unsupported
        ch = self.text[self.pos]
        self.pos += 1
        if ch in _CATEGORIES:
            return _Set(frozenset(), (), ch, False)
        if ch.isascii() and ch.isalnum():
            raise _Unsupported  # \b \A \1 \x41 ...: assertions, backreferences, codes
        return _Set(frozenset(ch), (), "", False)

    def _char_class(self) -> _Set:
        text = self.text
        negated = self._peek() == "^"
        if negated:
            self.pos += 1
        chars: set[str] = set()
        ranges: list[tuple[int, int]] = []
        categories = ""
        first = True
        while True:
            if self.pos >= len(text):
                raise _Unsupported  # unterminated set
            ch = text[self.pos]
            if ch == "]" and not first:
                self.pos += 1
                break
            first = False
            if ch == "[" or text.startswith(("--", "&&", "~~", "||"), self.pos):
                raise _Unsupported  # possible future set operations: re warns, we do not guess
            low, category = self._class_item()
            if category:
                categories += category
                continue
            if self._peek() == "-" and self.pos + 1 < len(text) and text[self.pos + 1] != "]":
                self.pos += 1
                high, high_category = self._class_item()
                if high_category or ord(high) < ord(low):
                    raise _Unsupported  # re refuses bad ranges
                ranges.append((ord(low), ord(high)))
            else:
                chars.add(low)
        return _Set(frozenset(chars), tuple(ranges), categories, negated)

    def _class_item(self) -> tuple[str, str]:
        """(character, "") or ("", category letter) for one member of a [...] set."""
        ch = self.text[self.pos]
        self.pos += 1
        if ch != "\\":
            return ch, ""
        if self.pos >= len(self.text):
            raise _Unsupported
        ch = self.text[self.pos]
        self.pos += 1
        if ch in _CATEGORIES:
            return "", ch
        if ch.isascii() and ch.isalnum():
            raise _Unsupported
        return ch, ""

    def _group(self):
        text = self.text
        if text.startswith("?:", self.pos):
            self.pos += 2
        elif text.startswith("?P<", self.pos):
            end = text.find(">", self.pos)
            name = text[self.pos + 3 : end] if end != -1 else ""
            if not name.isidentifier():
                raise _Unsupported
            self.pos = end + 1
        elif self._peek() == "?":
            raise _Unsupported  # lookaround, flags, atomic groups, conditionals, (?P=name)
        self.depth += 1
        if self.depth > _MAX_GROUP_DEPTH:
            raise _Unsupported
        inner = self._alternation()
        self.depth -= 1
        if self._peek() != ")":
            raise _Unsupported  # missing ")"
        self.pos += 1
        return inner

    def _repeat_bounds(self, at: int) -> tuple[int, int | None, int] | None:
        """(min, max, end position) when ``{...}`` at ``at`` is a repeat the way re reads it, else None."""
        close = self.text.find("}", at)
        if close == -1:
            return None
        body = self.text[at + 1 : close]
        low, comma, high = body.partition(",")
        if not all(part == "" or (part.isascii() and part.isdigit()) for part in (low, high)):
            return None
        if not comma:
            if not low:
                return None
            return int(low[:8]) if len(low) <= 8 else 10**8, int(low[:8]) if len(low) <= 8 else 10**8, close + 1
        lo = int(low) if low and len(low) <= 8 else (0 if not low else 10**8)
        hi = (int(high) if len(high) <= 8 else 10**8) if high else None
        return lo, hi, close + 1

    def _quantified(self, atom):
        ch = self._peek()
        if ch in ("*", "+", "?"):
            self.pos += 1
            low, high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[ch]
        elif ch == "{" and (bounds := self._repeat_bounds(self.pos)) is not None:
            low, high, self.pos = bounds
            if high is not None and high < low:
                raise _Unsupported  # re refuses min > max
        else:
            return atom
        if atom[0] in ("bol", "eol"):
            raise _Unsupported  # a repeated anchor: re accepts some of these, none is worth modelling
        nxt = self._peek()
        if nxt == "?":
            self.pos += 1  # lazy: the same set of matches
        elif nxt == "+":
            raise _Unsupported  # possessive: changes what matches
        elif nxt in ("*", "{") and (nxt == "*" or self._repeat_bounds(self.pos) is not None):
            raise _Unsupported  # "multiple repeat": re refuses it
        return ("rep", atom, low, high)


# --- compiling: syntax tree -> NFA ------------------------------------------------------------------------
# A state is ("set", _Set, next) | ("split", a, b) | ("bol", next) | ("eol", next) | ("accept",).


class _Nfa:
    def __init__(self) -> None:
        self.states: list[list[Any]] = []

    def add(self, *state: Any) -> int:
        if len(self.states) >= MAX_STATES:
            raise _Unsupported
        self.states.append(list(state))
        return len(self.states) - 1

    def build(self, node, out: int) -> int:
        """States for ``node`` that continue to ``out``; returns the entry state (built back to front)."""
        kind = node[0]
        if kind == "set":
            return self.add("set", node[1], out)
        if kind in ("bol", "eol"):
            return self.add(kind, out)
        if kind == "cat":
            for item in reversed(node[1]):
                out = self.build(item, out)
            return out
        if kind == "alt":
            entries = [self.build(branch, out) for branch in node[1]]
            entry = entries[-1]
            for other in reversed(entries[:-1]):
                entry = self.add("split", other, entry)
            return entry
        _, atom, low, high = node
        if high is None:  # atom{low,}: low copies, then a loop
            loop = self.add("split", -1, out)
            self.states[loop][1] = self.build(atom, loop)
            out = loop
        else:
            for _ in range(high - low):  # optional copies, each may stop early
                out = self.add("split", self.build(atom, out), out)
        for _ in range(low):
            out = self.build(atom, out)
        return out


class _Matcher:
    """A compiled pattern: the NFA, a literal suffix every match ends with (a cheap pre-check), and the
    lazily built DFA (state set, character) -> next state set."""

    def __init__(self, key: str) -> None:
        tree = _Parser(key).parse()
        self.suffix = _literal_suffix(tree)
        # peft's wrapping: (.*\.)?(key)$
        any_prefix = ("cat", [("rep", ("set", _ANY), 0, None), ("set", _Set(frozenset("."), (), "", False))])
        wrapped = ("cat", [("rep", any_prefix, 0, 1), tree, ("eol",)])
        nfa = _Nfa()
        accept = nfa.add("accept")
        self.start = nfa.build(wrapped, accept)
        self.states = [tuple(s) for s in nfa.states]
        self.accept = accept
        self.steps: dict[tuple[frozenset[int], str], frozenset[int]] = {}

    def _closure(self, seeds: Iterable[int], *, at_start: bool, at_end: bool) -> frozenset[int]:
        """States reachable without consuming a character; keeps the character states and accept."""
        found: set[int] = set()
        seen: set[int] = set()
        stack = list(seeds)
        states = self.states
        while stack:
            index = stack.pop()
            if index in seen:
                continue
            seen.add(index)
            state = states[index]
            kind = state[0]
            if kind == "split":
                stack.append(state[1])
                stack.append(state[2])
            elif kind == "bol":
                if at_start:
                    stack.append(state[1])
            elif kind == "eol":
                if at_end:
                    stack.append(state[1])
            else:
                found.add(index)
        return frozenset(found)

    def _move(self, current: frozenset[int], ch: str) -> list[int]:
        states = self.states
        return [states[i][2] for i in current if states[i][0] == "set" and states[i][1].accepts(ch)]

    def matches(self, name: str) -> bool:
        suffix = self.suffix
        if suffix and not (name.endswith(suffix) or (name.endswith("\n") and name[:-1].endswith(suffix))):
            return False
        n = len(name)

        def at_end(i: int) -> bool:  # re's "$": the end, or just before a final newline
            return i == n or (i == n - 1 and name[-1] == "\n")

        current = self._closure([self.start], at_start=True, at_end=at_end(0))
        steps = self.steps
        for i, ch in enumerate(name, 1):
            if self.accept in current:
                return True
            if not current:
                return False
            if at_end(i):
                current = self._closure(self._move(current, ch), at_start=False, at_end=True)
                continue
            nxt = steps.get((current, ch))
            if nxt is None:
                nxt = self._closure(self._move(current, ch), at_start=False, at_end=False)
                if len(steps) < _DFA_CACHE_LIMIT:
                    steps[(current, ch)] = nxt
            current = nxt
        return self.accept in current


def _literal_suffix(tree) -> str:
    """The literal characters every match of ``tree`` ends with ("" when it may end otherwise)."""
    if tree[0] != "cat":
        return ""
    tail: list[str] = []
    for item in reversed(tree[1]):
        if item[0] == "set" and not item[1].negated and not item[1].ranges and not item[1].categories \
                and len(item[1].chars) == 1:
            tail.append(next(iter(item[1].chars)))
        else:
            break
    return "".join(reversed(tail))


@functools.lru_cache(maxsize=4096)
def _compile(key: str) -> _Matcher | None:
    """The matcher for ``key``, or None when it is matched as a literal name."""
    if len(key) > MAX_PATTERN_LENGTH:
        return None
    try:
        return _Matcher(key)
    except (_Unsupported, RecursionError):
        return None


def peft_pattern_matches(key: str, name: str) -> bool:
    """Whether peft would apply pattern ``key`` to module ``name`` (linear time for any key)."""
    matcher = _compile(key)
    if matcher is None:
        return name == key or name.endswith("." + key)
    return matcher.matches(name)


def first_matching(patterns: Mapping[str, V], names: Iterable[str]) -> V | None:
    """The value of the first pattern key (in the table's order, like peft) that matches any of ``names``;
    only the first ``MAX_PATTERNS`` keys are looked at, and keys that are not strings are skipped."""
    names = list(names)
    for index, (key, value) in enumerate(patterns.items()):
        if index >= MAX_PATTERNS:
            break
        if isinstance(key, str) and any(peft_pattern_matches(key, name) for name in names):
            return value
    return None
