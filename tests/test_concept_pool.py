"""tools/build_concept_pool.py: caption reading, noun counting, the spaCy parser, embeddings."""
import collections
import csv
import json
import re

import pytest
import torch
from _image_text_data import captions_field, tiny_image, write_tsv_pair

from regionclip.clip import TextTransformer, ensemble_text_embeddings
from regionclip.tools.build_concept_pool import (
    build_concept_pool,
    count_nouns,
    read_captions,
    run,
    select_concepts,
    spacy_noun_parser,
)

NOUNS = {"dog", "cat", "park", "ball", "man", "sofa"}


def word_parser(captions):
    """Injected parser: words of the fixed noun set (plural 's' stripped), per caption."""
    out = []
    for caption in captions:
        words = [w.rstrip("s") if w.rstrip("s") in NOUNS else w
                 for w in re.findall(r"[a-z]+", caption.lower())]
        out.append([w for w in words if w in NOUNS])
    return out


def test_read_captions_formats(tmp_path):
    write_tsv_pair(str(tmp_path / "tsv"), "a.image.tsv", "a.text.tsv", [
        ("k0", tiny_image(0), captions_field(["a dog", "the dog again"])),
        ("k1", tiny_image(1), json.dumps({"tags": "cat sofa"})),
        ("k2", tiny_image(2), "raw caption with a ball")])
    assert list(read_captions(str(tmp_path / "tsv"))) == \
        ["a dog", "the dog again", "cat sofa", "raw caption with a ball"]
    assert list(read_captions(str(tmp_path / "tsv" / "a.text.tsv")))[0] == "a dog"
    (tmp_path / "m.json").write_text(json.dumps({"x.jpg": "one", "y.jpg": ["two", "three"]}))
    assert list(read_captions(str(tmp_path / "m.json"))) == ["one", "two", "three"]
    coco = {"images": [], "annotations": [{"image_id": 1, "caption": "c1"},
                                          {"image_id": 1, "caption": "c2"}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    assert list(read_captions(str(tmp_path / "coco.json"))) == ["c1", "c2"]
    with open(tmp_path / "c.csv", "w", newline="") as f:
        csv.writer(f).writerows([["file", "caption"], ["a", "first"], ["b", "second"]])
    assert list(read_captions(str(tmp_path / "c.csv"))) == ["first", "second"]
    (tmp_path / "c.txt").write_text("line one\n\nline two\n")
    assert list(read_captions(str(tmp_path / "c.txt"))) == ["line one", "line two"]
    with pytest.raises(FileNotFoundError):
        list(read_captions(str(tmp_path / "missing.txt")))


def test_count_select_and_output(tmp_path):
    captions = ["a dog and a dog"] * 3 + ["two cats on a sofa"] * 2 + ["a man", "a ball"] * 2
    counts = count_nouns(iter(captions), word_parser, chunk_size=4)
    expected = collections.Counter()
    for caption in captions:  # independent count
        for noun in NOUNS:
            expected[noun] += len(re.findall(rf"\b{noun}s?\b", caption))
    assert counts == +expected
    assert select_concepts(counts, min_count=2) == ["dog", "ball", "cat", "man", "sofa"]
    assert select_concepts(counts, min_count=3) == ["dog"]
    assert select_concepts(counts, min_count=2, max_concepts=2) == ["dog", "ball"]
    (tmp_path / "corpus.txt").write_text("\n".join(captions))
    out = tmp_path / "pool" / "concepts.txt"
    concepts = run(["--captions", str(tmp_path / "corpus.txt"), "--output", str(out),
                     "--min-count", "2", "--no-progress"], noun_parser=word_parser)
    assert out.read_text().splitlines() == concepts == ["dog", "ball", "cat", "man", "sofa"]
    with pytest.raises(ValueError, match="lower --min-count"):
        build_concept_pool([str(tmp_path / "corpus.txt")], str(out), word_parser, min_count=100)


def test_parser_must_return_one_list_per_caption():
    with pytest.raises(ValueError, match="1 lists for 2 captions"):
        count_nouns(["a", "b"], lambda caps: [[]])


def test_spacy_parser_lemmatised_nouns():
    spacy = pytest.importorskip("spacy")
    nlp = spacy.blank("en")  # tiny pipeline built here: no downloaded model needed
    ruler = nlp.add_pipe("attribute_ruler")
    for word, lemma in [("dogs", "dog"), ("dog", "dog"), ("park", "park"), ("geese", "goose")]:
        ruler.add([[{"LOWER": word}]], {"POS": "NOUN", "LEMMA": lemma})
    ruler.add([[{"LOWER": "run"}]], {"POS": "VERB", "LEMMA": "run"})
    parse = spacy_noun_parser(nlp=nlp)
    assert parse(["Two Dogs run in the park", "geese and a dog", "nothing here"]) == \
        [["dog", "park"], ["goose", "dog"], []]


def test_missing_spacy_model_is_a_clear_error():
    pytest.importorskip("spacy")
    with pytest.raises(OSError) as err:
        spacy_noun_parser("no_such_pipeline_xyz")
    assert "no_such_pipeline_xyz" in str(err.value) and "spacy download" in str(err.value)


def test_embeddings_through_concept_code(tmp_path):
    torch.manual_seed(0)
    tower = TextTransformer(width=64, heads=1, layers=1, embed_dim=16).eval()  # heads = width // 64
    weights = tmp_path / "text.pth"
    torch.save(tower.state_dict(), weights)
    (tmp_path / "corpus.txt").write_text("a dog in a park\n" * 2 + "a dog\n")
    emb = tmp_path / "emb.pth"
    concepts = run(["--captions", str(tmp_path / "corpus.txt"), "--output",
                     str(tmp_path / "c.txt"), "--min-count", "2", "--weights", str(weights),
                     "--output-emb", str(emb), "--no-progress"], noun_parser=word_parser)
    assert concepts == ["dog", "park"]
    saved = torch.load(emb)
    reference = ensemble_text_embeddings(tower.encode_text, concepts)
    assert saved.shape == (2, 16)
    torch.testing.assert_close(saved, reference, rtol=1e-5, atol=1e-6)
