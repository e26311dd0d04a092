"""Real English sentences for retrieval tests: paraphrase pairs plus distractors from stdlib docs."""

from __future__ import annotations

import importlib
import itertools
import re

PARAPHRASES: list[tuple[str, str]] = [
    ("The quick brown fox jumps over the lazy dog.", "fast animal leaping"),
    ("Database indexing improves query performance.", "making database lookups faster with indexes"),
    ("The stock market fell sharply after the interest rate announcement.",
     "shares dropped when the central bank changed rates"),
    ("She baked a chocolate cake for her grandmother's birthday.", "a dessert made for granny's birthday party"),
    ("Heavy rain caused flooding in several coastal towns.", "storm water flooded villages by the sea"),
    ("The patient was prescribed antibiotics for the infection.",
     "the doctor gave medicine to treat a bacterial illness"),
    ("Our team won the championship in the final minute.", "a last-second victory in the title game"),
    ("Solar panels convert sunlight into electricity.", "photovoltaic cells turn light from the sun into power"),
    ("The museum reopened after a two-year renovation.", "the gallery opened its doors again following repairs"),
    ("He forgot his umbrella and got soaked on the way home.",
     "walked home in the rain without protection and got wet"),
    ("The violinist performed a concerto with the city orchestra.", "a string soloist played with the symphony"),
    ("Volcanic eruptions can disrupt air travel for days.", "ash from a volcano grounded flights"),
]

DISTRACTOR_MODULES = ["json", "collections", "asyncio", "pathlib", "argparse", "logging", "subprocess",
                      "functools", "itertools", "threading", "datetime", "decimal", "email", "http.client",
                      "urllib.request", "csv", "sqlite3", "tarfile", "zipfile", "unittest", "typing", "heapq"]


def distractor_sentences(limit: int = 400) -> list[str]:
    """Sentences from the docstrings of standard-library modules: real prose, deterministic."""
    seen: set[str] = set()
    out: list[str] = []
    for name in DISTRACTOR_MODULES:
        module = importlib.import_module(name)
        docs = [module.__doc__ or ""] + [getattr(getattr(module, attr), "__doc__", "") or ""
                                         for attr in sorted(dir(module)) if not attr.startswith("_")]
        for doc in docs:
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                if 40 <= len(sentence) <= 200 and sentence[0].isupper() and sentence not in seen:
                    seen.add(sentence)
                    out.append(sentence)
                    if len(out) >= limit:
                        return out
    return out


# A ticket with a rare exact code and its look-alikes (one digit order or letter swapped): MiniLM's word pieces
# barely tell the codes apart while BM25 sees each code as a token of its own (the hybrid-search tests).
EXACT_CODE = "KX7731"
EXACT_CODE_TARGET = f"Ticket {EXACT_CODE}: the pump on line 3 leaks oil."
EXACT_CODE_LOOK_ALIKES = [f"Ticket {prefix}{''.join(digits)}: the pump on line 3 leaks oil."
                          for prefix in ("KX", "XK") for digits in sorted(set(itertools.permutations("7731")))
                          if f"{prefix}{''.join(digits)}" != EXACT_CODE]
