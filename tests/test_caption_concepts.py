"""Caption concepts and the concept-level split, on real captions without the network.

``tests/data/emoji_captions.txt`` is every caption of the pinned emoji sets, one per line (the
names in each set's ``icons.json``; ``test_emoji.py`` checks it against the built dataset).
"""

import re
from collections import defaultdict
from pathlib import Path

import pytest

from alchemist_pl.caption_concepts import base_code_points, caption_concept, concept_groups, same_emoji_pairs
from alchemist_pl.emoji import caption_split

CAPTIONS = (Path(__file__).parent / "data" / "emoji_captions.txt").read_text().splitlines()
TONE = r"(?:light|medium light|medium|medium dark|dark)"
GENDERS = ("man", "woman", "person")


@pytest.mark.parametrize(
    ("caption", "concept"),
    [
        ("astronaut", "astronaut"),
        ("astronaut medium skin tone", "astronaut"),
        ("woman astronaut light skin tone", "astronaut"),
        ("man astronaut medium dark", "astronaut"),  # Noto v1 / Fluent: a bare tone at the end
        ("breast feeding tone3", "breast feeding"),  # EmojiOne
        ("man walking medium light skin tone facing right", "walking"),
        ("kiss woman man medium dark skin tone medium light skin tone", "kiss"),
        ("woman and man holding hands", "holding hands"),
        ("two men holding hands", "holding hands"),
        ("family man woman girl boy", "family"),
        ("family adult adult child", "family"),
        ("person red hair", "person"),
        ("man bald dark skin tone", "person"),
        ("blond haired person", "person"),
        ("girl", "person"),
        ("mermaid tone2", "merperson"),
        ("merman", "merperson"),
        ("princess", "with crown"),
        ("person with crown", "with crown"),
        ("mrs claus", "claus"),
        ("santa claus light", "claus"),
        ("old man", "older"),
        ("older person", "older"),
        ("bride with veil", "with veil"),
        ("flag for flag isle of man", caption_concept("flag isle of man")),
        ("flag for germany", "flag germany"),
        # not variants: tone words that are part of the object
        ("vertical traffic light", "vertical traffic light"),
        ("police car light", "police car light"),
        ("black medium square", "black medium square"),
        ("light bulb", "light bulb"),
        ("two hearts", "two hearts"),
    ],
)
def test_caption_concept(caption, concept):
    assert caption_concept(caption) == concept


def test_base_code_points_drop_skin_tones_and_selectors():
    assert base_code_points("1f9d1-1f3fd-200d-1f680") == "1f9d1-200d-1f680"
    assert base_code_points("2764-FE0F") == "2764"


def test_concept_groups_join_captions_of_one_emoji_in_any_order():
    captions = ["hugging face", "smiling face with open hands", "bear", "bear face", "panda"]
    same = [("hugging face", "U+1f917"), ("smiling face with open hands", "U+1f917"), ("bear", "x/bear-face")]
    same.append(("bear face", "x/bear-face"))
    groups = concept_groups(captions, same)
    assert groups["hugging face"] == groups["smiling face with open hands"] == "hugging face"
    assert groups["bear"] == groups["bear face"] == "bear"
    assert groups["panda"] == "panda"
    assert concept_groups(captions[::-1], same[::-1]) == groups


def test_same_emoji_pairs_follow_aliases_and_code_points():
    icons = {"icons": {"bear-face": {}}, "aliases": {"bear": {"parent": "bear-face"}, "teddy": {"parent": "bear"}}}
    pairs = set(same_emoji_pairs("s", icons, {"1f43b": "bear-face"}))
    assert ("bear face", "U+1f43b") in pairs
    assert {("bear", "s/bear-face"), ("teddy", "s/bear-face"), ("bear face", "s/bear-face")} <= pairs


def _plain_siblings(captions: list[str]) -> list[set[str]]:
    """Sibling families by literal patterns, independent of caption_concept: skin-tone suffixes,
    EmojiOne's toneN, "facing right", and the man/woman/person prefixes of one activity."""
    present = set(captions)
    families = defaultdict(set)
    for c in captions:
        base = re.sub(rf" {TONE} skin tone| tone[1-5]| facing right", "", c)
        bare = re.fullmatch(rf"(.+?)(?: {TONE})+", base)
        if bare and any(f"{bare[1]} {t} skin tone" in present for t in ("light", "dark")):
            base = bare[1]  # Noto v1 / Fluent write the tone without "skin tone"
        person = re.fullmatch(r"(?:man|woman|person) (.+)", base)
        if person and sum(v in present for v in (person[1], *(f"{g} {person[1]}" for g in GENDERS))) > 1:
            base = person[1]
        families[base].add(c)
    return [f for f in families.values() if len(f) > 1]


def test_no_test_caption_has_a_sibling_in_train_or_val():
    concepts = concept_groups(CAPTIONS)
    split = {c: caption_split(concepts[c], 0.06, 0.06) for c in CAPTIONS}
    families = _plain_siblings(CAPTIONS)
    assert len(families) > 200 and sum(len(f) for f in families) > 3000  # the fixture has the variant families
    straddling = [sorted(f) for f in families if len({split[c] for c in f}) > 1]
    assert not straddling, straddling[:5]
    by_concept = defaultdict(set)
    for c in CAPTIONS:
        by_concept[caption_concept(c)].add(split[c])
    assert all(len(s) == 1 for s in by_concept.values())
    share = {s: sum(v == s for v in split.values()) / len(CAPTIONS) for s in ("val", "test")}
    assert 0.03 < share["val"] < 0.1 and 0.03 < share["test"] < 0.1, share
