"""Captions of toy scenes: natural, varied phrasing that mentions some of the objects.

Like real captions, a caption names a random subset of the objects (larger objects are more
likely to be named), describes them with optional colour, texture and size words and synonyms,
may give a position, a relation between two objects, a count ("two red discs") or the
background, and sometimes calls an object just "a shape". Novel shapes are mentioned like any
other. :func:`caption_nouns` recovers the nouns of a caption (the concept pool's source).
"""
import re
from collections import Counter
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .scenes import Scene
from .vocabulary import (
    BACKGROUNDS,
    COLOUR_WORDS,
    NOUN_LEMMAS,
    SHAPE_SYNONYMS,
    TEXTURE_WORDS,
    plural,
    with_article,
)

__all__ = ["describe_object", "make_caption", "caption_nouns", "concept_counts"]

# Default mention probabilities (``WORLD.CAPTION_MENTION``): an object's colour, its (non-plain)
# texture, and the scene's background. Attributes are named less often than the noun, as in
# real captions.
MENTION = {"colour": 0.4, "texture": 0.25, "background": 0.6}
_COUNTS = {2: "two", 3: "three", 4: "four", 5: "five"}
_SMALL, _BIG = ("small", "tiny", "little"), ("big", "large")


def _pick(rng, options: Sequence[str], first_weight: float = 0.0) -> str:
    """A random option; the first one is preferred with probability ``first_weight``."""
    if first_weight and rng.random() < first_weight:
        return options[0]
    return options[int(rng.integers(len(options)))]


def describe_object(rng, obj: dict, size_range: Tuple[float, float],
                    mention: Optional[Dict[str, float]] = None) -> str:
    """A noun phrase without article for one object, e.g. ``"small striped red star"``.

    Args:
        rng (numpy.random.Generator): randomness.
        obj (dict): object of a :class:`~.scenes.Scene`.
        size_range (tuple[float, float]): object sizes of the world (for "small"/"big").
        mention (dict): probabilities of naming the ``"colour"`` and ``"texture"``
            (default :data:`MENTION`).

    Returns:
        str: the phrase.
    """
    mention = {**MENTION, **(mention or {})}
    words = []
    side = max(obj["bbox"][2], obj["bbox"][3])
    lo, hi = size_range
    if rng.random() < 0.2:
        if side < lo + 0.3 * (hi - lo):
            words.append(_pick(rng, _SMALL))
        elif side > lo + 0.7 * (hi - lo):
            words.append(_pick(rng, _BIG))
    colour = (_pick(rng, COLOUR_WORDS[obj["colour"]], 0.8) if rng.random() < mention["colour"]
              else None)
    texture_p = mention["texture"] / (4 if obj["texture"] == "plain" else 1)
    texture = _pick(rng, TEXTURE_WORDS[obj["texture"]], 0.6) if rng.random() < texture_p else None
    adjectives = [a for a in (colour, texture) if a]
    if len(adjectives) == 2 and rng.random() < 0.5:
        adjectives.reverse()
    words += adjectives
    if adjectives and rng.random() < 0.05:
        words.append(_pick(rng, ("shape", "object", "thing")))
    else:
        words.append(_pick(rng, SHAPE_SYNONYMS[obj["shape"]], 0.7))
    return " ".join(words)


def _pluralise(phrase: str) -> str:
    head, _, noun = phrase.rpartition(" ")
    return f"{head} {plural(noun)}".strip()


def _join(items: List[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _position(obj: dict, height: int, width: int) -> str:
    x, y, w, h = obj["bbox"]
    cx, cy = (x + w / 2) / width, (y + h / 2) / height
    vert = "top" if cy < 0.33 else "bottom" if cy > 0.67 else ""
    horiz = "left" if cx < 0.33 else "right" if cx > 0.67 else ""
    if vert and horiz:
        return f"in the {vert} {horiz} corner"
    if vert:
        return f"at the {vert}"
    if horiz:
        return f"on the {horiz}"
    return "in the middle"


def _relation(a: dict, b: dict) -> str:
    (ax, ay, aw, ah), (bx, by, bw, bh) = a["bbox"], b["bbox"]
    dx = (ax + aw / 2) - (bx + bw / 2)
    dy = (ay + ah / 2) - (by + bh / 2)
    if abs(dy) > abs(dx):
        return "above" if dy < 0 else "below"
    return "to the left of" if dx < 0 else "to the right of"


def make_caption(rng, scene: Scene, size_range: Tuple[float, float] = (18, 42),
                 mention: Optional[Dict[str, float]] = None) -> str:
    """One caption of a scene.

    Args:
        rng (numpy.random.Generator): randomness.
        scene (Scene): the scene.
        size_range (tuple[float, float]): object sizes of the world.
        mention (dict): probabilities of naming an object's ``"colour"`` and ``"texture"`` and
            the ``"background"`` (default :data:`MENTION`).

    Returns:
        str: a lower-case caption ending with a full stop.
    """
    mention = {**MENTION, **(mention or {})}
    objs = scene.objects
    if not objs:
        return "an empty " + ("picture" if rng.random() < 0.5 else "background") + "."
    lo, hi = size_range
    sides = [max(o["bbox"][2], o["bbox"][3]) for o in objs]
    probs = [min(0.95, 0.35 + 0.6 * (s - lo) / max(hi - lo, 1)) for s in sides]
    named = [i for i, p in enumerate(probs) if rng.random() < p][:4]
    if not named:
        named = [max(range(len(objs)), key=lambda i: sides[i])]
    named = [named[k] for k in rng.permutation(len(named))]
    phrases = [describe_object(rng, objs[i], size_range, mention) for i in named]
    height, width = scene.image.shape[:2]
    background = ""
    if rng.random() < mention["background"]:
        background = " " + _pick(rng, BACKGROUNDS[scene.background])
    if len(named) == 2 and phrases[0] != phrases[1] and rng.random() < 0.35:
        relation = _pick(rng, ("next to", _relation(objs[named[0]], objs[named[1]])), 0.3)
        a, b = (with_article(p) for p in phrases)
        return f"{a} {relation} {b}{background}."
    if rng.random() < 0.25:
        k = int(rng.integers(len(named)))
        phrases[k] = f"{phrases[k]} {_position(objs[named[k]], height, width)}"
    counts = Counter(phrases)
    grouped = [with_article(p) if n == 1 else f"{_COUNTS.get(n, 'several')} {_pluralise(p)}"
               for p, n in counts.items()]
    templates = ["a photo of {}{}.", "{}{}.", "there is {}{}.", "a picture showing {}{}.",
                 "an image with {}{}.", "several shapes{1}, including {0}."]
    if len(objs) == 1:
        templates.append("close-up of {}{}.")
    return _pick(rng, templates).format(_join(grouped), background)


def caption_nouns(caption: str) -> List[str]:
    """Lemmas of the nouns in a caption, in order (plural forms mapped to the singular)."""
    return [NOUN_LEMMAS[w] for w in re.findall(r"[a-z]+", caption.lower()) if w in NOUN_LEMMAS]


def concept_counts(captions: Iterable[str]) -> Counter:
    """How often each noun lemma occurs over ``captions``."""
    counts = Counter()
    for caption in captions:
        counts.update(caption_nouns(caption))
    return counts
