"""Write chapter 11's small data sets (written for the course; nothing is downloaded).

    python data/make_ch11_data.py

- ``minilora/lab/corpora/json_answers_{train,test}.jsonl``: short questions with one short,
  unambiguous answer, in eight kinds. The behaviour chapter 11 teaches is the *format*: reply
  with exactly ``{"answer": "<answer>"}``. The test questions are other items of the same kinds
  (no question of the test split appears in the training split).
- ``minilora/lab/corpora/general_text.jsonl``: held-out general English prose, written for the
  course, on which the chapter measures perplexity before and after fine-tuning (what it forgot).
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "minilora" / "lab" / "corpora"

# (kind, question template, [(item, answer), ...]) -> train items first, then test items.
CAPITALS = [
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Germany", "Berlin"),
    ("Spain", "Madrid"), ("Egypt", "Cairo"), ("Russia", "Moscow"), ("China", "Beijing"),
    ("Portugal", "Lisbon"), ("Greece", "Athens"), ("Austria", "Vienna"), ("Norway", "Oslo"),
]  # fmt: skip
SUMS = [(2, 3), (4, 4), (5, 1), (3, 6), (7, 2), (1, 8), (6, 3), (2, 5), (4, 3), (3, 3), (6, 2),
        (1, 1)]  # fmt: skip
OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("happy", "sad"),
    ("open", "closed"), ("light", "dark"), ("old", "young"), ("day", "night"), ("wet", "dry"),
    ("full", "empty"), ("left", "right"),
]  # fmt: skip
COLOURS = [
    ("a banana", "yellow"), ("grass", "green"), ("snow", "white"),
    ("the sky on a clear day", "blue"), ("coal", "black"), ("a ripe tomato", "red"),
    ("an orange", "orange"), ("a lemon", "yellow"),
    ("milk", "white"), ("a strawberry", "red"), ("a crow", "black"), ("a lime", "green"),
]  # fmt: skip
YOUNG = [
    ("dog", "puppy"), ("cat", "kitten"), ("cow", "calf"), ("sheep", "lamb"), ("horse", "foal"),
    ("frog", "tadpole"), ("goat", "kid"), ("bear", "cub"), ("duck", "duckling"), ("pig", "piglet"),
    ("hen", "chick"), ("lion", "cub"),
]  # fmt: skip
PLURALS = [
    ("mouse", "mice"), ("child", "children"), ("foot", "feet"), ("tooth", "teeth"), ("man", "men"),
    ("goose", "geese"), ("box", "boxes"), ("woman", "women"), ("city", "cities"),
    ("leaf", "leaves"), ("knife", "knives"), ("baby", "babies"),
]  # fmt: skip
LEGS = [
    ("a spider", "8"), ("a dog", "4"), ("a bird", "2"), ("an insect", "6"), ("a cat", "4"),
    ("a human", "2"), ("an ant", "6"), ("a horse", "4"), ("a chicken", "2"), ("an octopus", "8"),
    ("a cow", "4"), ("a duck", "2"),
]  # fmt: skip
AFTER = [
    ("Monday", "Tuesday"), ("Tuesday", "Wednesday"), ("Friday", "Saturday"), ("Sunday", "Monday"),
    ("January", "February"), ("March", "April"), ("June", "July"), ("October", "November"),
    ("Wednesday", "Thursday"), ("Saturday", "Sunday"), ("April", "May"), ("August", "September"),
]  # fmt: skip
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

KINDS = {
    "capital": ("What is the capital of {}?", CAPITALS),
    "sum": ("What is {} plus {}?", [((a, b), str(a + b)) for a, b in SUMS]),
    "opposite": ("What is the opposite of {}?", OPPOSITES),
    "colour": ("What colour is {}?", COLOURS),
    "young": ("What is a baby {} called?", YOUNG),
    "plural": ("What is the plural of {}?", PLURALS),
    "legs": ("How many legs does {} have?", LEGS),
    "after": ("What comes after {}?", AFTER),
}
N_TEST_PER_KIND = 3  # the last 3 items of each kind are held out: 8 x 9 train, 8 x 3 test


def examples() -> tuple[list[dict], list[dict]]:
    train, test = [], []
    for kind, (template, items) in KINDS.items():
        for i, (item, answer) in enumerate(items):
            question = template.format(*item) if isinstance(item, tuple) else template.format(item)
            row = {"kind": kind, "question": question, "answer": answer}
            (test if i >= len(items) - N_TEST_PER_KIND else train).append(row)
    return train, test


GENERAL_TEXT = [
    "Bread is one of the oldest prepared foods. A simple loaf needs only flour, water, salt and "
    "yeast. The yeast feeds on the sugars in the flour and releases gas, which is trapped by the "
    "dough and makes it rise. Baking sets the structure, and the crust turns brown as sugars and "
    "proteins react in the heat of the oven.",
    "Rivers shape the land they flow through. Near their source they are often narrow and fast, "
    "cutting deep valleys into the rock. Further downstream they widen and slow down, dropping the "
    "sand and mud they carry. Where a river meets the sea it may spread into many channels and "
    "build a flat, fertile delta.",
    "A library lends books, music and films to anyone who holds a card. Many libraries also offer "
    "quiet rooms for study, computers with internet access and reading groups for children. The "
    "librarians help visitors find what they need, and they can order a book from another library "
    "if it is not on the shelves.",
    "The heart is a muscle about the size of a fist. It beats around seventy times a minute at "
    "rest, pumping blood through the lungs, where it picks up oxygen, and then around the rest of "
    "the body. Regular exercise makes the heart stronger, so that it can pump more blood with each "
    "beat.",
    "Bees live in large colonies ruled by a single queen. Worker bees collect nectar and pollen "
    "from flowers, and while they do so they carry pollen from one plant to the next, which helps "
    "the plants produce seeds and fruit. Back in the hive, the nectar is slowly turned into honey "
    "and stored in wax cells for the winter.",
    "A bicycle turns the push of the rider's legs into forward motion. The pedals turn a chain "
    "that drives the rear wheel, and the gears let the rider choose between easy pedalling on a "
    "hill and high speed on a flat road. Good brakes, bright lights and a helmet make a ride much "
    "safer, especially in traffic or at night.",
    "The moon takes about four weeks to travel once around the earth. As it moves, we see more or "
    "less of its sunlit half, which is why it seems to grow from a thin crescent to a full circle "
    "and shrink again. The pull of the moon also raises the tides, so the sea rises and falls "
    "twice a day along most coasts.",
    "Learning a new language takes patience. It helps to listen to native speakers every day, to "
    "read simple stories, and to practise speaking without worrying about mistakes. Small, regular "
    "sessions work better than long ones once a week, because the brain needs time and repetition "
    "to remember new words.",
]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    train, test = examples()
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    for name, rows in (("json_answers_train", train), ("json_answers_test", test)):
        with open(OUT / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(OUT / "general_text.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in GENERAL_TEXT)
    print(
        f"{len(train)} train, {len(test)} test questions, {len(GENERAL_TEXT)} paragraphs -> {OUT}"
    )


if __name__ == "__main__":
    main()
