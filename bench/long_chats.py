"""A deterministic generator of long two-person chats with questions and marked evidence turns.

Made to be hard in the ways real long chats are (and bench/memory_quality.py is not): two speakers
who share their vocabulary (both have pets, jobs, siblings, dreams and trips, so a question about one
finds the other's turns too); facts buried in fact-like chatter ("I cooked pasta yesterday" reads
like a fact); dated sessions and temporal questions; facts that change (a new job, a move: the latest
turn is the evidence); two-turn (multi-hop) questions; and answers that are replies to a question
(the evidence shares few words with what is asked). Questions are third person ("What is Nadia's
dream?"), as memory is searched by a prompt or an evaluator, not by the speaker.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

PAIRS = [
    ("Nadia", "Tomas"),
    ("Priya", "Owen"),
    ("Lena", "Marco"),
    ("Aisha", "Jonas"),
    ("Chloe", "Ravi"),
    ("Sofia", "Daniel"),
    ("Emma", "Kenji"),
    ("Hana", "Lucas"),
    ("Zoe", "Mateo"),
    ("Ines", "Felix"),
    ("Maya", "Sam"),
    ("Nora", "Ethan"),
]
PETS = ["Pixel", "Mochi", "Biscuit", "Juniper", "Waffles", "Pepper", "Tofu", "Clementine", "Noodle", "Ziggy"]
ANIMALS = ["cat", "dog", "rabbit", "parrot", "tortoise", "hamster"]
CITIES = ["Porto", "Ghent", "Valencia", "Krakow", "Bergen", "Lyon", "Tallinn", "Bologna", "Galway", "Cork"]
COMPANIES = ["Brightline", "Oakridge Labs", "Northwind", "Fernway", "Bluepeak", "Halcyon", "Copperleaf"]
JOBS = ["data analyst", "nurse", "teacher", "sous chef", "architect", "product designer", "paramedic"]
DREAMS = [
    "open a little bookshop with a cafe in the back",
    "sail across the Atlantic on a small boat",
    "run a bakery in a seaside town",
    "build a cabin in the mountains with my own hands",
    "start an animal shelter",
    "write and publish a fantasy novel",
    "record an album with my band",
    "teach English in Japan for a year",
]
HOBBIES = ["pottery", "rock climbing", "salsa dancing", "woodworking", "watercolour painting", "chess"]
RACES = ["Riverside", "Harbour", "Lakeshore", "Old Town", "Hillcrest"]
COUNTRIES = [
    ("Japan", "Kyoto"),
    ("Peru", "Cusco"),
    ("Morocco", "Fez"),
    ("Iceland", "Akureyri"),
    ("Vietnam", "Hoi An"),
]
SIBLINGS = ["sister", "brother", "cousin"]
SIB_NAMES = ["Ana", "Theo", "Lucia", "Bram", "Elif", "Oskar", "Mira", "Dev"]

# chatter that reads like facts: first person, concrete, in the same topics as the facts
CHATTER = [
    "I cooked {food} yesterday, it turned out better than expected.",
    "My {sib} called this morning, we talked for an hour about nothing.",
    "Work was a lot this week, so many meetings.",
    "I read a few chapters on the train today.",
    "The {animal} next door was barking all night again.",
    "I went for a short run before breakfast, my legs are tired.",
    "We might go to the coast this weekend if the weather holds.",
    "I finally cleaned the garage, found my old guitar in there.",
    "My boss wants the report by Friday, wish me luck.",
    "I tried a new {food} recipe from that cooking show.",
    "Do you ever feel like the weeks just fly by?",
    "I watched a documentary about {animal}s last night.",
    "Traffic was terrible, I was late to work again.",
    "I've been sleeping badly, too much coffee probably.",
    "My {sib} is thinking about changing jobs too.",
    "I walked past that new bakery, the smell was amazing.",
    "We had a team lunch, the food was just okay.",
    "I need a holiday, maybe somewhere warm.",
    "I started a new book about {topic}, it's slow so far.",
    "The gym was packed today, everyone has new year goals.",
    "I booked a dentist appointment, finally.",
    "I've been thinking about learning {hobby} at some point.",
    "A friend of mine just moved to {city}, she loves it.",
    "My neighbour adopted a {animal}, it's very cute.",
    "I dream about a long trip somewhere far away.",
    "Someone at work ran a marathon last month, crazy.",
    "I'm so tired of the rain, it has rained all week.",
    "Do you remember that cafe we liked? It closed.",
    "I spent the evening fixing my bike.",
    "We played board games with friends, I lost every round.",
]
REPLIES = [
    "Haha, {name}, that sounds like you.",
    "Oh nice, tell me more!",
    "That's so relatable.",
    "Wow, I didn't expect that.",
    "Same here, honestly.",
    "Good for you, {name}!",
    "Ugh, I know that feeling.",
    "That's great to hear.",
    "Really? How did that happen?",
    "I think you'd be good at that.",
    "Sounds like a busy week.",
    "You always have the best stories.",
    "Hmm, I'm not sure I agree, but okay.",
    "I hope it gets better soon.",
]
FOODS = ["lasagne", "curry", "pasta", "soup", "tacos", "risotto", "dumplings"]
TOPICS = ["history", "the ocean", "space", "cooking", "psychology", "old cities"]


@dataclass(frozen=True, slots=True)
class Turn:
    speaker: int  # 0 or 1
    text: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Question:
    kind: str  # single-hop | swapped-speaker | temporal | knowledge-update | multi-hop | reply
    text: str
    evidence: tuple[int, ...]  # turn positions


@dataclass(slots=True)
class Chat:
    names: tuple[str, str]
    turns: list[Turn] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)


def _fill(rng: random.Random, template: str, names: tuple[str, str], speaker: int) -> str:
    return template.format(
        food=rng.choice(FOODS),
        sib=rng.choice(SIBLINGS),
        animal=rng.choice(ANIMALS),
        topic=rng.choice(TOPICS),
        hobby=rng.choice(HOBBIES),
        city=rng.choice(CITIES),
        name=names[1 - speaker],
    )


def _chatter(rng: random.Random, names: tuple[str, str], speaker: int) -> str:
    if rng.random() < 0.4:
        return _fill(rng, rng.choice(REPLIES), names, speaker)
    parts = rng.sample(CHATTER, rng.choice((1, 1, 2)))
    return " ".join(_fill(rng, p, names, speaker) for p in parts)


def _plans(
    rng: random.Random, names: tuple[str, str]
) -> list[tuple[int, list[tuple[int, str]], Question | None]]:
    """Facts to plant: (session, [(speaker, text)], question with evidence as offsets into the list).

    Each plant is a short exchange; a question's evidence indexes into all plants' turns later."""
    a, b = names
    plans: list[tuple[int, list[tuple[int, str]], Question | None]] = []
    pets = rng.sample(PETS, 2)
    animals = rng.sample(ANIMALS, 2)
    for who in (0, 1):  # both adopt a pet: questions must find the right speaker's
        plans.append(
            (
                rng.randrange(0, 8),
                [(who, f"Big news: I adopted a {animals[who]} from the shelter, we named it {pets[who]}!")],
                Question("swapped-speaker", f"What kind of pet did {names[who]} adopt?", (0,)),
            )
        )
    dreams = rng.sample(DREAMS, 2)
    for who in (0, 1):
        plans.append(
            (
                rng.randrange(2, 14),
                [(who, f"Can I tell you something? My real dream is to {dreams[who]} someday.")],
                Question("swapped-speaker", f"What is {names[who]}'s dream?", (0,)),
            )
        )
    hobby = rng.choice(HOBBIES)
    plans.append(
        (
            rng.randrange(1, 15),
            [(0, f"I signed up for a {hobby} class, the first lesson was tonight and I loved it.")],
            Question("temporal", f"When did {a} start the {hobby} class?", (0,)),
        )
    )
    race = rng.choice(RACES)
    plans.append(
        (
            rng.randrange(3, 16),
            [
                (
                    1,
                    f"I did it, I ran the {race} half marathon this morning!"
                    " My time was awful but I finished.",
                )
            ],
            Question("temporal", f"When did {b} run the {race} half marathon?", (0,)),
        )
    )
    jobs, companies = rng.sample(JOBS, 2), rng.sample(COMPANIES, 2)
    plans.append(
        (
            rng.randrange(0, 5),
            [(0, f"I got the job! I'm going to be a {jobs[0]} at {companies[0]}.")],
            None,
        )
    )
    plans.append(
        (
            rng.randrange(12, 19),
            [
                (
                    0,
                    f"Update: I quit {companies[0]}. Starting Monday I'm a {jobs[1]} at {companies[1]}"
                    " instead.",
                )
            ],
            Question("knowledge-update", f"Where does {a} work now?", (0,)),
        )
    )
    cities = rng.sample(CITIES, 2)
    plans.append((rng.randrange(0, 6), [(1, f"I live in {cities[0]} now, the flat is tiny but cosy.")], None))
    plans.append(
        (
            rng.randrange(13, 19),
            [(1, f"We're moving again, this time to {cities[1]}. The boxes are everywhere.")],
            Question("knowledge-update", f"Which city does {b} live in now?", (0,)),
        )
    )
    sib, sib_name, city = rng.choice(SIBLINGS), rng.choice(SIB_NAMES), rng.choice(CITIES)
    plans.append(
        (
            rng.randrange(0, 7),
            [(0, f"My {sib} {sib_name} lives in {city}, she works at the harbour there.")],
            Question("multi-hop", f"Which city will {a} travel to for the visit next month?", (0,)),
        )
    )
    plans.append(
        (
            rng.randrange(10, 18),
            [(0, f"I'm visiting {sib_name} next month, I already booked the flights!")],
            None,
        )
    )
    country, town = rng.choice(COUNTRIES)
    plans.append(
        (
            rng.randrange(0, 18),
            [
                (0, f"Have you ever been to {country}?"),
                (1, f"Yes! I spent two weeks in {town} back in college, it changed how I see things."),
            ],
            Question("reply", f"Has {b} ever been to {country}?", (1,)),
        )
    )
    return plans


def generate(seed: int, *, sessions: int = 20, turns_per_session: int = 30) -> list[Chat]:
    """One chat per pair of names, each `sessions` x `turns_per_session` turns, seeded."""
    chats = []
    for i, names in enumerate(PAIRS):
        rng = random.Random(seed * 1000 + i)
        chats.append(_chat(rng, names, sessions, turns_per_session))
    return chats


def _chat(rng: random.Random, names: tuple[str, str], sessions: int, per: int) -> Chat:
    chat = Chat(names)
    plans = _plans(rng, names)
    # the multi-hop question's second evidence turn is the visit plan planted after it
    multi = next(i for i, p in enumerate(plans) if p[2] is not None and p[2].kind == "multi-hop")
    positions: dict[int, list[int]] = {}
    day = datetime(2023, 1, 7, 18, 0, tzinfo=UTC)
    for s in range(sessions):
        due = [i for i, p in enumerate(plans) if p[0] == s]
        slots = sorted(rng.sample(range(2, per - 3), len(due)))
        speaker = 0
        for at in range(per):
            when = day + timedelta(minutes=2 * at)
            if slots and at == slots[0]:
                slots.pop(0)
                plan = plans[due.pop(0)]
                positions[plans.index(plan)] = []
                for who, line in plan[1]:
                    positions[plans.index(plan)].append(len(chat.turns))
                    chat.turns.append(Turn(who, line, when))
                    when += timedelta(minutes=1)
                speaker = 1 - plan[1][-1][0]
                continue
            chat.turns.append(Turn(speaker, _chatter(rng, names, speaker), when))
            speaker = 1 - speaker
        day += timedelta(days=rng.randint(4, 12), hours=rng.randint(-3, 3))
    for i, (_, _, question) in enumerate(plans):
        if question is None:
            continue
        evidence = tuple(positions[i][j] for j in question.evidence)
        if i == multi:
            evidence += (positions[i + 1][0],)
        chat.questions.append(Question(question.kind, question.text, evidence))
    return chat
