"""CLIP's byte-pair encoding (BPE) tokenizer: from a prompt to 77 token ids.

Stable Diffusion v1 reads its prompt through CLIP's text encoder, so it must cut the text into
exactly the pieces CLIP was trained on. The recipe, step by step:

1. **Clean** the text: undo HTML escapes (``&amp;`` -> ``&``), collapse runs of whitespace into
   one space, strip the ends, lowercase. CLIP's vocabulary has no capital letters.
2. **Pre-tokenize** with a regular expression: words (runs of letters), single digits,
   runs of punctuation, and English endings like ``'s`` ``'t`` ``'re``. BPE never merges
   across these pieces.
3. **Bytes to characters**: each piece becomes its UTF-8 bytes, and each byte a printable
   stand-in character (see ``bytes_to_unicode``). Any text at all, emoji and CJK included, is
   a sequence of bytes, so nothing is ever "unknown".
4. **Merge**: start from single characters, the last one marked ``</w>`` (end of word), and
   repeatedly join the adjacent pair that the vocabulary file ranks first (Sennrich et al.,
   2016). Frequent words end as one token (``horse</w>``), rare ones as several.
5. **Frame**: ids between a start token (49406) and an end token (49407), padded with the end
   token up to 77 positions. That is what KerasCV and the original SD code feed the text
   encoder; the empty prompt ``""`` becomes ``[49406] + [49407] * 76``, SD's unconditional
   prompt for classifier-free guidance.
"""

import gzip
import hashlib
import html
from pathlib import Path

import numpy as np
import regex

START_TOKEN = 49406  # "<|startoftext|>"
END_TOKEN = 49407  # "<|endoftext|>", also used as padding
MAX_LENGTH = 77  # CLIP's context length: start + at most 75 text tokens + end

VOCAB_PATH = Path(__file__).parent / "data" / "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
NUM_MERGES = 49152 - 256 - 2  # 48,894 merges: 2*256 byte tokens + merges + 2 special = 49,408

# Step 2: the pieces BPE works on, in order of preference. The special tokens come first so a
# literal "<|endoftext|>" in a prompt stays one token. `regex` (not `re`) knows \p{L} (any
# letter) and \p{N} (any digit) in every script.
PIECES = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)


def bytes_to_unicode():
    """A printable character for each of the 256 byte values: dict {byte: str of length 1}.

    The vocabulary file is plain text with pieces separated by spaces, so a token cannot hold a
    raw space, newline or control byte. Bytes that already print as one visible Latin-1
    character (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``; 188 of them) stand for themselves;
    the other 68 are moved, in byte order, to ``chr(256)``, ``chr(257)``, ... The dict keeps
    that order (printable ones first) because it is also the order of the first 256 token ids.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return table


def clean(text):
    """Step 1, as CLIP/KerasCV do it (no ftfy): unescape HTML twice, collapse whitespace, lower."""
    text = html.unescape(html.unescape(text))
    # `regex`'s \s, as in KerasCV: unlike `str.split`, it leaves \x1c..\x1f inside the text.
    return regex.sub(r"\s+", " ", text).strip().lower()


class Tokenizer:
    """CLIP's BPE tokenizer; gives the same ids as KerasCV's ``SimpleTokenizer`` for any text.

    ``Tokenizer()(prompts)`` -> int32 array (B, 77) for the text encoder;
    ``encode(text)`` -> list of ids with start/end; ``decode(ids)`` -> text.
    ``vocab_path`` points at another copy of ``bpe_simple_vocab_16e6.txt.gz`` (hash-checked).
    """

    def __init__(self, vocab_path=None):
        path = Path(vocab_path or VOCAB_PATH)
        data = path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != VOCAB_SHA256:
            raise ValueError(
                f"The BPE vocabulary file {path} is not the one CLIP ships: expected SHA-256 "
                f"{VOCAB_SHA256}, got {actual}. Restore the file (it is part of sdlearn)."
            )
        # The file: a version header, then one merge per line, "t h" = join "t" and "h".
        # The line number is the merge's rank: lower ranks were more frequent, so merge first.
        lines = gzip.decompress(data).decode("utf-8").split("\n")[1 : NUM_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        self.merge_ranks = {pair: rank for rank, pair in enumerate(merges)}

        # Token ids: 256 single bytes, the same 256 at the end of a word, one token per merge
        # result, then the two special tokens (ids 49406, 49407). 49,408 in all.
        self.byte_to_char = bytes_to_unicode()
        self.char_to_byte = {c: b for b, c in self.byte_to_char.items()}
        chars = list(self.byte_to_char.values())
        vocab = chars + [c + "</w>" for c in chars] + ["".join(pair) for pair in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.token_to_id = {token: i for i, token in enumerate(vocab)}
        self.id_to_token = dict(enumerate(vocab))

        # Step 4 is the slow part and prompts repeat words, so remember each piece's result.
        self.cache = {"<|startoftext|>": ["<|startoftext|>"], "<|endoftext|>": ["<|endoftext|>"]}

    def bpe(self, piece):
        """Step 4: split one pre-token (already byte-mapped) into vocabulary tokens (list of str).

        The word starts as its characters, with ``</w>`` glued to the last one, so that ``a</w>``
        (the word "a") and ``a`` (an "a" inside "cat") are different tokens. Each round joins
        every occurrence, left to right, of the best-ranked adjacent pair; it stops when no
        adjacent pair is a known merge.
        """
        if piece in self.cache:
            return self.cache[piece]
        word = [*piece[:-1], piece[-1] + "</w>"]
        while len(word) > 1:
            pair = min(zip(word, word[1:]), key=lambda p: self.merge_ranks.get(p, float("inf")))
            if pair not in self.merge_ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if tuple(word[i : i + 2]) == pair:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self.cache[piece] = word
        return word

    def encode(self, text):
        """Text -> ``[START_TOKEN, *ids, END_TOKEN]`` (list of int), no padding, any length."""
        ids = [START_TOKEN]
        for piece in PIECES.findall(clean(text)):
            piece = "".join(self.byte_to_char[b] for b in piece.encode("utf-8"))
            ids += [self.token_to_id[token] for token in self.bpe(piece)]
        return ids + [END_TOKEN]

    def decode(self, ids):
        """Ids (any int sequence) -> text, dropping start/end/padding tokens.

        Each ``</w>`` becomes a space, so ``decode(encode(x)) == x`` for lowercase words with
        single spaces; punctuation comes back space-separated ("a cat , a dog").
        """
        unknown = [i for i in ids if i not in self.id_to_token]
        if unknown:
            raise ValueError(f"ids {unknown[:5]} are not in the vocabulary (0 to "
                             f"{len(self.id_to_token) - 1})")
        chars = "".join(self.id_to_token[i] for i in ids if i not in (START_TOKEN, END_TOKEN))
        data = bytes(self.char_to_byte[c] for c in chars)
        return data.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def __call__(self, prompts, truncate=False):
        """One prompt (str) or a list/tuple of B prompts -> int32 array (B, 77) of token ids.

        Each row is ``encode(prompt)`` padded with END_TOKEN to MAX_LENGTH. A prompt longer
        than 77 tokens is an error unless ``truncate=True``, which keeps its first 76 tokens
        and puts END_TOKEN last (CLIP never saw more than 77 positions).
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)):
            raise TypeError(f"prompts must be a str or a list/tuple of str, got {prompts!r} "
                            f"of type {type(prompts).__name__}")
        batch = np.full((len(prompts), MAX_LENGTH), END_TOKEN, dtype="int32")
        for row, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise TypeError(f"prompts[{row}] must be a str, got {prompt!r} "
                                f"of type {type(prompt).__name__}")
            ids = self.encode(prompt)
            if len(ids) > MAX_LENGTH and not truncate:
                raise ValueError(
                    f"Prompt {row} is {len(ids)} tokens long (start and end tokens included), "
                    f"more than the limit of {MAX_LENGTH}. Shorten it (or tokenize it with "
                    f"truncate=True, which keeps its first {MAX_LENGTH - 1} tokens and ends it "
                    "with END_TOKEN)."
                )
            ids = ids[: MAX_LENGTH - 1] + [END_TOKEN] if len(ids) > MAX_LENGTH else ids
            batch[row, : len(ids)] = ids
        return batch
