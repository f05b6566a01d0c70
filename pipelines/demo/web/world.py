"""The concept world of the demo web: concepts, their visual signatures, captions.

Every concept is drawn as a unique (shape, colour) pair, so the ground truth of an
image is recoverable from its pixels alone. Captions are English (or, rarely, a
foreign template wrapping the English concept word) with web-like noise that
never alters the spelling of the concept name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "hexagon",
    "cross",
    "ring",
    "diamond",
    "pentagon",
    "crescent",
    "heart",
    "arrow",
)

# Saturated colours that stay visible on the pastel backgrounds.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 40),
    "orange": (255, 130, 0),
    "yellow": (235, 200, 0),
    "lime": (110, 210, 30),
    "green": (0, 120, 40),
    "teal": (0, 170, 170),
    "blue": (20, 70, 230),
    "navy": (10, 20, 110),
    "purple": (120, 30, 160),
    "magenta": (230, 0, 170),
    "brown": (120, 65, 20),
    "black": (15, 15, 15),
}

# Ordered by (rough) web popularity: rank drives the Zipf-like sampling.
CONCEPTS: tuple[str, ...] = (
    "dog", "cat", "car", "flower", "tree", "house", "bicycle", "apple", "pizza",
    "horse", "bird", "chair", "cake", "shoe", "book", "guitar", "laptop", "cup",
    "fire truck", "teddy bear", "hot dog", "traffic light", "ice cream",
    "banana", "airplane", "boat", "train", "bus", "motorcycle", "clock",
    "umbrella", "backpack", "bottle", "lamp", "table", "sofa", "bed", "camera",
    "hat", "dress", "elephant", "giraffe", "zebra", "lion", "tiger", "monkey",
    "penguin", "owl", "duck", "rabbit", "cow", "sheep", "pig", "goat",
    "chicken", "frog", "turtle", "snake", "fish", "shark", "whale", "dolphin",
    "octopus", "crab", "butterfly", "bee", "spider", "snail", "strawberry",
    "cherry", "lemon", "pineapple", "watermelon", "peach", "pear", "carrot",
    "tomato", "potato", "onion", "broccoli", "mushroom", "pumpkin", "bread",
    "cookie", "sandwich", "donut", "cheese", "egg", "helicopter", "rocket",
    "tractor", "scooter", "skateboard", "stop sign", "parking meter",
    "tennis racket", "baseball bat", "wine glass", "cell phone", "hair dryer",
    "washing machine", "light bulb", "paper clip", "soccer ball", "piano",
    "violin", "drum", "trumpet", "pencil", "scissors", "hammer", "key",
    "kettle", "teapot", "candle", "keyboard", "television", "radio",
    "balloon", "kite", "tent", "anchor", "bell", "crown", "cactus", "castle",
    "bridge", "lighthouse", "windmill", "robot", "globe", "trophy",
    "envelope", "ladder", "basket", "feather",
)  # fmt: skip


def _assign_signatures() -> dict[str, tuple[str, str]]:
    """Give concept k the k-th (shape, colour) pair: unique by construction."""
    colours = list(COLOURS)
    if len(CONCEPTS) > len(SHAPES) * len(colours):
        raise ValueError("more concepts than (shape, colour) pairs")
    return {
        concept: (SHAPES[k % len(SHAPES)], colours[(k // len(SHAPES) + k) % len(colours)])
        for k, concept in enumerate(CONCEPTS)
    }


SIGNATURES: dict[str, tuple[str, str]] = _assign_signatures()

ZIPF_EXPONENT = 1.1


def zipf_probabilities(n_items: int = len(CONCEPTS), exponent: float = ZIPF_EXPONENT) -> np.ndarray:
    """p(rank r) ∝ r^-exponent, the long tail typical of web-scale concept counts."""
    weights = np.arange(1, n_items + 1, dtype=np.float64) ** -exponent
    return weights / weights.sum()


_ZIPF = zipf_probabilities()


def sample_concept(rng: np.random.Generator, exclude: Sequence[str] = ()) -> str:
    """Draw one concept by Zipf rank, skipping excluded ones."""
    while True:
        concept = CONCEPTS[int(rng.choice(len(CONCEPTS), p=_ZIPF))]
        if concept not in exclude:
            return concept


def sample_other_concept(rng: np.random.Generator, exclude: Sequence[str]) -> str:
    """Uniform draw, so mismatched captions also name tail concepts."""
    pool = [c for c in CONCEPTS if c not in exclude]
    return pool[int(rng.integers(len(pool)))]


# -- captions -----------------------------------------------------------------

EN_TEMPLATES: tuple[str, ...] = (
    "a photo of {a} {c}",
    "{c}",
    "close-up of {a} {c} on a white background",
    "cartoon {c} illustration",
    "best {c} ideas for your home",
    "my new {c}!!",
    "{c} clipart, vector drawing",
    "high quality {c} picture",
    "there is {a} {c} in this picture",
    "the {c} we saw last weekend",
)

EN_PAIR_TEMPLATES: tuple[str, ...] = (
    "{a} {c} and {a2} {c2}",
    "{c} with {a2} {c2}",
    "photo of {a} {c} next to {a2} {c2}",
)

# Foreign templates keep the English concept word so the truth stays checkable.
FOREIGN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "de": ("Foto: {c} auf weißem Hintergrund", "schöne {c} Illustration kaufen"),
    "fr": ("une belle photo de {c}", "{c} à vendre, livraison gratuite"),
    "es": ("imagen de {c} en alta calidad", "foto de un {c} bonito"),
    "it": ("foto di {c} in vendita",),
}

SEO_SUFFIXES: tuple[str, ...] = (
    " | Free Shipping",
    " - stock photo",
    " #photo #art",
    " | Buy Now",
    " - royalty free image",
    " &amp; more",
    " ✨",
    " 😍😍",
    " :: HD wallpaper",
)

BOILERPLATE: tuple[str, ...] = (
    "image",
    "photo",
    "click here",
    "untitled",
    "thumbnail",
    "",
    "IMG_{d4}.jpg",
    "DSC{d5}.JPG",
    "placeholder",
    "banner",
)


@dataclass(frozen=True)
class Caption:
    text: str
    concepts: tuple[str, ...]
    lang: str


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _digits(rng: np.random.Generator, k: int) -> str:
    return "".join(str(int(d)) for d in rng.integers(0, 10, size=k))


def _noisy_template(rng: np.random.Generator, template: str) -> str:
    """Add junk to the template before the concept is substituted, so the
    concept name itself can never be split or misspelled."""
    if rng.random() < 0.15:
        template = template.replace(" ", "  ", 1)
    if rng.random() < 0.05:
        template = template.replace("{c}", '"{c}"', 1)
    if rng.random() < 0.1:
        template = f"IMG_{_digits(rng, 4)} - {template}"
    if rng.random() < 0.2:
        template += SEO_SUFFIXES[int(rng.integers(len(SEO_SUFFIXES)))]
    if rng.random() < 0.05:
        template = f" {template} "
    return template


def _random_casing(rng: np.random.Generator, text: str) -> str:
    roll = rng.random()
    if roll < 0.06:
        return text.upper()
    if roll < 0.12:
        return text.title()
    if roll < 0.2:
        return text[:1].upper() + text[1:]
    return text


def make_caption(rng: np.random.Generator, concepts: Sequence[str], lang: str = "en") -> Caption:
    """Caption naming `concepts` (one or two) in `lang`, with web noise."""
    first = concepts[0]
    second = concepts[1] if len(concepts) > 1 and lang == "en" else None
    if lang != "en":
        options = FOREIGN_TEMPLATES[lang]
    elif second is not None:
        options = EN_PAIR_TEMPLATES
    else:
        options = EN_TEMPLATES
    template = _noisy_template(rng, options[int(rng.integers(len(options)))])
    text = template.format(
        a=_article(first), c=first, a2=_article(second or "x"), c2=second or ""
    )
    named = (first, second) if second is not None else (first,)
    return Caption(_random_casing(rng, text), named, lang)


def boilerplate_caption(rng: np.random.Generator) -> Caption:
    """Alt-text that says nothing about the image."""
    template = BOILERPLATE[int(rng.integers(len(BOILERPLATE)))]
    text = template.format(d4=_digits(rng, 4), d5=_digits(rng, 5))
    return Caption(text, (), "und")


FOREIGN_LANGS: tuple[str, ...] = tuple(FOREIGN_TEMPLATES)


# Longest names first, so "hot dog" wins over "dog" inside the same words.
_CONCEPT_PATTERN = re.compile(
    r"\b(" + "|".join(re.escape(c) for c in sorted(CONCEPTS, key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)


def find_concepts(text: str) -> list[str]:
    """Concepts named in a text, in order of first mention, by whole-word match."""
    found: list[str] = []
    for match in _CONCEPT_PATTERN.finditer(text):
        concept = match.group(1).lower()
        if concept not in found:
            found.append(concept)
    return found
