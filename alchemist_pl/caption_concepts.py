"""Caption concepts of the emoji dataset: which captions are variants (siblings) of one emoji.

Two captions are **siblings** when they name variants of one emoji, so a model trained on one has
seen the other. A caption's *concept* (:func:`caption_concept`) is what remains after removing,
in this order (tokens are the caption's lower-cased words, ``-``/``_`` read as spaces):

1. skin tones: ``light|medium light|medium|medium dark|dark skin tone`` anywhere, EmojiOne's
   ``tone1``..``tone5``, and a bare tone word at the end as Noto v1 and Fluent write it
   (``man walking medium dark``; not in ``traffic light`` or ``police car light``);
2. direction: ``facing right``;
3. hair and beard: ``red|curly|white|blond|blonde hair``/``haired``, ``bald``, ``beard``/``bearded``;
4. gender and age words of a person: :data:`PERSON_WORDS` (``man``, ``woman``, ``person``,
   ``boy``, ``girl``, ``child``, ``adult``, ``male``, ``female``, ``mrs``, ``mx``, ``santa``,
   ``bride``, ...), the ``and`` between two of them and a ``two`` before one (``woman and man
   holding hands``, ``two men holding hands`` -> ``holding hands``; ``kiss woman man`` -> ``kiss``;
   ``family man woman boy`` -> ``family``); gendered names are mapped by :data:`SYNONYMS`
   (``mermaid``/``merman`` -> ``merperson``, ``prince``/``princess`` -> ``with crown``, ``old`` ->
   ``older``);
5. ``flag for X`` and ``flag for flag X`` are written ``flag X``.

A caption left empty (``man``, ``woman light skin tone``, ``person red hair``) is the concept
``person``. Captions with different concepts are still siblings when the icon sets say they draw
one emoji (:func:`concept_groups`): an icon set's ``chars.json`` gives the same code-point
sequence, skin-tone modifiers (U+1F3FB..U+1F3FF) and variation selectors removed (``hugging face``
and ``smiling face with open hands``; ``flag france`` and ``flag st martin``), or its
``aliases`` name one icon both ways (``bear`` and ``bear face``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

#: Gender and age words of a person, removed from a caption's concept.
PERSON_WORDS = frozenset(
    "man woman person men women people male female adult boy girl child mx mrs santa bride".split()
)
#: Gendered names of one emoji, written as one concept.
SYNONYMS = {
    "merman": "merperson",
    "mermaid": "merperson",
    "merpeople": "merperson",
    "prince": "with crown",
    "princess": "with crown",
    "old": "older",
}
_TONE = r"(?:medium )?(?:light|dark)|medium"
_SKIN_TONE = re.compile(rf"\b(?:{_TONE}) skin tone\b|\btone[1-5]\b|\bfacing right\b")
_BARE_TONE = re.compile(rf"(?: (?:{_TONE}))+$")
_OBJECT_LIGHT = re.compile(r"\b(?:traffic|car) light$")
_HAIR = re.compile(r"\b(?:red|curly|white|blond|blonde) hair(?:ed)?\b|\bbald\b|\bbeard(?:ed)?\b")
_FLAG_FOR = re.compile(r"^flag for (?:flag )?")
_SKIN_TONE_CODES = {f"1f3f{c}" for c in "bcdef"}
_SELECTORS = {"fe0e", "fe0f"}


def caption_concept(caption: str) -> str:
    """The concept of one caption by the text rule of this module's steps 1-5 (``str`` -> ``str``).

    ``caption_concept("astronaut medium skin tone") == caption_concept("woman astronaut") ==
    "astronaut"``.
    """
    text = " ".join(caption.lower().replace("-", " ").replace("_", " ").split())
    text = " ".join(_SKIN_TONE.sub(" ", text).split())
    if not _OBJECT_LIGHT.search(text):
        text = _BARE_TONE.sub("", text)
    text = _FLAG_FOR.sub("flag ", _HAIR.sub(" ", text))
    words = " ".join(SYNONYMS.get(w, w) for w in text.split()).split()
    person = [w in PERSON_WORDS for w in words]
    kept = []
    for i, w in enumerate(words):
        joins_people = w == "and" and 0 < i < len(words) - 1 and person[i - 1] and person[i + 1]
        counts_people = w == "two" and i < len(words) - 1 and person[i + 1]
        if not (person[i] or joins_people or counts_people):
            kept.append(w)
    return " ".join(kept) or "person"


def base_code_points(sequence: str) -> str:
    """A ``chars.json`` key (``"1f9d1-1f3fd-200d-1f680"``) without skin-tone modifiers and variation
    selectors (``"1f9d1-200d-1f680"``)."""
    parts = sequence.lower().split("-")
    return "-".join(p for p in parts if p not in _SKIN_TONE_CODES and p not in _SELECTORS)


def concept_groups(captions: Iterable[str], same_emoji: Iterable[tuple[str, str]] = ()) -> dict[str, str]:
    """Concept of every caption, with captions that draw one emoji joined.

    Args:
        captions: the dataset's captions.
        same_emoji: ``(caption, key)`` pairs: captions that share a key name one emoji (a key is a
            :func:`base_code_points` sequence, or an icon's name for its aliases). A caption here
            need not be in ``captions``.

    Returns:
        caption -> concept, for every caption of ``captions``: the smallest :func:`caption_concept`
        of the connected group its caption concept belongs to (captions are linked by equal
        :func:`caption_concept` and by shared keys), so the result does not depend on the order.
    """
    captions = list(captions)
    pairs = [("c:" + caption_concept(c), "k:" + key) for c, key in same_emoji]
    nodes = sorted({"c:" + caption_concept(c) for c in captions} | {n for p in pairs for n in p})
    index = {n: i for i, n in enumerate(nodes)}
    rows = np.array([index[a] for a, _ in pairs], dtype=np.int64)
    cols = np.array([index[b] for _, b in pairs], dtype=np.int64)
    graph = coo_matrix((np.ones(len(pairs)), (rows, cols)), shape=(len(nodes), len(nodes)))
    _, label = connected_components(graph, directed=False)
    name: dict[int, str] = {}
    for n, lab in zip(nodes, label):  # nodes are sorted, "c:" before "k:": the first is the smallest concept
        if n.startswith("c:"):
            name.setdefault(int(lab), n[2:])
    return {c: name[int(label[index["c:" + caption_concept(c)]])] for c in captions}


def caption_of(name: str) -> str:
    """Caption of an icon name: ``"cloud-with-lightning"`` -> ``"cloud with lightning"``."""
    return name.replace("-", " ").replace("_", " ").strip()


def same_emoji_pairs(set_name: str, icons: dict, chars: dict) -> list[tuple[str, str]]:
    """``(caption, key)`` pairs of one set for :func:`~alchemist_pl.caption_concepts.concept_groups`:
    each code point sequence of ``chars.json`` with its icon's caption (key ``"U+<sequence>"``), and
    each alias with its icon (key ``"<set>/<icon>"``). ``icons``: the set's ``icons.json``."""
    aliases = icons.get("aliases", {})

    def root(name: str) -> str:
        seen = set()
        while name in aliases and name not in seen:
            seen.add(name)
            name = aliases[name]["parent"]
        return name

    pairs = [(caption_of(root(n)), "U+" + base_code_points(seq)) for seq, n in chars.items()]
    for alias in aliases:
        key = f"{set_name}/{root(alias)}"
        pairs += [(caption_of(alias), key), (caption_of(root(alias)), key)]
    return pairs
