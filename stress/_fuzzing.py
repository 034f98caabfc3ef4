"""What the fuzz scripts share: seeding the corpus, a libFuzzer dictionary, and running atheris."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path


def fuzz(
    argv: list[str],
    test_one_input: Callable[[bytes], None],
    seed_corpus: Callable[[Path], None],
    tokens: Iterable[bytes],
) -> None:
    """Fuzz ``test_one_input`` with libFuzzer's options in ``argv``.

    Corpus directories named in ``argv`` are created and seeded; ``tokens``
    become a dictionary (unless ``-dict=`` is given).
    """
    import atheris

    args = list(argv)
    corpus = [a for a in args[1:] if not a.startswith("-") and not Path(a).is_file()]
    for directory in corpus:
        Path(directory).mkdir(parents=True, exist_ok=True)
        seed_corpus(Path(directory))
    with tempfile.NamedTemporaryFile("w", suffix=".dict", delete=False) as dictionary:
        for token in tokens:
            dictionary.write('"' + "".join(f"\\x{b:02x}" for b in token) + '"\n')
    if not any(a.startswith("-dict=") for a in args):
        args.append(f"-dict={dictionary.name}")
    try:
        atheris.Setup(args, test_one_input)
        atheris.Fuzz()
    finally:
        os.unlink(dictionary.name)
