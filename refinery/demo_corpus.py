"""The demo corpus that `make demo` runs the whole pipeline on: a support-desk intent classification set.

The demo has to show every stage doing real work on a laptop in minutes, with no download: ingest must
quarantine something, exact-duplicate detection must find something, decontamination must catch something,
and the eval gate must have a task where a small LoRA adapter visibly beats the base model. So the corpus is
synthetic but shaped like real customer messages (varied openings, typos, order numbers, two-sentence
queries), composed from per-intent phrase banks with a seeded ``random.Random`` so that the same seed always
yields byte-identical files, and it carries an exact, known count of every defect planted in it. Those
counts are the ground truth the demo (and its tests) compare the pipeline's findings against.
"""

from __future__ import annotations

import csv
import json
import random
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Customer queries are written lowercase, without final punctuation; the writer adds case and punctuation
# per query, so one bank line yields many surface forms. "{slot}" fields are filled with varied values.
_CORES: dict[str, tuple[str, ...]] = {
    "card_lost": (
        "i lost my card",
        "i've lost my debit card",
        "i think i lost my card {when}",
        "my card is missing and i can't find it anywhere",
        "i can't find my card, can you block it?",
        "can you freeze my card? i think i left it at a restaurant",
        "how do i block a lost card?",
        "i dropped my wallet {when} with my card in it",
        "my wallet got stolen and my card was in it",
        "someone stole my bag and my card was inside",
        "lost card, please cancel it",
        "i need to block my card asap",
        "i left my card in a cash machine and now it's gone",
        "what do i do if i lose my card?",
        "i misplaced my card and need a replacement",
        "can i get a replacement for a lost card?",
        "my card ending {last4} is lost",
        "card lost",
        "i lost my card while travelling in {country}",
        "i can't remember where i put my card",
    ),
    "card_not_arrived": (
        "my new card hasn't arrived yet",
        "i ordered a card {days} ago and it still hasn't come",
        "where is my new card?",
        "still waiting on my replacement card",
        "how long does it take for a card to arrive?",
        "my card never showed up in the post",
        "the card you sent me hasn't been delivered",
        "i haven't received my debit card",
        "it's been {days} and still no card",
        "when will my card get here?",
        "is my card on its way?",
        "card not arrived",
        "you said the card would arrive by {day} but nothing yet",
        "i was told my card was dispatched but i haven't got it",
        "can you check if my card was posted?",
        "my replacement card still isn't here",
        "i'm still waiting for the card i ordered {when}",
    ),
    "refund_request": (
        "i'd like a refund for order {order}",
        "can i get my money back for order {order}?",
        "i want to return the item and get a refund",
        "please refund my purchase",
        "how do i request a refund?",
        "the item arrived broken and i want a refund",
        "i returned the package {days} ago, when do i get my refund?",
        "refund please",
        "the product doesn't match the description, i want my money back",
        "can you refund the {amount} i paid?",
        "i'd like to send this back for a full refund",
        "i changed my mind about order {order}, can i get a refund?",
        "the shoes don't fit and i want a refund",
        "i never used the service and would like a refund",
        "how long do refunds take to come through?",
        "i want my money back for the jacket i bought {when}",
    ),
    "password_reset": (
        "i forgot my password",
        "how do i reset my password?",
        "i can't log in, i think my password is wrong",
        "the password reset email never arrives",
        "i need to change my password",
        "my password isn't working anymore",
        "reset password please",
        "i'm locked out of my account after too many attempts",
        "the reset link says it has expired",
        "can you send me a new password reset link?",
        "it keeps saying incorrect password but it's right",
        "how can i change my login password?",
        "i forgot my login details",
        "i don't remember my password and the reset code never comes",
        "i want to set a new password",
        "i need a new password, the old one was in a data leak",
    ),
    "change_address": (
        "i moved house and need to update my address",
        "how do i change my address?",
        "i need to change the address on my account",
        "please update my address to {street}",
        "can i change my billing address?",
        "i've moved, where do i update my details?",
        "my address is wrong on my account",
        "can you change the address for order {order}?",
        "i want to update my home address",
        "new address, how do i change it",
        "the app won't let me edit my address",
        "i'm moving on {day}, can i change my address now?",
        "change my postcode please",
        "i need my statements sent to a new address",
        "there's a typo in my address, can you fix it?",
    ),
    "cancel_subscription": (
        "i want to cancel my subscription",
        "how do i cancel my premium plan?",
        "please stop my monthly membership",
        "cancel my subscription please",
        "i'd like to end my subscription before it renews on {day}",
        "how can i turn off auto-renew?",
        "i don't want the premium plan anymore",
        "i signed up for the free trial and want to cancel before i'm charged",
        "can you cancel my plan, i'm not using it",
        "stop charging me for the subscription",
        "i want to downgrade to the free plan",
        "how do i unsubscribe from the monthly plan?",
        "cancel premium",
        "i tried to cancel in the app but it keeps renewing",
        "how do i stop my membership from renewing?",
    ),
    "delivery_status": (
        "where is my order?",
        "my parcel hasn't arrived",
        "can you tell me where order {order} is?",
        "my package was supposed to arrive {when}",
        "the tracking hasn't updated in {days}",
        "when will my order be delivered?",
        "it says delivered but i never got the parcel",
        "has my order {order} shipped yet?",
        "i'm still waiting for my delivery",
        "where's my package",
        "my order is late",
        "the courier has said out for delivery since {day}",
        "how do i track my order?",
        "my order {order} is stuck in transit",
        "can you check the status of my delivery?",
        "i ordered something {days} ago and it's still not here",
    ),
    "billing_dispute": (
        "i was charged twice for the same purchase",
        "i was charged {amount} but the price was lower",
        "my bill is higher than it should be",
        "why was i charged {amount} {when}?",
        "i've been billed for a month i cancelled",
        "there's a duplicate charge on my statement",
        "you charged me the wrong amount for order {order}",
        "i was overcharged",
        "i want to dispute a charge on my account",
        "the invoice says {amount} but i agreed to a lower price",
        "why did my bill go up this month?",
        "i was charged a fee nobody told me about",
        "the same payment went out twice",
        "i'd like to dispute the {amount} charge from {day}",
        "the discount code wasn't applied and i paid full price",
    ),
    "update_payment_method": (
        "i need to update my card details",
        "how do i change the card i pay with?",
        "i got a new card, how do i add it?",
        "my card expired, how do i update it for payments?",
        "can i pay with paypal instead?",
        "i want to change my payment method",
        "please remove my old card and add a new one",
        "how do i add a bank account for payments?",
        "my payment keeps failing because the card on file is old",
        "update payment details",
        "can i switch from card to direct debit?",
        "i'd like to use a different card for my subscription",
        "where do i edit my saved payment methods?",
        "my card ending {last4} has expired, how do i replace it?",
        "i want to pay with my credit card instead of my debit card",
    ),
    "close_account": (
        "i want to close my account",
        "how do i delete my account?",
        "please close my account and delete my data",
        "i'd like to shut down my account permanently",
        "how can i close my account and withdraw the remaining balance?",
        "i don't need this account anymore",
        "close account please",
        "can you delete all my personal data?",
        "i'm leaving, how do i terminate my account?",
        "i want to close my account, i'm moving to another bank",
        "is it possible to close a joint account online?",
        "what happens to my balance if i close my account?",
        "please deactivate my profile",
        "how do i remove my account for good?",
    ),
    "report_fraud": (
        "there's a transaction i didn't make",
        "someone used my card without permission",
        "i see a payment of {amount} to {merchant} that wasn't me",
        "i think my account has been hacked",
        "i got a text asking for my pin, is it a scam?",
        "there are charges on my card i don't recognise",
        "someone logged into my account from {country}",
        "i want to report a fraudulent transaction",
        "my card was used online but it's still in my wallet",
        "i think someone cloned my card",
        "unknown payment on my statement from {day}",
        "i was scammed and sent money to a fake seller",
        "please block my card, there are payments i didn't authorise",
        "fraud on my account",
        "someone spent {amount} at {merchant} with my card",
    ),
    "app_not_working": (
        "the app keeps crashing",
        "the app won't open on my {device}",
        "i can't get into the app, it just shows a blank screen",
        "the app is stuck on the loading screen",
        "the app crashes every time i open my statements",
        "your app isn't working",
        "i get an error when i open the app",
        "the app logs me out every few minutes",
        "the app won't load since the last update",
        "nothing happens when i tap the pay button",
        "the app just says something went wrong",
        "app broken",
        "notifications stopped working in the app",
        "the app is really slow and keeps timing out",
        "the app freezes on my {device}",
    ),
    "exchange_rate": (
        "what exchange rate do you use?",
        "how much is {round} {cur} in {cur2}?",
        "what's the rate for converting {cur} to {cur2}?",
        "why was the exchange rate so bad on my payment?",
        "do you charge a fee for currency conversion?",
        "what's today's {cur} to {cur2} rate?",
        "i got a worse rate than the one on google",
        "how is the exchange rate calculated?",
        "is the rate different at weekends?",
        "can i see the exchange rate before i pay abroad?",
        "i paid in {cur} and the conversion looks wrong",
        "what rate will i get if i spend in {country}?",
        "exchange rate {cur} {cur2}",
        "how many {cur2} will i get for {round} {cur}?",
    ),
    "transfer_failed": (
        "my transfer failed",
        "i tried to send money but it didn't go through",
        "why did my bank transfer fail?",
        "the transfer to my friend was declined",
        "my payment of {amount} to another account bounced back",
        "i sent {amount} {when} and it was returned",
        "the transfer shows failed but the money left my account",
        "i can't send money to a new payee",
        "the app says transfer unsuccessful",
        "my transfer got cancelled and i don't know why",
        "money transfer not going through",
        "the international transfer to {country} failed",
        "i keep getting an error when i try to transfer money",
        "transfer failed twice today",
    ),
}

_FOLLOWUPS: dict[str, tuple[str, ...]] = {
    "card_lost": (
        "i need a new one before {day}",
        "please send a replacement to my home address",
        "there's nothing strange on my statement yet",
        "i'm travelling next week so this is urgent",
        "can you send the new one by express post?",
    ),
    "card_not_arrived": (
        "i'm still at the same address",
        "i need it to pay for things",
        "my old card has already been cancelled",
        "should i order another one?",
        "the app says it was sent {when}",
    ),
    "refund_request": (
        "i still have the receipt",
        "the box is unopened",
        "i paid by card",
        "it's order {order}",
        "the refund should go back to my card",
    ),
    "password_reset": (
        "i've tried three times already",
        "i checked my spam folder too",
        "i changed my phone number recently",
        "my email address is still the same",
        "i need to get in today",
    ),
    "change_address": (
        "the new one is {street}",
        "my old address is still showing",
        "i want future cards sent there too",
        "i'm moving abroad next month",
    ),
    "cancel_subscription": (
        "i don't use it enough",
        "it's too expensive for me",
        "i want to keep my account though",
        "please confirm by email",
        "it renews every month for {amount}",
    ),
    "delivery_status": (
        "i need it by the weekend",
        "it's a birthday present",
        "the tracking number doesn't work",
        "i ordered it {days} ago",
        "nobody knocked on the door",
    ),
    "billing_dispute": (
        "i have the receipt showing the right price",
        "please fix it",
        "this is the second time this has happened",
        "i want the difference back",
        "the merchant was {merchant}",
    ),
    "update_payment_method": (
        "the new one ends in {last4}",
        "the old card was cancelled",
        "i don't want to miss the next payment",
        "my bank sent me a new card",
    ),
    "close_account": (
        "please send me confirmation",
        "i have about {amount} left in it",
        "i've already cancelled my cards",
        "i'm not happy with the service",
    ),
    "report_fraud": (
        "i still have the card with me",
        "please block it right away",
        "i never shared my details",
        "i've never heard of that shop",
        "i'm really worried",
    ),
    "app_not_working": (
        "i've already reinstalled it",
        "i'm on the latest version",
        "it worked fine {when}",
        "it happens on my {device} too",
        "restarting didn't help",
    ),
    "exchange_rate": (
        "i'm travelling next month",
        "the difference was about {amount}",
        "i want to send money to family",
        "i'd like to know before i exchange",
    ),
    "transfer_failed": (
        "i double checked the account number",
        "it's urgent, i need to pay my rent",
        "the recipient hasn't received anything",
        "i have enough money in my account",
        "it was {amount}",
    ),
}

_OPENINGS = (
    "Hi,",
    "Hello,",
    "Hey,",
    "Hi there,",
    "Good morning,",
    "Good evening,",
    "Hello team,",
    "Hi support,",
    "Excuse me,",
    "Sorry to bother you, but",
    "Quick question:",
    "Help!",
    "Please help,",
    "Urgent:",
    "Hiya,",
    "Dear support team,",
    "Hi, hope you're well.",
)
_CLOSINGS = (
    "Thanks.",
    "Thank you!",
    "Thanks in advance.",
    "Cheers.",
    "Many thanks.",
    "Please help.",
    "Please advise.",
    "Appreciate it.",
    "Thx",
    "Can someone get back to me?",
    "This is really frustrating.",
    "Kind regards.",
    "Any help would be great.",
    "Thank you so much.",
)

# Realistic label noise: the second label a hurried annotator might pick for a query of the first.
_CONFUSABLE: dict[str, tuple[str, ...]] = {
    "card_lost": ("report_fraud", "card_not_arrived"),
    "card_not_arrived": ("delivery_status", "card_lost"),
    "refund_request": ("billing_dispute", "cancel_subscription"),
    "password_reset": ("app_not_working",),
    "change_address": ("delivery_status", "update_payment_method"),
    "cancel_subscription": ("close_account", "billing_dispute"),
    "delivery_status": ("card_not_arrived", "refund_request"),
    "billing_dispute": ("refund_request", "report_fraud"),
    "update_payment_method": ("transfer_failed", "change_address"),
    "close_account": ("cancel_subscription",),
    "report_fraud": ("card_lost", "billing_dispute"),
    "app_not_working": ("password_reset", "transfer_failed"),
    "exchange_rate": ("billing_dispute", "transfer_failed"),
    "transfer_failed": ("app_not_working", "exchange_rate"),
}

_MISSPELLINGS = {
    "received": "recieved",
    "receive": "recieve",
    "address": "adress",
    "account": "acount",
    "password": "pasword",
    "cancel": "cancle",
    "subscription": "subscribtion",
    "arrived": "arived",
    "transfer": "tranfer",
    "please": "pls",
    "because": "becuase",
    "delivery": "delivey",
    "exchange": "exchnage",
    "payment": "paymnet",
    "definitely": "definately",
    "money": "mony",
}

_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_SLOTS: dict[str, Callable[[random.Random], str]] = {
    "order": lambda r: r.choice(("#", "", "no. ", "#A")) + str(r.randint(100000, 999999)),
    "amount": lambda r: r.choice(("£", "$", "€")) + r.choice((str(r.randint(5, 400)), f"{r.uniform(2, 900):.2f}")),
    "round": lambda r: str(r.choice((20, 50, 100, 200, 250, 500, 1000, 1500))),
    "when": lambda r: r.choice(
        (
            "yesterday",
            "last night",
            "this morning",
            "last week",
            "two days ago",
            f"on {r.choice(_WEEKDAYS)}",
            f"on {r.randint(1, 28)} {r.choice(_MONTHS)}",
        )
    ),
    "day": lambda r: r.choice(
        (
            r.choice(_WEEKDAYS),
            f"{r.randint(1, 28)} {r.choice(_MONTHS)}",
            f"{r.randint(1, 28):02d}/{r.randint(1, 12):02d}",
            "the weekend",
        )
    ),
    "days": lambda r: r.choice(
        (
            "two weeks",
            "10 days",
            "over a week",
            "a month",
            "5 days",
            "three weeks",
            f"{r.randint(3, 20)} days",
        )
    ),
    "last4": lambda r: f"{r.randint(0, 9999):04d}",
    "country": lambda r: r.choice(
        (
            "Spain",
            "France",
            "Italy",
            "the US",
            "Germany",
            "Portugal",
            "Japan",
            "Mexico",
            "Turkey",
            "Greece",
            "Poland",
            "Thailand",
        )
    ),
    "merchant": lambda r: r.choice(
        (
            "Amazon",
            "Uber",
            "Netflix",
            "AliExpress",
            "Steam",
            "Deliveroo",
            "an online shop",
            "a petrol station",
            "a hotel in Paris",
        )
    ),
    "device": lambda r: r.choice(("iPhone", "Android phone", "Samsung", "Pixel", "iPad", "tablet")),
    "cur": lambda r: r.choice(("GBP", "EUR", "USD", "pounds", "euros", "dollars")),
    "cur2": lambda r: r.choice(("JPY", "CHF", "PLN", "yen", "Turkish lira", "Thai baht")),
    "street": lambda r: (
        f"{r.randint(1, 240)} "
        + r.choice(("Elm Road", "Baker Street", "Station Lane", "Harbour View", "Mill Close", "Park Avenue"))
    ),
}
_SLOT_RE = re.compile(r"\{(\w+)\}")
_LONE_I_RE = re.compile(r"\bi\b")
_SENTENCE_START_RE = re.compile(r"([.?!] )([a-z])")
_NON_ALNUM_RE = re.compile(r"[^0-9a-z]+")

# Characters whose Windows-1252 byte is not valid UTF-8: a row exported from a spreadsheet in the wrong code page.
_CP1252_TAILS = ("It cost £{n}.", "I paid €{n}.", "It's urgent—please.", "Sent from my café.", "That’s all.")
_FOLLOWUP_PINGS = ("Hello?", "Anyone there?", "Please reply.", "Still waiting.")

BROKEN_KINDS = ("malformed_json", "invalid_utf8", "empty_response", "bad_role_order", "missing_messages")
_BROKEN_COUNTS = {
    "malformed_json": 8,
    "invalid_utf8": 6,
    "empty_response": 7,
    "bad_role_order": 6,
    "missing_messages": 5,
}
_CONTAMINATED_TEST = 5


@dataclass(frozen=True)
class DemoCorpus:
    """Where the demo corpus was written, its labels, and the exact count of every planted defect."""

    train_path: Path
    test_path: Path
    labels: list[str]
    planted: dict[str, int]


def dedup_key(text: str) -> str:
    """Casefolded letters and digits only: coarser than any normalisation the duplicate checks use.

    Generating distinct queries under this key guarantees the only duplicates in the corpus are planted ones.
    """
    return _NON_ALNUM_RE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


@dataclass(frozen=True)
class PhraseBank:
    """The core sentences and follow-up sentences queries of each intent are composed from."""

    cores: dict[str, tuple[str, ...]]
    followups: dict[str, tuple[str, ...]]


#: Every fourth core and follow-up sentence of an intent (from the second on) is held out for the test split.
HELD_OUT_EVERY = 4


def split_phrase_banks() -> tuple[PhraseBank, PhraseBank]:
    """(train bank, test bank): disjoint core and follow-up sentences per intent.

    Test queries are composed only from sentences no training query uses, so a fresh test query is never a near
    copy of a training one (only a template-level resemblance: the shared greetings and sign-offs). When both
    splits drew from one bank, 81 of 400 test queries were near copies of training prompts (the same core
    sentence with other slot values) and the gate rightly called the eval set contaminated.
    """

    def split(bank: dict[str, tuple[str, ...]]) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
        held = {k: tuple(p for i, p in enumerate(v) if i % HELD_OUT_EVERY == 1) for k, v in bank.items()}
        kept = {k: tuple(p for i, p in enumerate(v) if i % HELD_OUT_EVERY != 1) for k, v in bank.items()}
        return kept, held

    train_cores, test_cores = split(_CORES)
    train_followups, test_followups = split(_FOLLOWUPS)
    return PhraseBank(train_cores, train_followups), PhraseBank(test_cores, test_followups)


class _QueryWriter:
    """Composes one customer query; kept as a class so all randomness flows through the one seeded rng."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def fill(self, template: str) -> str:
        return _SLOT_RE.sub(lambda m: _SLOTS[m.group(1)](self.rng), template)

    def _sentence(self, text: str, final: bool) -> str:
        r = self.rng
        if text.endswith("?"):
            return text if not final or r.random() < 0.88 else text.rstrip("?") + r.choice(("", "??"))
        return text + (r.choice((".", ".", ".", ".", "!", "")) if final else ".")

    def _typo(self, text: str) -> str:
        words = text.split(" ")
        known = [i for i, w in enumerate(words) if w.lower() in _MISSPELLINGS]
        if known and self.rng.random() < 0.5:
            i = self.rng.choice(known)
            words[i] = _MISSPELLINGS[words[i].lower()]
            return " ".join(words)
        long_words = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
        if not long_words:
            return text
        i = self.rng.choice(long_words)
        w, j = words[i], self.rng.randrange(1, len(words[i]) - 2)
        words[i] = self.rng.choice((w[:j] + w[j + 1] + w[j] + w[j + 2 :], w[:j] + w[j + 1 :], w[:j] + w[j] + w[j:]))
        return " ".join(words)

    def compose(self, label: str, bank: PhraseBank) -> str:
        """One query: core sentence, maybe context before or after, maybe greeting and sign-off, maybe casual."""
        r = self.rng
        core = self.fill(r.choice(bank.cores[label]))
        parts = [core]
        if r.random() < 0.35:
            followup = self.fill(r.choice(bank.followups[label]))
            parts = [followup, core] if r.random() < 0.3 else [core, followup]
        sentences = [self._sentence(p, final=i == len(parts) - 1) for i, p in enumerate(parts)]
        text = " ".join(sentences)
        if r.random() < 0.5:
            text = f"{r.choice(_OPENINGS)} {text}"
        if r.random() < 0.3:
            text = f"{text.rstrip()} {r.choice(_CLOSINGS)}" if text[-1] in ".?!" else f"{text}. {r.choice(_CLOSINGS)}"
        if r.random() < 0.13:  # typed in a hurry on a phone
            text = text.lower().rstrip(".!")
            if r.random() < 0.5:
                text = text.replace("'", "")
        else:
            text = _LONE_I_RE.sub("I", text)
            text = _SENTENCE_START_RE.sub(lambda m: m.group(1) + m.group(2).upper(), text)
            text = text[0].upper() + text[1:]
        if r.random() < 0.07:
            text = self._typo(text)
        return text


def _planted_counts(n_train: int, n_test: int, n_labels: int) -> dict[str, int]:
    """Duplicates scale with the corpus (1-2% each); broken rows are a fixed handful of each kind."""
    counts = {
        "exact_repeats": max(2, round(0.015 * n_train)),
        "normalized_duplicates": max(1, round(0.012 * n_train)),
        "conflicting_labels": max(1, round(0.01 * n_train)),
        **_BROKEN_COUNTS,
        "contaminated_test": _CONTAMINATED_TEST,
    }
    extra = sum(v for k, v in counts.items() if k != "contaminated_test")
    needed_sources = counts["exact_repeats"] + counts["normalized_duplicates"] + counts["conflicting_labels"]
    if n_train - extra < needed_sources + _CONTAMINATED_TEST + n_labels:
        raise ValueError(f"n_train={n_train} is too small to plant the demo defects; use at least 200")
    if n_test < _CONTAMINATED_TEST + n_labels:
        raise ValueError(f"n_test={n_test} is too small; use at least {_CONTAMINATED_TEST + n_labels}")
    return counts


def _unique_queries(
    writer: _QueryWriter, bank: PhraseBank, labels: list[str], n: int, seen: set[str]
) -> list[tuple[str, str]]:
    """``n`` (query, label) pairs, labels round-robin, every query new under ``dedup_key``."""
    pairs: list[tuple[str, str]] = []
    for i in range(n):
        label = labels[i % len(labels)]
        for _ in range(500):
            query = writer.compose(label, bank)
            key = dedup_key(query)
            if key not in seen:
                seen.add(key)
                pairs.append((query, label))
                break
        else:
            raise RuntimeError(f"phrase bank for {label!r} is exhausted; add phrases or ask for fewer rows")
    return pairs


def _chat(query: str, label: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": query}, {"role": "assistant", "content": label}]


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def _normalized_variant(rng: random.Random, query: str, taken: set[str]) -> str:
    """The same query as a different string that differs only in case, inner whitespace or end punctuation."""
    base = query.rstrip(".?! ")
    edits: list[Callable[[str], str]] = [
        str.lower,
        str.upper,
        lambda s: s[0].swapcase() + s[1:],
        lambda s: s.rstrip(".?! ") + rng.choice(("", "?", "!", "...", "!!", ".", "??")),
        lambda s: s.replace(" ", "  ", 1),
    ]
    for _ in range(100):
        variant = query
        for edit in rng.sample(edits, rng.choice((1, 2))):
            variant = edit(variant)
        if variant != query and variant not in taken and variant.strip() == variant and base:
            return variant
    raise RuntimeError(f"no normalised variant found for {query!r}")


def _broken_line(kind: str, i: int, query: str, label: str, meta: dict[str, Any], rng: random.Random) -> bytes:
    """One row of a broken kind; ``i`` cycles through the realistic ways that kind turns up in exports."""
    good = json.dumps({"messages": _chat(query, label), "meta": meta}, ensure_ascii=False)
    if kind == "malformed_json":
        texts = (
            good[: len(good) // 2],  # truncated write
            good[:-1] + ",}",  # trailing comma
            str({"messages": _chat(query, label), "meta": meta}),  # Python repr instead of JSON
            good[:-1],  # lost closing brace
            good + good,  # missing newline between two rows
            good.replace('"content": "', '"content": "said "', 1),  # unescaped quote
        )
        return texts[i % len(texts)].encode("utf-8")
    if kind == "invalid_utf8":
        tail = _CP1252_TAILS[i % len(_CP1252_TAILS)].format(n=rng.randint(5, 300))
        content = f"{query} {tail}" if query[-1] in ".?!" else f"{query}. {tail}"
        obj = {"messages": _chat(content, label), "meta": meta}
        return json.dumps(obj, ensure_ascii=False).encode("cp1252")
    if kind == "empty_response":
        return _line(
            {
                "messages": [{"role": "user", "content": query}, {"role": "assistant", "content": ""}],
                "meta": meta,
            }
        )
    if kind == "bad_role_order":
        if i % 2 == 0:
            messages = list(reversed(_chat(query, label)))
        else:
            ping = {"role": "user", "content": rng.choice(_FOLLOWUP_PINGS)}
            messages = [_chat(query, label)[0], ping, _chat(query, label)[1]]
        return _line({"messages": messages, "meta": meta})
    if kind == "missing_messages":
        shapes: tuple[dict[str, Any], ...] = (
            {"prompt": query, "completion": label, "meta": meta},
            {"text": query, "label": label, "meta": meta},
            {"conversation": _chat(query, label), "meta": meta},
            {"meta": meta},
        )
        return _line(shapes[i % len(shapes)])
    raise ValueError(f"unknown broken kind {kind!r}")


def _meta(rng: random.Random, ticket: int) -> dict[str, Any]:
    return {
        "ticket": f"T-{ticket}",
        "channel": rng.choice(("chat", "email", "app", "web_form")),
        "locale": rng.choice(("en-GB", "en-US", "en-IE", "en-AU")),
    }


def write_demo_corpus(folder: Path, n_train: int = 3000, n_test: int = 400, seed: int = 7) -> DemoCorpus:
    """Write ``train.jsonl`` (exactly ``n_train`` lines, planted defects included), ``test.csv`` and a README.

    Every defect is planted on its own clean source row, so each one is counted once and only once.
    """
    labels = sorted(_CORES)
    planted = _planted_counts(n_train, n_test, len(labels))
    rng = random.Random(seed)
    writer = _QueryWriter(rng)
    n_broken = sum(planted[k] for k in BROKEN_KINDS)
    n_clean = (
        n_train - n_broken - sum(planted[k] for k in ("exact_repeats", "normalized_duplicates", "conflicting_labels"))
    )
    seen: set[str] = set()
    train_bank, test_bank = split_phrase_banks()
    clean = _unique_queries(writer, train_bank, labels, n_clean, seen)
    broken_pairs = _unique_queries(writer, train_bank, labels, n_broken, seen)
    fresh_test = _unique_queries(writer, test_bank, labels, n_test - planted["contaminated_test"], seen)
    tickets = iter(rng.sample(range(100000, 1000000), n_train))

    lines = [_line({"messages": _chat(q, lab), "meta": _meta(rng, next(tickets))}) for q, lab in clean]
    order = rng.sample(range(n_clean), n_clean)
    cursor = 0

    def take(k: int) -> list[int]:
        nonlocal cursor
        cursor += k
        return order[cursor - k : cursor]

    n_repeat_sources = planted["exact_repeats"] - planted["exact_repeats"] // 5  # a fifth are seen three times
    repeat_sources = take(n_repeat_sources)
    extra = [lines[j] for j in repeat_sources]
    extra += [lines[j] for j in repeat_sources[: planted["exact_repeats"] - n_repeat_sources]]
    taken = {q for q, _ in clean}
    for j in take(planted["normalized_duplicates"]):
        query, label = clean[j]
        variant = _normalized_variant(rng, query, taken)
        taken.add(variant)
        extra.append(_line({"messages": _chat(variant, label), "meta": _meta(rng, next(tickets))}))
    for j in take(planted["conflicting_labels"]):
        query, label = clean[j]
        other = rng.choice(_CONFUSABLE[label])
        extra.append(_line({"messages": _chat(query, other), "meta": _meta(rng, next(tickets))}))
    contaminated = [clean[j] for j in take(planted["contaminated_test"])]
    pairs = iter(broken_pairs)
    for kind in BROKEN_KINDS:
        for i in range(planted[kind]):
            query, label = next(pairs)
            extra.append(_broken_line(kind, i, query, label, _meta(rng, next(tickets)), rng))

    all_lines = lines + extra
    rng.shuffle(all_lines)
    test_rows = fresh_test + contaminated
    rng.shuffle(test_rows)

    folder.mkdir(parents=True, exist_ok=True)
    train_path, test_path = folder / "train.jsonl", folder / "test.csv"
    train_path.write_bytes(b"\n".join(all_lines) + b"\n")
    with test_path.open("w", encoding="utf-8", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["text", "category"])
        out.writerows(test_rows)
    (folder / "README.md").write_text(_readme(n_train, n_test, seed, labels, planted), encoding="utf-8")
    return DemoCorpus(train_path=train_path, test_path=test_path, labels=labels, planted=planted)


def _readme(n_train: int, n_test: int, seed: int, labels: list[str], planted: dict[str, int]) -> str:
    """The corpus explains itself, so someone who finds the folder knows which findings are expected."""
    rows = "\n".join(f"| `{k}` | {v} |" for k, v in planted.items())
    return f"""# Refinery demo corpus: support-desk intent classification

Synthetic customer messages to a support desk (a card, an app, an online shop), each labelled with one of
{len(labels)} intents: {", ".join(f"`{lab}`" for lab in labels)}.

Generated by `refinery.demo_corpus.write_demo_corpus(n_train={n_train}, n_test={n_test}, seed={seed})` from
per-intent phrase banks and a seeded random generator: the same arguments always give byte-identical files.
No external data is used; tickets, order numbers and amounts are invented.

## Files
- `train.jsonl`: {n_train} lines, OpenAI chat format: `{{"messages": [{{"role": "user", "content": <query>}},
  {{"role": "assistant", "content": <label>}}], "meta": {{"ticket", "channel", "locale"}}}}`. The user message is
  exactly the customer's query (no instruction).
- `test.csv`: {n_test} rows with header `text,category`, the held-out split to register as an eval set.

## What was planted (exact counts)
| defect | count |
|---|---|
{rows}

- `exact_repeats`: extra lines byte-identical to another line (one record, several source rows).
- `normalized_duplicates`: extra rows whose query differs from another row's only in case, inner whitespace
  or end punctuation, with the same label.
- `conflicting_labels`: extra rows repeating another row's query exactly with a different (confusable) label.
- `malformed_json`, `invalid_utf8` (Windows-1252 bytes), `empty_response` (assistant content `""`),
  `bad_role_order` (assistant first, or two user messages in a row), `missing_messages` (no `messages` key):
  rows ingest should quarantine, each on a fresh query.
- `contaminated_test`: test rows that are exact copies (query and label) of clean train rows. Every other test
  query is composed from core and follow-up sentences that no training query uses (a quarter of each intent's
  phrase bank is held out for the test split), so it is not a near copy of any training query.
"""
