"""The words of the toy world: shapes (the detection categories), colours, textures, backgrounds.

Objects are shapes (nouns) with a colour and a texture (adjectives). The detection categories are
the shape nouns; 8 are *base* (boxes in detection training) and 4 are *novel* (no box ever in
detection training, but mentioned in captions like any other shape). Colours and textures are
attributes: they vary the appearance of every category and give captions their adjectives.

The concept pool of RegionCLIP pretraining is the set of nouns that occur in the captions
(:data:`NOUN_LEMMAS` maps every noun form the caption generator writes to its lemma): the toy
world knows its own grammar, so no parser is needed (the original parsed COCO captions offline).
"""
from typing import Dict, List, Tuple

from regionclip.data.shapes import palette

__all__ = [
    "SHAPES", "BASE_SHAPES", "NOVEL_SHAPES", "SHAPE_SYNONYMS", "COLOURS", "COLOUR_WORDS",
    "TEXTURES", "TEXTURE_WORDS", "BACKGROUNDS", "GENERIC_NOUNS", "NOUN_LEMMAS", "PLURALS",
    "TOY_TEMPLATES", "categories", "plural", "with_article",
]

# Detection categories, base first (contiguous ids 0..7), then novel (8..11).
BASE_SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond", "hexagon",
                                "arrow", "ring")
NOVEL_SHAPES: Tuple[str, ...] = ("star", "heart", "crescent", "bolt")
SHAPES: Tuple[str, ...] = BASE_SHAPES + NOVEL_SHAPES

# Other nouns captions use for a shape (the category name comes first in every list).
SHAPE_SYNONYMS: Dict[str, Tuple[str, ...]] = {
    "circle": ("circle", "disc"),
    "square": ("square",),
    "triangle": ("triangle",),
    "cross": ("cross", "plus"),
    "diamond": ("diamond", "rhombus"),
    "hexagon": ("hexagon",),
    "arrow": ("arrow",),
    "ring": ("ring", "donut"),
    "star": ("star",),
    "heart": ("heart",),
    "crescent": ("crescent", "moon"),
    "bolt": ("bolt", "lightning"),
}

# Colour name -> RGB of the paint (objects jitter around it; the library's palette) and the
# words captions use.
COLOURS: Dict[str, Tuple[int, int, int]] = palette(("red", "orange", "yellow", "green", "blue",
                                                    "purple", "pink", "black"))
COLOUR_WORDS: Dict[str, Tuple[str, ...]] = {
    "red": ("red",), "orange": ("orange",), "yellow": ("yellow",), "green": ("green",),
    "blue": ("blue",), "purple": ("purple", "violet"), "pink": ("pink",),
    "black": ("black", "dark"),
}

TEXTURES: Tuple[str, ...] = ("plain", "striped", "dotted", "checkered")
TEXTURE_WORDS: Dict[str, Tuple[str, ...]] = {
    "plain": ("plain", "solid"), "striped": ("striped", "stripy"),
    "dotted": ("dotted", "spotted", "polka-dot"), "checkered": ("checkered", "chequered"),
}

# Background kind -> phrases that place the scene on it.
BACKGROUNDS: Dict[str, Tuple[str, ...]] = {
    "grass": ("on the grass", "on a grassy field", "on green grass", "lying in the grass"),
    "sand": ("on the sand", "on a sandy beach", "on the beach", "in the sand"),
    "sky": ("against a blue sky", "in the sky", "floating in the sky"),
    "wood": ("on a wooden table", "on a wooden floor", "on wood"),
    "paper": ("on white paper", "on a plain background", "on a blank page"),
}

# Nouns captions use that name no shape.
GENERIC_NOUNS: Tuple[str, ...] = ("photo", "picture", "image", "shape", "object", "thing",
                                  "grass", "field", "sand", "beach", "sky", "table", "floor",
                                  "wood", "paper", "background", "page", "corner", "middle", "top",
                                  "bottom", "side")

_IRREGULAR = {"cross": "crosses", "plus": "pluses", "lightning": "lightnings", "rhombus": "rhombi"}


def with_article(phrase: str) -> str:
    """``phrase`` with the indefinite article ("an arrow", "a red star")."""
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def plural(noun: str) -> str:
    """English plural of a noun of this vocabulary."""
    return _IRREGULAR.get(noun, noun + "s")


def _noun_lemmas() -> Dict[str, str]:
    nouns = [w for words in SHAPE_SYNONYMS.values() for w in words] + list(GENERIC_NOUNS)
    table = {n: n for n in nouns}
    table.update({plural(n): n for n in nouns})
    return table


NOUN_LEMMAS: Dict[str, str] = _noun_lemmas()
PLURALS: Dict[str, str] = {plural(n): n for n in NOUN_LEMMAS.values()}

# Prompt templates for class names in the toy world's own phrasing (prompt ensembling with the
# original's 81 ImageNet templates would feed the tiny text tower words it never saw).
# ``{}`` stands for the name with its article ("an arrow", "a red star").
TOY_TEMPLATES: Tuple[str, ...] = (
    "{}.", "a photo of {}.", "a picture of {}.", "there is {}.", "a photo of {} on the grass.",
    "{} on a wooden table.", "a picture showing {} and other shapes.", "close-up of {}.",
)


def categories() -> List[dict]:
    """The detection categories, COCO style.

    Returns:
        list[dict]: ``{"id": 1.., "name", "split": "base" | "novel"}``, base first.
    """
    return [{"id": i + 1, "name": s, "split": "base" if s in BASE_SHAPES else "novel"}
            for i, s in enumerate(SHAPES)]
