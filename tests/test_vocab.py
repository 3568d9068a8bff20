"""Caption-to-vocabulary matching: lemmatised whole words and phrases, longest first."""

import json

import pytest

from xpl.errors import DataError
from xpl.vocab import Category, Vocabulary, unique_category_ids
from xpl.words import PLURAL_COUNT, phrase_count


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary(
        [
            Category(1, "dog"),
            Category(2, "hot dog"),
            Category(3, "cat"),
            Category(4, "mouse"),
            Category(5, "person", ("people", "man")),
            Category(6, "moon", ("crescent",), "novel"),
            Category(7, "teddy bear", ("teddy",), "novel"),
            Category(8, "bear"),
            Category(9, "knife"),
            Category(10, "goose"),
        ]
    )


def names(vocab: Vocabulary, text: str) -> list[tuple[str, str]]:
    return [(m.name, m.phrase) for m in vocab.match(text)]


def test_plurals_and_irregular_plurals(vocab):
    assert names(vocab, "three mice, two knives and geese") == [("mouse", "mice"), ("knife", "knives"), ("goose", "geese")]
    assert names(vocab, "Dogs and cats") == [("dog", "Dogs"), ("cat", "cats")]
    assert names(vocab, "men near people") == [("person", "men"), ("person", "people")]


def test_mentions_carry_how_many_objects_they_name(vocab):
    counts = [(m.name, m.count) for m in vocab.match("two red dogs, a cat, three mice, geese and one man")]
    assert counts == [("dog", 2), ("cat", 1), ("mouse", 3), ("goose", 2), ("person", 1)]
    # the number word counts only within two words before the phrase; "several" is a plural's 2
    assert [m.count for m in vocab.match("two of the big old knives and several teddy bears")] == [2, 2]
    assert [m.count for m in vocab.match("five hot dogs next to a moon")] == [5, 1]


def test_phrase_count_rules():
    assert phrase_count(["a", "big", "dog"], 2, 3) == 1
    assert phrase_count(["four", "big", "dogs"], 2, 3) == 4
    assert phrase_count(["four", "very", "big", "dogs"], 3, 4) == 2  # beyond reach: the plural's count
    assert phrase_count(["four", "very", "big", "dogs"], 3, 4, reach=3) == 4
    assert phrase_count(["three", "mice", "geese"], 2, 3, floor=2) == PLURAL_COUNT  # not the mice's three
    assert phrase_count(["dog"], 0, 1) == 1 and phrase_count(["hot", "dogs"], 0, 2) == PLURAL_COUNT


def test_longest_phrase_wins(vocab):
    assert names(vocab, "a hot dog next to a dog") == [("hot dog", "hot dog"), ("dog", "dog")]
    assert names(vocab, "two Hot  Dogs") == [("hot dog", "Hot  Dogs")]
    assert names(vocab, "a teddy bear and a bear") == [("teddy bear", "teddy bear"), ("bear", "bear")]


def test_case_punctuation_and_spans(vocab):
    text = "CRESCENT-shaped moon... (a Cat!)"
    mentions = vocab.match(text)
    assert [(m.category_id, m.start, m.end) for m in mentions] == [(6, 0, 8), (6, 16, 20), (3, 27, 30)]
    assert [text[m.start : m.end] for m in mentions] == ["CRESCENT", "moon", "Cat"]


def test_words_that_merely_contain_a_class_name(vocab):
    assert vocab.match("a category of catalogues about dogma and scattered hotdogs") == []


def test_no_match(vocab):
    assert vocab.match("an empty street at night") == []
    assert vocab.match("") == []


def test_unique_ids_in_order_of_first_mention(vocab):
    assert unique_category_ids(vocab.match("a moon, a cat and another moon")) == [6, 3]


def test_named_classes_as_an_indicator_in_vocabulary_order(vocab):
    assert vocab.named("Two hot dogs, a crescent and a teddy.") == [0, 1, 0, 0, 0, 1, 1, 0, 0, 0]
    assert vocab.named("nothing here") == [0] * 10


def test_splits(vocab):
    assert [c.name for c in vocab.split("novel")] == ["moon", "teddy bear"]
    assert len(vocab.split("base")) == 8 and len(vocab.split("all")) == 10
    assert vocab.labels("novel") == [6, 7] and vocab.labels("base") == [1, 2, 3, 4, 5, 8, 9, 10]
    assert vocab.labels("all") == list(range(1, 11))
    with pytest.raises(ValueError, match="unknown split 'rare'"):
        vocab.labels("rare")


def test_load_coco_and_lvis_style(tmp_path):
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps({"categories": [
        {"id": 3, "name": "hot_dog", "synonyms": ["hot_dog", "frankfurter"], "frequency": "c", "split": "novel"},
        {"id": 1, "name": "dog", "synset": "dog.n.01"},
    ]}))
    vocab = Vocabulary.load(path)
    assert vocab.ids == [3, 1] and vocab.names == ["hot dog", "dog"]
    assert [m.category_id for m in vocab.match("frankfurters for the dog")] == [3, 1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "vocabulary file not found"),
        ("{not json", "vocabulary file is not valid JSON"),
        ('{"categories": []}', "vocabulary is empty"),
        ('{"images": []}', "expected a list under key 'categories'"),
        ('{"categories": [{"name": "dog"}]}', "categories[0]: missing key 'id'"),
        ('{"categories": [{"id": 1, "name": "dog", "split": "seen"}]}', "'split' must be one of"),
        ('{"categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}', "duplicate category ids"),
    ],
)
def test_bad_vocabulary_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / "vocab.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as err:
        Vocabulary.load(path)
    assert message in str(err.value)
    if content is not None and "duplicate" not in message:
        assert str(path) in str(err.value)


def test_categories_by_name_and_an_unknown_name_listing_the_names(vocab):
    assert vocab.by_name("hot dog").id == 2 and vocab.by_name("moon").split == "novel"
    with pytest.raises(DataError, match="no class 'unicorn' in the vocabulary"):
        vocab.by_name("unicorn")
