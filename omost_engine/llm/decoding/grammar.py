"""The canvas program grammar (xgrammar EBNF) and a per-generation matcher around it.

The grammar spells out the exact layout the published Omost models write (see golden 01): a
```` ```python ```` fence, ``canvas = Canvas()``, one ``set_global_description`` with its four keyword
arguments, then any number of ``add_local_description`` calls with all eleven keyword arguments in
order, each statement optionally preceded by ``#`` comment lines (a blank line between statements
and one item per list line, as the models write them; also without the blank line, and ``[]``).
Location, offset, area and colour names are restricted to the allowed values, distances to positive
numbers. Every stretch the grammar fully determines (keyword names, indentation, call syntax) can be
appended without sampling.

Everything is bounded, so a model that never closes a string or a list still ends with a valid
program: list items and calls are counted by the grammar; string and comment lengths by a small
guard beside the matcher (``LengthGuard``), which allows only the closing quote or newline once the
limit is reached. A counted character repetition in xgrammar (``[^']{0,1000}``) costs about ten
times more per token than the unbounded one, which alone would spend ~7% of a tiny model's step.
Strings hold printable characters only, and no escapes: a string holding its own quote uses the
other quote, as ``repr`` writes it.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    import xgrammar

log = logging.getLogger(__name__)

# xgrammar's masking backends to try, per device type, best first. On CUDA the default is a Triton
# kernel (ImportError where Triton is missing, a C compiler needed on first use); its torch_native
# backend works on every device.
MaskBackend = Literal["auto", "cpu", "cuda", "triton", "torch_compile", "torch_native"]  # xgrammar's names
MASK_BACKENDS: dict[str, tuple[MaskBackend, ...]] = {
    "cpu": ("cpu", "torch_native"),
    "cuda": ("triton", "torch_native"),
}
_DEFAULT_BACKENDS: tuple[MaskBackend, ...] = ("auto", "torch_native")
_failed_backends: set[tuple[str, str]] = set()  # (device type, backend) that raised once: not tried again


def apply_bitmask(
    logits: torch.Tensor,
    bitmask: torch.Tensor,
    vocab_size: int,
    backends: Sequence[MaskBackend] | None = None,
) -> str:
    """Mask ``logits`` (2-D, in place) with an xgrammar token bitmask on the same device, with the first
    of ``backends`` that works on this machine (default ``MASK_BACKENDS`` for the device); returns its name."""
    device = logits.device.type
    order = tuple(backends or MASK_BACKENDS.get(device, _DEFAULT_BACKENDS))
    last_error: Exception | None = None
    for backend in order:
        if (device, backend) in _failed_backends and backend != order[-1]:
            continue
        try:
            import xgrammar as xgr

            xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=vocab_size, backend=backend)
            return backend
        except Exception as exc:  # ImportError (no Triton), a failed kernel compile, an unsupported device
            _failed_backends.add((device, backend))
            log.warning(
                "grammar masking: xgrammar's %s backend failed on %s (%s: %s); using the next one",
                backend,
                device,
                type(exc).__name__,
                " ".join(str(exc).split())[:200],
            )
            last_error = exc
    raise RuntimeError(f"no xgrammar masking backend works on {device}") from last_error


# Characters never allowed inside a string or comment: C0/C1 controls, DEL and the Unicode line
# separators (str.splitlines breaks on them, so line numbers in error messages would drift).
_NOT_PRINTABLE = r"\x00-\x1f\x7f-\x9f\u2028\u2029"


@dataclass(frozen=True, kw_only=True)
class CanvasNames:
    """The enumerated values the grammar allows, in the canvas tables' order."""

    locations: tuple[str, ...]
    offsets: tuple[str, ...]
    areas: tuple[str, ...]
    colors: tuple[str, ...]

    @classmethod
    def from_tables(cls) -> CanvasNames:
        """The names of ``omost_engine.tables`` (the canvas's single source of truth)."""
        from omost_engine import tables

        return cls(
            locations=tuple(tables.LOCATIONS),
            offsets=tuple(tables.OFFSETS),
            areas=tuple(tables.AREAS),
            colors=tuple(tables.COLORS),
        )


@dataclass(frozen=True, kw_only=True)
class GrammarLimits:
    """Upper bounds that keep every constrained generation finite. Defaults fit real replies with room
    to spare (golden 01: longest string 430 characters, longest list 8 items, 4 local calls)."""

    max_string_bytes: int = 1000
    max_comment_bytes: int = 200
    max_list_items: int = 32
    max_locals: int = 32
    max_comment_lines: int = 2


def _choice(values: Sequence[str]) -> str:
    # Names hold letters, digits, spaces and hyphens only, so no escaping inside the literal.
    return " | ".join(f"\"'{value}'\"" for value in values)


def canvas_grammar_ebnf(
    names: CanvasNames,
    limits: GrammarLimits | None = None,
    *,
    bounded_text: bool = False,
    leading_space: bool = False,
) -> str:
    """The EBNF of one reply: a fenced canvas program, nothing before or after. It is GBNF-compatible,
    so a remote llama.cpp server (``grammar``) or vLLM (``guided_grammar``) can take it as well.

    String and comment lengths are left to ``LengthGuard`` unless ``bounded_text`` (for a remote
    server, where no guard runs beside the matcher).

    ``leading_space`` admits one space before the fence: a SentencePiece tokenizer that prepends a
    space marker (Phi-3's) starts every reply with the token "▁```", which is how the model was
    trained to begin."""
    lim = limits or GrammarLimits()
    text_bound = f"{{0,{lim.max_string_bytes}}}" if bounded_text else "*"
    comment_bound = f"{{0,{lim.max_comment_bytes}}}" if bounded_text else "*"
    local_args = (
        ("location", "location"),
        ("offset", "offset"),
        ("area", "area"),
        ("distance_to_viewer", "distance"),
        ("description", "str"),
        ("detailed_descriptions", "str_list"),
        ("tags", "str"),
        ("atmosphere", "str"),
        ("style", "str"),
        ("quality_meta", "str"),
        ("HTML_web_color_name", "color"),
    )
    global_args = (
        ("description", "str"),
        ("detailed_descriptions", "str_list"),
        ("tags", "str"),
        ("HTML_web_color_name", "color"),
    )

    def call(method: str, args: tuple[tuple[str, str], ...]) -> str:
        lines = " ".join(f'"    {name}=" {rule} ",\\n"' for name, rule in args)
        return f'"canvas.{method}(\\n" {lines} ")"'

    rules = [
        ('root ::= " "? ' if leading_space else "root ::= ") + '"```python\\n" program "\\n```"',
        # Statements are separated by a blank line, as the models write them; one without is fine too.
        'program ::= comments "canvas = Canvas()\\n" "\\n"? comments global_call local_block'
        f"{{0,{lim.max_locals}}}",
        'local_block ::= "\\n" "\\n"? comments local_call',
        f"comments ::= comment{{0,{lim.max_comment_lines}}}",
        f'comment ::= "# " [^{_NOT_PRINTABLE}]{comment_bound} "\\n"',
        f"global_call ::= {call('set_global_description', global_args)}",
        f"local_call ::= {call('add_local_description', local_args)}",
        f'str_list ::= "[]" | "[\\n" list_item{{0,{lim.max_list_items}}} "    ]"',
        'list_item ::= "        " str ",\\n"',
        f'str ::= "\'" [^\'\\\\{_NOT_PRINTABLE}]{text_bound} "\'" | "\\"" [^"\\\\{_NOT_PRINTABLE}]{text_bound} "\\""',
        # Positive numbers only: the canvas rejects zero and negative distances.
        'distance ::= [1-9] [0-9]{0,3} ("." [0-9]{1,4})? | "0." [0-9]{0,3} [1-9]',
        f"location ::= {_choice(names.locations)}",
        f"offset ::= {_choice(names.offsets)}",
        f"area ::= {_choice(names.areas)}",
        f"color ::= {_choice(names.colors)}",
    ]
    return "\n".join(rules) + "\n"


_Mode = Literal["code", "'", '"', "#"]
# Text that closes what is open, tried in this order when a reply must end now (see completion()).
_CLOSERS = ("'", '"', "```", "\n```", "\n", "]", "    ]", ",", ")", "1", "canvas")


class LengthGuard:
    """Follows the reply byte by byte (code, inside a '-string, a "-string, a comment) and says when
    the current string or comment has reached its limit. In this grammar quotes and ``#`` only occur
    as delimiters outside strings and comments, so four modes are exact. Rewindable per token."""

    def __init__(self, pieces: Sequence[bytes], limits: GrammarLimits) -> None:
        self.pieces = pieces
        self.limits = limits
        # (mode, bytes in the current string or comment, continuation bytes still due in a character)
        self._history: list[tuple[_Mode, int, int]] = [("code", 0, 0)]

    @property
    def mode(self) -> _Mode:
        return self._history[-1][0]

    @property
    def length(self) -> int:
        return self._history[-1][1]

    @property
    def mid_character(self) -> bool:
        return self._history[-1][2] > 0

    @property
    def closer(self) -> bytes | None:
        """The byte that must come next because the limit is reached, else None (also in the middle
        of a multi-byte character, which must be completed first)."""
        mode, length, due = self._history[-1]
        if due:
            return None
        if mode in ("'", '"') and length >= self.limits.max_string_bytes:
            return mode.encode()
        if mode == "#" and length >= self.limits.max_comment_bytes:
            return b"\n"
        return None

    def push(self, token_id: int) -> None:
        mode, length, due = self._history[-1]
        for byte in self.pieces[token_id]:
            if byte >= 0xC0:  # a UTF-8 lead byte: 1-3 continuation bytes follow
                due = 1 if byte < 0xE0 else 2 if byte < 0xF0 else 3
            elif byte >= 0x80:
                due = max(0, due - 1)
            char = chr(byte)
            if mode == "code":
                if char in ("'", '"', "#"):
                    mode, length = char, 0  # type: ignore[assignment]  # one of the openers just tested; `in` does not narrow str
            elif char == ("\n" if mode == "#" else mode):
                mode, length = "code", 0
            else:
                length += 1
        self._history.append((mode, length, due))

    def pop(self, count: int) -> None:
        del self._history[len(self._history) - count :]


class GrammarFactory:
    """Compiles the canvas grammar once per tokenizer and hands out fresh matchers.

    Keep one per loaded model: compiling costs tens of milliseconds (more for big vocabularies), a
    matcher microseconds. ``stop_token_ids`` should be the ids the decode loop stops on.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        names: CanvasNames | None = None,
        limits: GrammarLimits | None = None,
        vocab_size: int | None = None,
        stop_token_ids: Sequence[int] | None = None,
    ) -> None:
        import xgrammar as xgr

        self.tokenizer = tokenizer
        self.limits = limits or GrammarLimits()
        self.vocab_size = vocab_size or len(tokenizer)
        self.info = xgr.TokenizerInfo.from_huggingface(
            tokenizer,
            vocab_size=self.vocab_size,
            stop_token_ids=list(stop_token_ids) if stop_token_ids else None,
        )
        special = set(self.info.special_token_ids)
        self.pieces: list[bytes] = [
            b"" if i in special else bytes(p) for i, p in enumerate(self.info.decoded_vocab)
        ]
        single = {piece: i for i, piece in reversed(list(enumerate(self.pieces))) if len(piece) == 1}
        self.byte_token: dict[bytes, int] = {b: single[b] for b in (b"'", b'"', b"\n") if b in single}
        self._sorted_pieces = sorted(set(self.pieces))
        self._by_piece = {piece: i for i, piece in enumerate(self.pieces) if piece}
        self._longest = max(map(len, self._by_piece))
        self._runs: dict[str, tuple[int, ...]] = {}
        names = names or CanvasNames.from_tables()
        longest = max(
            len(n.encode()) for n in (*names.locations, *names.offsets, *names.areas, *names.colors)
        )
        if self.limits.max_string_bytes < longest:  # the guard would cut an allowed name short
            raise ValueError(f"max_string_bytes must be at least {longest}, the longest allowed name")
        # A tokenizer that prepends a space marker (SentencePiece: Phi-3) begins replies with "▁```".
        self.leading_space = bool(self.info.add_prefix_space)
        self.ebnf = canvas_grammar_ebnf(names, self.limits, leading_space=self.leading_space)
        compiler = xgr.GrammarCompiler(self.info, max_threads=2)
        self.compiled: xgrammar.CompiledGrammar = compiler.compile_grammar(self.ebnf)
        # Endings of allowed names, closing quote included: how completion() finishes a name. Shortest
        # first, ties in the tables' order (a set here made the closing name depend on the hash seed).
        every = (*names.locations, *names.offsets, *names.areas, *names.colors)
        self.name_endings = sorted(dict.fromkeys(n[i:] + "'" for n in every for i in range(len(n))), key=len)
        # Tokens a completion can grow by in one step: a whole minimal local call (the model may
        # open one), measured from the point where a call has just been closed.
        opened = self.matcher()
        opened.matcher.accept_string(
            "```python\ncanvas = Canvas()\n\ncanvas.set_global_description(\n    description='',\n"
            f"    detailed_descriptions=[],\n    tags='',\n    HTML_web_color_name='{names.colors[0]}',\n)\n\n"
        )
        self.call_tokens = len(opened.completion() or ())

    def matcher(self) -> GrammarState:
        return GrammarState(self)

    def extendable(self, piece: bytes) -> bool:
        """Whether ``piece`` is a strict prefix of another token's bytes: a forced run ending in it may
        be split differently from how the model would continue, so it is left to sampling."""
        after = bisect.bisect_right(self._sorted_pieces, piece)
        return after < len(self._sorted_pieces) and self._sorted_pieces[after].startswith(piece)

    def _last_word_start(self, text: str) -> int:
        """Where the tokenizer's last pre-token of ``text`` starts (0 when it has no pre-tokenizer)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        pre = getattr(backend, "pre_tokenizer", None)
        if pre is None:
            return 0
        words = pre.pre_tokenize_str(text)
        return words[-1][1][0] if words else 0

    def spell(self, text: str) -> list[int]:
        """Tokens for ``text`` whose bytes are exactly ``text``: the tokenizer's own split when it
        is exact, else the longest vocabulary pieces left to right."""
        encoded: list[int] = self.tokenizer.encode(text, add_special_tokens=False)
        if b"".join(self.pieces[t] for t in encoded) == text.encode():
            return encoded
        data, ids, at = text.encode(), [], 0
        while at < len(data):
            size = next(
                n
                for n in range(min(self._longest, len(data) - at), 0, -1)
                if data[at : at + n] in self._by_piece
            )
            ids.append(self._by_piece[data[at : at + size]])
            at += size
        return ids

    def forced_run(self, text: str) -> tuple[int, ...]:
        """``text`` tokenised as the model would have split it whatever follows: the tokens of its last
        pre-token (a word or whitespace run the tokenizer may merge with the next characters) are
        left out, and so is a last token that is a prefix of a longer one. Memoised: the same few
        dozen structural stretches recur in every reply."""
        ids = self._runs.get(text)
        if ids is None:
            encoded: list[int] = self.tokenizer.encode(text, add_special_tokens=False)
            if b"".join(self.pieces[t] for t in encoded) != text.encode():
                encoded = []  # e.g. a SentencePiece tokenizer that adds a leading space: no shortcut
            stable = len(text[: self._last_word_start(text)].encode())
            ends = [sum(len(self.pieces[t]) for t in encoded[: i + 1]) for i in range(len(encoded))]
            encoded = [t for t, end in zip(encoded, ends, strict=True) if end <= stable]
            if encoded and self.extendable(self.pieces[encoded[-1]]):
                encoded.pop()
            ids = tuple(encoded)
            if len(self._runs) < 4096:
                self._runs[text] = ids
        return ids


class GrammarState:
    """One generation's position in the grammar, with what the decode loop needs: masking a copy of
    a row of logits, accepting and rolling back tokens, and the tokens the grammar forces next."""

    def __init__(self, factory: GrammarFactory) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self.factory = factory
        self.matcher = xgr.GrammarMatcher(factory.compiled, max_rollback_tokens=-1)
        self.guard = LengthGuard(factory.pieces, factory.limits)
        self._bitmask = xgr.allocate_token_bitmask(1, factory.vocab_size)

    @property
    def terminated(self) -> bool:
        return self.matcher.is_terminated()

    @property
    def completed(self) -> bool:
        return self.matcher.is_completed()

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return tuple(self.matcher.stop_token_ids)

    def _closing_token(self) -> int | None:
        closer = self.guard.closer
        return None if closer is None else self.factory.byte_token.get(closer)

    def allowed_tokens(self) -> set[int]:
        """Every token allowed next (for checks and tests; the loop masks with the bitmask)."""
        closing = self._closing_token()
        if closing is not None:
            return {closing}
        self.matcher.fill_next_token_bitmask(self._bitmask)
        words = self._bitmask[0].to(torch.int64) & 0xFFFFFFFF
        bits = (words.unsqueeze(1) >> torch.arange(32, dtype=torch.int64)) & 1
        ids = torch.nonzero(bits.reshape(-1)).flatten().tolist()
        return {int(i) for i in ids if i < self.factory.vocab_size}

    def accept(self, token_id: int) -> bool:
        if not self.matcher.accept_token(int(token_id)):
            return False
        self.guard.push(int(token_id))
        return True

    def rollback(self, count: int) -> None:
        if count > 0:
            self.matcher.rollback(count)
            self.guard.pop(count)

    def mask_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """A masked float32 copy of one row of logits; the caller's tensor is never written (under
        prompt lookup the same logits serve every draft position)."""
        masked = logits.detach().to(torch.float32).clone()
        closing = self._closing_token()
        if closing is not None:
            keep = masked[closing].clone()
            masked.fill_(float("-inf"))
            masked[closing] = keep
            return masked
        self.matcher.fill_next_token_bitmask(self._bitmask)
        bitmask = self._bitmask.to(masked.device, non_blocking=True)
        apply_bitmask(masked.unsqueeze(0), bitmask, self.factory.vocab_size)
        if masked.shape[-1] > self.factory.vocab_size:  # padded embedding rows are never valid
            masked[self.factory.vocab_size :] = float("-inf")
        return masked

    def completion(self) -> list[int] | None:
        """Tokens of a short text that finishes the program from here: whatever is open is closed,
        each missing value is the first that fits ('' for strings, 1 for distances, the first
        allowed name), no new call is started. Every step is checked by a forked matcher, so the
        result is always valid; None when no such text is found (or mid-way through a character)."""
        if self.guard.mid_character or self.matcher.is_terminated():
            return None
        matcher = self.matcher.fork()
        text = ""
        mode = self.guard.mode
        if mode != "code":  # close the open string or comment first (a name is finished below)
            closer = "\n" if mode == "#" else mode
            trial = matcher.fork()
            if trial.accept_string(closer):
                matcher, text = trial, closer
        for _ in range(400):
            if matcher.is_completed():
                return self.factory.spell(text)
            jump = matcher.find_jump_forward_string()
            if jump:
                matcher.accept_string(jump)
                text += jump
                continue
            for atom in (*_CLOSERS, *self.factory.name_endings):
                trial = matcher.fork()
                if trial.accept_string(atom):
                    matcher, text = trial, text + atom
                    break
            else:
                return None
        return None

    def forced_tokens(self) -> list[int]:
        """Tokens certain to come next, not yet accepted: the closing quote or newline at a length
        limit, else the grammar's jump-forward string, tokenised; its last token is dropped when it
        could merge with whatever follows (a model reads a non-canonical split worse)."""
        closing = self._closing_token()
        if closing is not None:
            return [closing]
        if self.matcher.is_terminated():
            return []
        text = self.matcher.find_jump_forward_string()
        return list(self.factory.forced_run(text)) if text else []
