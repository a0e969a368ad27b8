"""regionclip.clip.tokenizer against open_clip's SimpleTokenizer (a copy of OpenAI's)."""
import gzip

import pytest
import torch

import regionclip.clip.tokenizer as tokenizer_module
from regionclip.clip import SimpleTokenizer, get_tokenizer, tokenize

SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def reference():
    open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")
    return open_clip_tokenizer.SimpleTokenizer()


@pytest.fixture(scope="module")
def ours():
    return SimpleTokenizer()


def class_names():
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
    from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

    coco = [c["name"] for c in COCO_CATEGORIES if c["isthing"]]
    lvis = [c["name"] for c in LVIS_CATEGORIES]
    assert len(coco) == 80 and len(lvis) == 1203
    # Raw LVIS names (with '_' and parentheses) and the cleaned form the original embeds.
    cleaned = [n.replace("_", " ").replace("(", "").replace(")", "") for n in lvis]
    return coco + lvis + cleaned


MISC = [
    "a photo of a dog.", "A PHOTO OF THE Cat!!", "  spaces\tand\nnewlines  here ",
    "café crème brûlée, naïve façade", "Ångström über straße", "東京タワーの写真", "한국어 텍스트",
    "emoji 🐶🍕👍🏽 and ❤️", "&amp; &lt;b&gt; &#39;quoted&#39; &amp;amp; double-escaped &amp;lt;",
    "triple &amp;amp;amp; escaped", "<b>tags &amp;amp; entities</b>",
    "it's they're we've I'm you'll he'd", "numbers 0 12 345 6789 3.14159 1,000,000 2nd 10%",
    "punctuation ... !!! ??? (parens) [brackets] {braces} -- — – … «guillemets» \"quotes\"",
    "mojibake: cafÃ© â€œtextâ€\x9d", "under_score and hyphen-ated and slash/separated",
    "", "   ", "a" * 300, "supercalifragilisticexpialidocious " * 3,
]
LONG = "a photo of a " + " ".join(["very"] * 120) + " large dog."


def test_vocabulary_layout(ours, reference):
    assert ours.vocab_size == len(ours.encoder) == 49408
    assert ours.encoder["<|startoftext|>"] == SOT and ours.encoder["<|endoftext|>"] == EOT
    renamed = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    assert ours.encoder == {renamed.get(k, k): v for k, v in reference.encoder.items()}


def test_ids_match_open_clip_on_class_names_and_hard_text(ours, reference):
    corpus = class_names() + MISC + [LONG]
    mismatches = [t for t in corpus if ours.encode(t) != reference.encode(t)]
    assert not mismatches, mismatches[:5]


def test_cleaning_details(ours):
    # ftfy unescapes once, then html.unescape twice (ftfy skips text that contains '<').
    assert ours.encode("&amp;amp;amp;") == ours.encode("&")
    assert ours.encode("<&amp;amp;>") == ours.encode("<&>")
    assert ours.encode("Dog\t\n  HOUSE") == ours.encode("dog house")
    # Literal special tokens in the text map to their ids, as in the original.
    assert ours.encode("<|startoftext|>dog<|endoftext|>") == [SOT, ours.encode("dog")[0], EOT]


def test_tokenize_pads_with_zeros(ours, reference):
    tokens = ours.tokenize(["a photo of a dog.", "cat"])
    assert tokens.dtype == torch.long and tokens.shape == (2, 77)
    for row, text in zip(tokens, ["a photo of a dog.", "cat"]):
        expected = [SOT] + reference.encode(text) + [EOT]
        assert row[:len(expected)].tolist() == expected
        assert not row[len(expected):].any()
    assert torch.equal(tokenize("cat"), tokens[1:])  # module-level helper, single string


def test_tokenize_truncates_like_the_original(ours, reference):
    ids = [SOT] + reference.encode(LONG) + [EOT]
    assert len(ids) > 77
    tokens = ours.tokenize([LONG])[0]
    assert tokens.tolist() == ids[:77]
    assert tokens[0] == SOT and EOT not in tokens.tolist()  # the EOT was cut
    assert ours.tokenize(LONG, context_length=10)[0].tolist() == ids[:10]


def test_tokenize_without_truncation_raises(ours):
    with pytest.raises(ValueError, match=r"very.*\d+ tokens.*context length 77"):
        ours.tokenize(["short", LONG], truncate=False)
    assert ours.tokenize("short", truncate=False)[0, 0] == SOT


def test_decode_round_trip(ours, reference):
    for text in ["a photo of a dog.", "café 東京 🐶", "it's 42"]:
        ids = ours.encode(text)
        assert ours.decode(ids) == reference.decode(ids)
    assert ours.decode(ours.encode("a photo of a dog")) == "a photo of a dog "


def test_default_tokenizer_is_lazy_and_shared():
    assert not any(isinstance(v, SimpleTokenizer) for v in vars(tokenizer_module).values())
    assert get_tokenizer() is get_tokenizer()


def test_bad_bpe_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt.gz"):
        SimpleTokenizer(str(tmp_path / "missing.txt.gz"))
    short = tmp_path / "short.txt.gz"
    with gzip.open(short, "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\na b\n")
    with pytest.raises(ValueError, match="short.txt.gz"):
        SimpleTokenizer(str(short))
