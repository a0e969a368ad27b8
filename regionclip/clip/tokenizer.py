"""CLIP's byte-level BPE tokenizer and the original RegionCLIP's truncating ``tokenize``.

Text is cleaned like CLIP (``ftfy.fix_text``, HTML-unescaped twice, whitespace collapsed, lower
case), split with CLIP's regular expression, mapped to byte symbols and merged with the BPE ranks of
``bpe_simple_vocab_16e6.txt.gz`` (see ``README.md`` in this folder for the file's provenance).
Vocabulary: 256 byte symbols, their 256 end-of-word variants, 48894 merges, then
``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407): 49408 ids.

The module needs only ``ftfy``, ``regex`` and ``numpy`` (PyTorch only for :meth:`tokenize`'s
tensor): an ONNX export copies it, with the merges file, into its folder
(:mod:`regionclip.export`), so that a deployment tokenizes without PyTorch.
"""
import gzip
import html
import os
from functools import lru_cache
from typing import Dict, List, Sequence, Tuple, Union

import ftfy
import numpy as np
import regex

__all__ = ["SimpleTokenizer", "default_bpe_path", "get_tokenizer", "tokenize",
           "SOT_TOKEN", "EOT_TOKEN", "CONTEXT_LENGTH"]

SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
CONTEXT_LENGTH = 77
NUM_MERGES = 49152 - 256 - 2  # merges lines used by CLIP (the file has more)
END_OF_WORD = "</w>"


def default_bpe_path() -> str:
    """str: path of the BPE merges file shipped with this package."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpe_simple_vocab_16e6.txt.gz")


@lru_cache()
def byte_symbols() -> Dict[int, str]:
    """Reversible map from the 256 byte values to printable unicode characters.

    Bytes that are printable Latin-1 characters (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) map to
    themselves; the remaining ones (control characters, space, soft hyphen) map, in increasing
    byte order, to the characters 256, 257, ...

    Returns:
        dict[int, str]: byte value -> one-character string.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = (b for b in range(256) if b not in mapping)
    for offset, b in enumerate(extra):
        mapping[b] = chr(256 + offset)
    return mapping


def clean_text(text: str) -> str:
    """CLIP's text normalisation: ftfy, double HTML unescape, collapse whitespace, lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class SimpleTokenizer:
    """Byte-level BPE tokenizer with CLIP's vocabulary.

    Args:
        bpe_path (str): gzip-compressed merges file (default: the packaged one).
    """

    def __init__(self, bpe_path: str = None):
        bpe_path = bpe_path or default_bpe_path()
        if not os.path.isfile(bpe_path):
            raise FileNotFoundError(f"BPE merges file not found: {bpe_path}")
        with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]
        if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{bpe_path}: expected {NUM_MERGES} merge lines of two symbols after "
                             f"the header, got {len(merges)}")
        self.byte_encoder = byte_symbols()
        self.byte_decoder = {symbol: b for b, symbol in self.byte_encoder.items()}
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + END_OF_WORD for s in symbols] + ["".join(m) for m in merges]
        vocab += [SOT_TOKEN, EOT_TOKEN]
        self.encoder: Dict[str, int] = {token: index for index, token in enumerate(vocab)}
        self.decoder: Dict[int, str] = dict(enumerate(vocab))
        self.bpe_ranks: Dict[Tuple[str, str], int] = {m: rank for rank, m in enumerate(merges)}
        self.sot_token_id = self.encoder[SOT_TOKEN]
        self.eot_token_id = self.encoder[EOT_TOKEN]
        self.vocab_size = len(vocab)
        self._cache: Dict[str, Tuple[str, ...]] = {SOT_TOKEN: (SOT_TOKEN,), EOT_TOKEN: (EOT_TOKEN,)}
        self._pattern = regex.compile(
            r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"
            r"|[^\s\p{L}\p{N}]+", regex.IGNORECASE)

    def bpe(self, word: str) -> Tuple[str, ...]:
        """Split one pre-token (already mapped to byte symbols) into vocabulary entries.

        Repeatedly merges every left-to-right occurrence of the adjacent pair with the lowest
        merge rank, until no adjacent pair is a known merge.

        Args:
            word (str): non-empty string of byte symbols.

        Returns:
            tuple[str]: vocabulary entries; the last one carries the ``</w>`` suffix.
        """
        if word in self._cache:
            return self._cache[word]
        parts = list(word[:-1]) + [word[-1] + END_OF_WORD]
        while len(parts) > 1:
            ranked = [(self.bpe_ranks.get(pair, NUM_MERGES), pair)
                      for pair in zip(parts[:-1], parts[1:])]
            rank, best = min(ranked)
            if rank == NUM_MERGES:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = tuple(parts)
        return self._cache[word]

    def encode(self, text: str) -> List[int]:
        """Token ids of ``text`` (no start/end tokens).

        Args:
            text (str): raw text.

        Returns:
            list[int]: BPE ids.
        """
        ids = []
        for piece in self._pattern.findall(clean_text(text)):
            word = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self.bpe(word))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (end-of-word markers become spaces; invalid UTF-8 is replaced).

        Args:
            ids (Sequence[int]): token ids.

        Returns:
            str: decoded text.
        """
        symbols = "".join(self.decoder[int(i)] for i in ids)
        data = bytearray(self.byte_decoder[c] for c in symbols)
        return data.decode("utf-8", errors="replace").replace(END_OF_WORD, " ")

    def token_array(self, texts: Union[str, Sequence[str]], context_length: int = CONTEXT_LENGTH,
                    truncate: bool = True) -> np.ndarray:
        """Fixed-length token ids as the original RegionCLIP builds them, as a numpy array.

        Each row is ``[SOT] + encode(text) + [EOT]``, cut to ``context_length`` tokens (as in the
        original, the cut can remove the EOT; CLIP then pools at the largest remaining id) and
        zero-padded.

        Args:
            texts (str or Sequence[str]): one text or a list of texts.
            context_length (int): row length (77 for CLIP).
            truncate (bool): if False, a text that does not fit raises ValueError.

        Returns:
            np.ndarray: (N, context_length) int64.
        """
        if isinstance(texts, str):
            texts = [texts]
        result = np.zeros((len(texts), context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id] + self.encode(text) + [self.eot_token_id]
            if len(ids) > context_length and not truncate:
                raise ValueError(f"Text {text!r} has {len(ids)} tokens (with start/end tokens), "
                                 f"more than the context length {context_length}")
            ids = ids[:context_length]
            result[row, :len(ids)] = ids
        return result

    def tokenize(self, texts: Union[str, Sequence[str]], context_length: int = CONTEXT_LENGTH,
                 truncate: bool = True):
        """:meth:`token_array` as a ``torch.LongTensor`` (N, context_length)."""
        import torch

        return torch.from_numpy(self.token_array(texts, context_length, truncate))

    __call__ = tokenize


@lru_cache(maxsize=None)
def get_tokenizer() -> SimpleTokenizer:
    """The shared default :class:`SimpleTokenizer`, built on first use (not at import)."""
    return SimpleTokenizer()


def tokenize(texts: Union[str, Sequence[str]], context_length: int = CONTEXT_LENGTH,
             truncate: bool = True):
    """:meth:`SimpleTokenizer.tokenize` with the default tokenizer.

    Args:
        texts (str or Sequence[str]): one text or a list of texts.
        context_length (int): row length.
        truncate (bool): cut over-long texts (True, like the original) or raise ValueError.

    Returns:
        LongTensor: (N, context_length) token ids.
    """
    return get_tokenizer().tokenize(texts, context_length, truncate)
