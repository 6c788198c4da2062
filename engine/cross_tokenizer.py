"""Cross-tokenizer mode: a teacher whose tokenizer differs from the policy's.

Sampling stays in π_θ's vocabulary (tokens, logp_theta, logq, logp_behavior are exact for what
is sampled). The teacher reads *its own* tokenization of the same response bytes, and its
next-token distribution is carried onto π_θ's vocabulary (qstar_kernels.carry). This module holds
the host side, in three parts:

- `CrossPair.build`: once per pair — every token's byte string on both sides (byte-level BPE
  tokens can be partial UTF-8: bytes, never decoded text), and the index table
  teacher id → θ id (MAPPING_RULE below), the θ ids whose carry is direct (one-to-one), and the
  stop ids of θ.
- `TeacherView`: one row's teacher tokens. After each appended θ token, the response bytes grow;
  the complete UTF-8 characters among them extend the teacher's text (an incomplete character is
  held back until its last byte arrives; bytes that can never be UTF-8 become U+FFFD, the one
  lossy case). A tail window of the text is re-encoded (WINDOW RULE below), and the first index
  where the tokens changed tells how far the teacher's KV rolls back; the (start, new tokens)
  feed goes to SlotModel.extend.
- `CrossRows`: the per-slot views of one generate call, the hooks core._Run calls (start,
  append, the decode step, finish) and the per-sample records (carry_direct, noncanonical).

WINDOW RULE. For a teacher whose tokenizer has no normalizer and a ByteLevel regex
pre-tokenizer (GPT-2 / Llama-3 / Qwen2 / SmolLM2 style), encode(text) is the concatenation of
BPE(piece) over the regex pieces, after added tokens are split out; the regex has no look-behind
and looks at most a few characters past a piece's end. So when text grows at its end, every
piece that ends at least `margin` characters before the old end is unchanged, and so are its
tokens. The window starts at the last token that starts a piece (word_ids of the encoding) at
or before old_len − margin (bytes), with margin = max(16, the longest added token): the text from there
is re-encoded, the tokens before it are kept. Any other tokenizer is re-encoded in full every
step (exact by definition, slower). tests/test_cross_tokenizer.py checks, at every step, that
the tokens equal a full encoding of the text (merges that move earlier boundaries, multi-byte
characters fed byte by byte).
Not for: the carry math (qstar_kernels/carry.py) or the decode loop (core.py, stepper.py).
"""
from __future__ import annotations

import codecs
import hashlib
from dataclasses import dataclass, field

MAPPING_RULE = "longest-prefix-v1"  # named in manifests and config hashes: change it when the rule changes
RULE_TEXT = ("teacher token -> the longest theta token whose bytes begin its bytes (a byte theta lacks, "
             "never UTF-8: theta's token for U+FFFD); EOS/end-of-turn -> theta's EOS, same-string special "
             "tokens -> each other, BOS -> theta's BOS")


def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode: a byte-level token's characters -> its bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


BYTE_DECODER = _byte_decoder()


def token_bytes(tok) -> list[bytes]:
    """Each id's byte string: added tokens their content (UTF-8), byte-level tokens through the
    byte map, SentencePiece pieces with ▁ as a space and <0xNN> as that byte."""
    vocab = tok.get_vocab()
    n = max(vocab.values()) + 1
    out = [b""] * n
    added = {int(i): t.content for i, t in (getattr(tok, "added_tokens_decoder", None) or {}).items()}
    for s, i in vocab.items():
        if i in added:
            out[i] = added[i].encode("utf-8")
        elif all(c in BYTE_DECODER for c in s):
            out[i] = bytes(BYTE_DECODER[c] for c in s)
        elif len(s) == 6 and s.startswith("<0x") and s.endswith(">"):
            out[i] = bytes([int(s[3:5], 16)])
        else:
            out[i] = s.replace("▁", " ").encode("utf-8")
    return out


def _eos(tok, model) -> list[int]:
    ids = []
    for src in (tok, getattr(model, "generation_config", None)):
        val = getattr(src, "eos_token_id", None)
        if val is not None:
            ids += list(val) if isinstance(val, (list, tuple)) else [val]
    return [int(i) for i in dict.fromkeys(ids)]


def map_tokens(bytes_t: list[bytes], bytes_theta: list[bytes], *, eos_t=(), eos_theta=(), bos_t=None,
               bos_theta=None, special_t=(), special_theta=()) -> list[int]:
    """The index table (MAPPING_RULE): for each teacher id, the θ id that receives its mass."""
    eos_theta = list(eos_theta)
    by_bytes = {}
    for i, b in enumerate(bytes_theta):
        if b and i not in special_theta:
            by_bytes.setdefault(b, i)
    special_by_str = {bytes_theta[i]: i for i in special_theta}
    longest = max(map(len, by_bytes), default=0)

    def prefix(b: bytes):
        return next((by_bytes[b[:k]] for k in range(min(len(b), longest), 0, -1) if b[:k] in by_bytes), None)

    # bytes that never occur in UTF-8 (0xC0, 0xF5..) may lack a θ token: their text is U+FFFD
    fallback = prefix("\ufffd".encode())
    out = []
    for tau, b in enumerate(bytes_t):
        if tau in eos_t and eos_theta:
            same = [i for i in eos_theta if bytes_theta[i] == b]
            out.append(same[0] if same else eos_theta[0])
        elif tau in special_t and b in special_by_str:
            out.append(special_by_str[b])
        elif tau == bos_t and bos_theta is not None:
            out.append(bos_theta)
        else:
            y = prefix(b)
            y = fallback if y is None else y
            if y is None:
                raise ValueError(f"cross-tokenizer: teacher token {tau} ({b!r}) has no theta token that "
                                 "begins it: the policy's tokenizer must cover every byte (byte-level BPE)")
            out.append(y)
    return out


def windowed(tok) -> int | None:
    """The window margin (bytes) when the WINDOW RULE holds for `tok`, else None: 16 (the regex
    looks at most 3 characters past a piece, 4 bytes each) or the longest added token."""
    bt = getattr(tok, "backend_tokenizer", None)
    if bt is None:
        return None
    norm, pre = bt.normalizer, bt.pre_tokenizer
    if norm is not None and str(norm) != "Sequence(normalizers=[])":
        return None
    if pre is None or not str(pre).startswith("ByteLevel(") or "use_regex=True" not in str(pre):
        return None
    added = [t.content for t in (getattr(tok, "added_tokens_decoder", None) or {}).values()]
    return max([16] + [len(a.encode("utf-8")) for a in added])


def fingerprint(tok) -> str:
    """A short hash of a tokenizer's token -> id map (manifests name the teacher's tokenizer)."""
    items = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(repr(items).encode()).hexdigest()[:16]


@dataclass
class CrossPair:
    """What is built once per pair; see the module docstring."""

    tok_theta: object
    tok_t: object
    bytes_theta: list[bytes]
    bytes_t: list[bytes]
    index: list[int]                  # teacher id -> θ id
    direct: list[bool]                # θ id: exactly one teacher preimage, with the same bytes
    n_real_t: int                     # teacher tokenizer ids; logits columns beyond carry nothing
    margin: int | None                # window margin (bytes); None: full re-encode every step
    eos_theta: frozenset[int] = frozenset()
    rule: str = MAPPING_RULE
    tokenizer_t: str = ""             # fingerprint of the teacher's tokenizer
    # where decode time goes, summed over runs (bench/cross_tokenizer.py): seconds and counts
    timing: dict = field(default_factory=lambda: dict(reencode=0.0, extend=0.0, steps=0, fed=0, rows=0))
    _encode: object = field(default=None, repr=False)

    @classmethod
    def build(cls, tok_theta, tok_t, model_theta, model_t) -> "CrossPair":
        b_theta, b_t = token_bytes(tok_theta), token_bytes(tok_t)
        sp = lambda tok: {int(i) for i, t in (getattr(tok, "added_tokens_decoder", None) or {}).items()}  # noqa: E731
        eos_theta, eos_t = _eos(tok_theta, model_theta), _eos(tok_t, model_t)
        index = map_tokens(b_t, b_theta, eos_t=set(eos_t), eos_theta=eos_theta,
                           bos_t=getattr(tok_t, "bos_token_id", None), bos_theta=getattr(tok_theta, "bos_token_id", None),
                           special_t=sp(tok_t), special_theta=sp(tok_theta))
        counts = [0] * len(b_theta)
        for y in index:
            counts[y] += 1
        direct = [False] * len(b_theta)
        for tau, y in enumerate(index):
            direct[y] = counts[y] == 1 and b_t[tau] == b_theta[y]
        bt = tok_t.backend_tokenizer
        return cls(tok_theta=tok_theta, tok_t=tok_t, bytes_theta=b_theta, bytes_t=b_t, index=index, direct=direct,
                   n_real_t=len(b_t), margin=windowed(tok_t), eos_theta=frozenset(eos_theta),
                   tokenizer_t=fingerprint(tok_t),
                   _encode=lambda text: bt.encode(text, add_special_tokens=False))

    def encode(self, text: str):
        """The teacher tokenizer's Encoding of `text` (no special tokens added)."""
        return self._encode(text)

    def teacher_ids(self, theta_tokens: list[int]) -> list[int]:
        """The reference: the teacher's full encoding of the response so far (what every
        TeacherView must equal; the check's teacher-forced recomputation uses it)."""
        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text = dec.decode(bytes().join(self.bytes_theta[t] for t in theta_tokens))
        return list(self.encode(text).ids) if text else []

    def summary(self) -> dict:
        return dict(mapping_rule=self.rule, rule=RULE_TEXT, teacher_tokenizer=self.tokenizer_t,
                    window=f"{self.margin} bytes" if self.margin else "full re-encode",
                    direct_theta_tokens=sum(self.direct))


class TeacherView:
    """One row's teacher tokens: ids == encode(text) after every append (module docstring).
    Positions are byte offsets into the text's UTF-8, summed from the teacher tokens' own bytes
    (not the tokenizer's offsets, whose trimming varies); when those bytes do not spell the text,
    the view stops using the window and re-encodes in full (exact either way)."""

    def __init__(self, cp: CrossPair):
        self.cp = cp
        self.dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""                # the teacher's text: the complete characters so far
        self.raw = bytearray()        # text as UTF-8
        self.ids: list[int] = []
        self.starts: list[int] = []   # each token's first byte in raw
        self.word: list[bool] = []    # the token starts a pre-tokenizer piece
        self.kv: list[int] = []       # the ids the teacher's KV holds (as of the last feed)
        self.dirty = 0                # ids[:dirty] are unchanged since the last feed
        self.margin = cp.margin  # bytes
        self.reencoded = 0            # bytes re-encoded (the window's cost, for tests and benchmarks)

    def _window(self, old_len: int) -> int:
        """Token index the re-encoding starts at (the WINDOW RULE); 0 = everything."""
        if self.margin is None:
            return 0
        limit = old_len - self.margin
        for k in range(len(self.ids) - 1, 0, -1):
            if self.starts[k] <= limit and self.word[k]:
                return k
        return 0

    def append(self, data: bytes) -> None:
        new = self.dec.decode(data)
        if not new:
            return  # an incomplete character: the teacher waits for its last byte
        k = self._window(len(self.raw))
        self.text += new
        self.raw += new.encode("utf-8")
        if not self._encode_from(k) and k:
            self.margin = None  # this tokenizer's token bytes do not spell its text: no window
            self._encode_from(0)
        self.dirty = min(self.dirty, k)

    def _encode_from(self, k: int) -> bool:
        """Re-encode raw from token k's first byte; False when the token bytes miss the text."""
        b = self.starts[k] if k < len(self.starts) else 0
        enc = self.cp.encode(self.raw[b:].decode("utf-8"))  # b starts a piece: a character boundary
        self.reencoded += len(self.raw) - b
        bt = self.cp.bytes_t
        pos, starts = b, []
        for i in enc.ids:
            starts.append(pos)
            pos += len(bt[i]) if i < len(bt) else 0
        words = enc.word_ids
        self.ids[k:] = enc.ids
        self.starts[k:] = starts
        self.word[k:] = [i == 0 or w is None or w != words[i - 1] for i, w in enumerate(words)]
        return pos == len(self.raw)

    def feed(self) -> tuple[int, list[int]]:
        """(first changed index c, ids[c:]): roll the teacher's KV back to c and append these."""
        c = min(self.dirty, len(self.kv), len(self.ids))
        while c < len(self.kv) and c < len(self.ids) and self.kv[c] == self.ids[c]:
            c += 1
        self.kv, self.dirty = list(self.ids), len(self.ids)
        return c, self.ids[c:]


class CrossRows:
    """The per-slot teacher views of one generate call and the hooks core._Run calls."""

    def __init__(self, cp: CrossPair):
        self.cp = cp
        self.views: dict[int, TeacherView] = {}
        self.prompt: dict[int, int] = {}
        self.timing = cp.timing

    def start(self, slot: int, prompt_len_t: int) -> None:
        self.views[slot] = TeacherView(self.cp)
        self.prompt[slot] = prompt_len_t

    def append(self, slot: int, tok: int) -> int:
        """Add θ token `tok` to the row's text; returns the teacher's position bound (the last
        position its KV will hold once the pending feed is appended)."""
        import time

        t0 = time.perf_counter()
        v = self.views[slot]
        v.append(self.cp.bytes_theta[tok] if tok < len(self.cp.bytes_theta) else b"")
        self.timing["reencode"] += time.perf_counter() - t0
        return self.prompt[slot] + max(len(v.ids), 1) - 1

    def step(self, st, rows, slots: list[int], span_theta: int, first):
        """One decode step in this mode: θ decodes its last token; the teacher rolls back and
        appends its changed tokens (one batched extend); the step samples from the carry."""
        feeds = []
        for s in slots:
            c, new = self.views[s].feed()
            feeds.append((self.prompt[s] + c, new))
        self.timing["steps"] += 1
        self.timing["rows"] += len(feeds)
        self.timing["fed"] += sum(len(new) for _, new in feeds)
        return st.cross_step(rows, feeds, span_theta, first, self.timing)

    def finish(self, slot: int, out) -> None:
        """Per-sample records: carry_direct and noncanonical (docs/guide.md#cross-tokenizer)."""
        v = self.views.pop(slot)
        self.prompt.pop(slot, None)
        toks = out.token_ids
        if not toks:
            return
        d = self.cp.direct
        out.carry_direct = sum(1 for t in toks if t < len(d) and d[t]) / len(toks)
        out.noncanonical = noncanonical(self.cp, toks, v.text)


def noncanonical(cp: CrossPair, toks: list[int], text: str) -> float:
    """Share of sampled θ tokens whose end is not a token end of θ's own encoding of the text."""
    b = cp.bytes_theta
    ends, pos = [], 0
    for t in toks:
        pos += len(b[t]) if t < len(b) else 0
        ends.append(pos)
    canon = cp.tok_theta.backend_tokenizer.encode(text, add_special_tokens=False).ids if text else []
    cends, pos = set(), 0
    for t in canon:
        pos += len(b[t]) if t < len(b) else 0
        cends.add(pos)
    return sum(1 for e in ends if e not in cends) / len(ends)
