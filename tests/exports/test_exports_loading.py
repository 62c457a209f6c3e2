"""Exports load where they are used: 🤗 `datasets` reads every format as written, and TRL takes the
`dpo`, `kto` and `reward` files as they are (its own format checks, its trainers' dataset
preparation, and one DPO step on a tiny model). Nothing is converted or dropped on the way.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch
import yaml
from django.contrib.auth import get_user_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from trl import (
    DPOConfig,
    DPOTrainer,
    KTOConfig,
    KTOTrainer,
    RewardConfig,
    RewardTrainer,
    apply_chat_template,
    extract_prompt,
    is_conversational,
    is_conversational_from_value,
    maybe_apply_chat_template,
    maybe_extract_prompt,
    maybe_unpair_preference_dataset,
)

from annotate.models import Comparison, Conversation, Scenario, Study, Turn
from exports.build import export_build
from exports.card import features_yaml
from exports.formats import SCHEMAS
from exports.selection import FORMATS, ExportParams
from labeling.models import Label, Tag
from labeling.services import default_taxonomy
from tests.exports.export_study import build_export_study
from workers.models import ModelConfig

# The tiny tokenizer has no chat template; this one keeps every turn on its own line, so a
# rendered prompt is a prefix of the rendered prompt + reply (what TRL's tokenization expects).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
# The metadata columns every pair export carries next to TRL's columns (they must not get in the way).
PAIR_METADATA = ["study", "conversation_id", "scenario", "comparison_id", "rater", "chosen_tags", "rejected_tags"]


def export(fmt: str, out_root: Path, **params: Any) -> tuple[Path, dict[str, Any]]:
    """Export the golden study; the data file and its manifest."""
    kind = params.get("file_format", "jsonl") + ("-gz" if params.get("gzip") else "")
    result = export_build(params=ExportParams(study="golden", format=fmt, **params), out=out_root / f"{fmt}-{kind}")
    return result.data_file, json.loads((result.out / "manifest.json").read_text())


def load(builder: str, path: Path, cache: Path) -> datasets.Dataset:
    # A cache of its own per test: nothing written to ~/.cache, no stale dataset from an earlier run.
    return datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=str(cache))


def render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], **kwargs: Any) -> str:
    return str(tokenizer.apply_chat_template(messages, tokenize=False, **kwargs))


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "hf-datasets"


@pytest.fixture
def chat_tokenizer(tiny_model_dir: Path) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def trl_args(config: type[Any], out: Path, **extra: Any) -> Any:
    """Training arguments for a CPU-only run of a tiny model: fp32, no checkpoints, no reports."""
    return config(
        output_dir=str(out),
        per_device_train_batch_size=2,
        max_steps=1,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,  # TRL turns it on by default; its old name warns
        max_length=256,
        seed=0,
        **extra,
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_loads_with_datasets_json_with_the_rows_and_columns_it_was_written_with(
    db: None, tmp_path: Path, cache: Path, fmt: str
) -> None:
    build_export_study()
    path, manifest = export(fmt, tmp_path)

    dataset = load("json", path, cache)

    written = [json.loads(line) for line in path.read_text().splitlines()]
    assert dataset.num_rows == manifest["files"][0]["rows"] == len(written) > 0
    assert dataset.column_names == list(written[0]) == SCHEMAS[fmt].names
    assert dataset.to_list() == written  # times stay strings (always written with milliseconds)


@pytest.mark.parametrize("fmt", FORMATS)
def test_gzip_jsonl_and_parquet_exports_load_the_same_data_as_jsonl(
    db: None, tmp_path: Path, cache: Path, fmt: str
) -> None:
    # Given the same export as JSONL, gzip JSONL and Parquet
    build_export_study()
    jsonl_path, jsonl_manifest = export(fmt, tmp_path)
    gz_path, gz_manifest = export(fmt, tmp_path, gzip=True)
    parquet_path, parquet_manifest = export(fmt, tmp_path, file_format="parquet")
    assert gz_path.name == f"{fmt}.jsonl.gz" and parquet_path.name == f"{fmt}.parquet"

    # When each is loaded the way its dataset card says
    jsonl = load("json", jsonl_path, cache)
    gz = load("json", gz_path, cache)
    parquet = load("parquet", parquet_path, cache)

    # Then they hold the same rows, columns and values (Parquet keeps its declared types; JSON
    # infers them, so only the values are compared)
    rows = jsonl_manifest["files"][0]["rows"]
    assert gz.num_rows == parquet.num_rows == rows
    assert gz_manifest["files"][0]["rows"] == parquet_manifest["files"][0]["rows"] == rows
    assert gz.column_names == parquet.column_names == jsonl.column_names == SCHEMAS[fmt].names
    assert gz.to_list() == jsonl.to_list()
    assert parquet.to_list() == jsonl.to_list()
    assert parquet.features.arrow_schema.names == SCHEMAS[fmt].names


def front_matter(out: Path) -> dict[str, Any]:
    card = (out / "README.md").read_text()
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, card[:200]
    return yaml.safe_load(match[1])


def card_snippet(out: Path) -> str:
    """The Python code of the card's Loading section, as a reader would copy it."""
    card = (out / "README.md").read_text()
    match = re.search(r"## Loading\n.*?```python\n(.*?)```", card, re.S)
    assert match, card
    return match[1]


@pytest.mark.parametrize("fmt", FORMATS)
def test_card_declares_the_features_datasets_derives_from_the_parquet_schema(fmt: str) -> None:
    expected = datasets.Features.from_arrow_schema(SCHEMAS[fmt])

    assert features_yaml(SCHEMAS[fmt]) == expected._to_yaml_list()
    assert datasets.Features._from_yaml_list(features_yaml(SCHEMAS[fmt])) == expected


# Row options whose rows differ in shape (null vote columns of aggregated rows, multi-message segments).
ROW_OPTIONS = [("dpo", {"aggregate": "majority"}), ("reward", {"aggregate": "mean-margin"}),
               ("segments", {"segments": "after-error"}), ("arena", {"arena_history": "lived"})]  # fmt: skip


@pytest.mark.parametrize(("fmt", "options"), [(fmt, {}) for fmt in FORMATS] + ROW_OPTIONS)
def test_every_export_loads_from_its_directory_with_the_declared_features(
    db: None, tmp_path: Path, cache: Path, fmt: str, options: dict[str, str]
) -> None:
    # Given the same export as JSONL, gzip JSONL and Parquet
    build_export_study()
    features = datasets.Features.from_arrow_schema(SCHEMAS[fmt])
    loaded = {}
    for kind, params in {"jsonl": {}, "gz": {"gzip": True}, "parquet": {"file_format": "parquet"}}.items():
        path, manifest = export(fmt, tmp_path, **params, **options)
        header = front_matter(path.parent)
        assert header["configs"] == [
            {"config_name": fmt, "data_files": [{"split": "train", "path": path.name}], "default": True}
        ]

        # When the directory itself is loaded (as the Hub loads a repository)
        dataset = datasets.load_dataset(str(path.parent), split="train", cache_dir=str(cache))

        # Then every column has its declared type, and the rows are the file's
        assert dataset.features == features, kind
        assert dataset.num_rows == manifest["files"][0]["rows"]
        loaded[kind] = dataset.to_list()
    assert loaded["gz"] == loaded["parquet"] == loaded["jsonl"]


def build_late_values_study(*, conversations: int = 3, text_chars: int = 3_600_000) -> None:
    """A study whose JSONL exports hold only nulls in their nullable columns for the first 10 MB
    (`datasets`' JSON reading chunk) and set values after it: `conversations` conversations with a
    long first message, one live vote and an unspanned tag, then a short one with a review vote too
    (`agreement` set) and a spanned tag (`span_start` set)."""
    alice, bob = (get_user_model().objects.create_user(name) for name in ("alice", "bob"))
    model = ModelConfig.objects.create(name="model-late", model_path="/m")
    study = Study.objects.create(name="Late values", slug="late", taxonomy=default_taxonomy())
    study.model_pool.set([model])
    label = Label.objects.get(taxonomy=study.taxonomy, name="clarification")
    scenario = Scenario.objects.create(study=study, external_id="late", title="Late", brief="Talk.")
    for i in range(conversations + 1):
        last = i == conversations
        conv = Conversation.objects.create(study=study, scenario=scenario, rater=alice, status="completed")
        user = Turn.objects.create(conversation=conv, role="user", depth=0, text="Hi." if last else "x" * text_chars)
        a, b = (
            Turn.objects.create(
                conversation=conv, parent=user, role="assistant", depth=1, position=slot, text=f"Reply {slot}.",
                model_config=model,
            )
            for slot in (0, 1)
        )  # fmt: skip
        Comparison.objects.create(conversation=conv, parent=user, rater=alice, choice="candidate", chosen=a,
                                  continued_from=a)  # fmt: skip
        if last:
            Comparison.objects.create(conversation=conv, parent=user, rater=bob, choice="candidate", chosen=b,
                                      task="review")  # fmt: skip
        Tag.objects.create(turn=a, label=label, rater=alice, **({"span_start": 0, "span_end": 5} if last else {}))
        Conversation.objects.filter(pk=conv.pk).update(head=a)


@pytest.mark.parametrize("fmt", ["dpo", "tree"])
def test_jsonl_whose_nullable_columns_are_set_only_after_the_first_10_mb_loads_as_its_card_says(
    db: None, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    # Given a JSONL export whose first 10 MB has `agreement` / `span_start` null everywhere
    build_late_values_study()
    result = export_build(params=ExportParams(study="late", format=fmt), out=tmp_path / fmt)
    rows = [json.loads(line) for line in result.data_file.read_text().splitlines()]
    late = 2 if fmt == "dpo" else 1  # the rows of the last conversation (the live and the review vote)
    assert sum(len(line) for line in result.data_file.read_bytes().splitlines()[:-late]) > 10 << 20
    # (which is what breaks the types `datasets` infers from the file alone)
    with pytest.raises(datasets.exceptions.DatasetGenerationError):
        load("json", result.data_file, cache)

    # When it is loaded by its directory, or with the snippet of its card run in its directory
    by_directory = datasets.load_dataset(str(result.out), split="train", cache_dir=str(cache))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-snippet"))
    monkeypatch.chdir(result.out)
    scope: dict[str, Any] = {}
    exec(card_snippet(result.out), scope)

    # Then both hold every row with its declared types, the late values included
    features = datasets.Features.from_arrow_schema(SCHEMAS[fmt])
    for dataset in (by_directory, scope["ds"]):
        assert dataset.features == features
        assert dataset.to_list() == rows
    if fmt == "dpo":
        assert [row["agreement"] for row in rows] == [None] * 3 + [0.0, 0.0]
    else:
        spans = [tag["span_start"] for row in rows for turn in row["turns"] for tag in turn["tags"]]
        assert spans == [None] * 3 + [0]


def test_dpo_export_is_what_trl_calls_a_conversational_preference_dataset_with_explicit_prompt(
    db: None, tmp_path: Path, cache: Path, chat_tokenizer: PreTrainedTokenizerBase
) -> None:
    build_export_study()
    dataset = load("json", export("dpo", tmp_path)[0], cache)

    for example in dataset:
        assert is_conversational(example)
        assert not is_conversational_from_value(example)
        # The prompt is explicit: TRL leaves it alone.
        assert maybe_extract_prompt(example) is example
        assert example["prompt"][-1]["role"] == "user"
        # TRL renders prompt (with the generation prompt) and replies to text, ignoring our metadata.
        text = apply_chat_template(example, chat_tokenizer)
        assert text == {
            "prompt": render(chat_tokenizer, example["prompt"], add_generation_prompt=True),
            "chosen": f"{example['chosen'][0]['content']}\n",
            "rejected": f"{example['rejected'][0]['content']}\n",
        }

    # The dataset-level form keeps the metadata columns beside the rendered ones.
    rendered = dataset.map(maybe_apply_chat_template, fn_kwargs={"processing_class": chat_tokenizer})
    assert set(PAIR_METADATA) <= set(rendered.column_names)
    assert all(isinstance(rendered[0][key], str) for key in ("prompt", "chosen", "rejected"))


def test_kto_export_is_what_trl_calls_a_conversational_unpaired_preference_dataset(
    db: None, tmp_path: Path, cache: Path, chat_tokenizer: PreTrainedTokenizerBase
) -> None:
    build_export_study()
    dataset = load("json", export("kto", tmp_path)[0], cache)

    # Not paired: TRL has nothing to unpair.
    assert maybe_unpair_preference_dataset(dataset) is dataset
    assert {True, False} == set(dataset["label"])
    for example in dataset:
        assert is_conversational(example)
        assert maybe_extract_prompt(example) is example  # no chosen/rejected: not a paired example
        text = apply_chat_template(example, chat_tokenizer)
        assert text == {
            "prompt": render(chat_tokenizer, example["prompt"], add_generation_prompt=True),
            "completion": f"{example['completion'][0]['content']}\n",
            "label": example["label"],
        }


def test_reward_export_is_an_implicit_prompt_preference_dataset_whose_prompt_is_the_conversation_so_far(
    db: None, tmp_path: Path, cache: Path, chat_tokenizer: PreTrainedTokenizerBase
) -> None:
    # Given the reward and dpo exports of the same votes (the same pairs, in the same order)
    build_export_study()
    reward = load("json", export("reward", tmp_path)[0], cache)
    dpo = load("json", export("dpo", tmp_path)[0], cache)
    assert reward.num_rows == dpo.num_rows

    for example, pair in zip(reward, dpo, strict=True):
        assert "prompt" not in example
        assert is_conversational(example)
        # When TRL extracts the shared prompt
        extracted = maybe_extract_prompt(example)
        # Then it is the conversation up to the branch point, and the replies are what remains,
        # exactly as the dpo export has them
        assert extracted == extract_prompt(example)
        assert extracted == {"prompt": pair["prompt"], "chosen": pair["chosen"], "rejected": pair["rejected"]}
        assert extracted["prompt"] == example["chosen"][:-1] == example["rejected"][:-1]
        # Rendered as is (implicit prompt) each side is the whole conversation.
        assert apply_chat_template(example, chat_tokenizer) == {
            "chosen": render(chat_tokenizer, example["chosen"]),
            "rejected": render(chat_tokenizer, example["rejected"]),
        }


def test_reward_trainer_prepares_the_reward_export_as_it_is(
    db: None, tmp_path: Path, cache: Path, tiny_model_dir: Path, chat_tokenizer: PreTrainedTokenizerBase
) -> None:
    build_export_study()
    dataset = load("json", export("reward", tmp_path)[0], cache)

    # RewardTrainer tokenizes (and checks) its dataset when it is built.
    trainer = RewardTrainer(
        model=str(tiny_model_dir),
        args=trl_args(RewardConfig, tmp_path / "reward-run"),
        train_dataset=dataset,
        processing_class=chat_tokenizer,
    )

    prepared = trainer.train_dataset
    assert prepared.num_rows == dataset.num_rows  # nothing filtered out
    for example, tokens in zip(dataset, prepared, strict=True):
        assert chat_tokenizer.decode(tokens["chosen_ids"]) == render(chat_tokenizer, example["chosen"])
        assert chat_tokenizer.decode(tokens["rejected_ids"]) == render(chat_tokenizer, example["rejected"])


def test_kto_trainer_prepares_the_kto_export_as_it_is(
    db: None, tmp_path: Path, cache: Path, tiny_model_dir: Path, chat_tokenizer: PreTrainedTokenizerBase
) -> None:
    build_export_study()
    dataset = load("json", export("kto", tmp_path)[0], cache)

    trainer = KTOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=trl_args(KTOConfig, tmp_path / "kto-run"),
        train_dataset=dataset,
        processing_class=chat_tokenizer,
    )

    prepared = trainer.train_dataset
    assert prepared.num_rows == dataset.num_rows  # neither unpaired (doubled) nor filtered
    assert prepared["label"] == dataset["label"]
    for example, tokens in zip(dataset, prepared, strict=True):
        prompt = render(chat_tokenizer, example["prompt"], add_generation_prompt=True)
        assert chat_tokenizer.decode(tokens["prompt_ids"]) == prompt
        assert chat_tokenizer.decode(tokens["completion_ids"]) == f"{example['completion'][0]['content']}\n"


# TRL 1.16 still calls transformers' old `is_gradient_checkpointing` name; nothing of ours.
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt", ["dpo", "segments"])
def test_dpo_trainer_trains_one_step_on_the_dpo_and_segments_exports_as_they_are(
    db: None, tmp_path: Path, cache: Path, tiny_model_dir: Path, chat_tokenizer: PreTrainedTokenizerBase, fmt: str
) -> None:
    # Given the export loaded with datasets, metadata columns and all, and a tiny model (SDPO segments: a
    # rejected side of several messages, the erroneous reply, the user's reaction and the next reply)
    build_export_study()
    dataset = load("json", export(fmt, tmp_path)[0], cache)
    assert set(PAIR_METADATA) <= set(dataset.column_names)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}

    # When DPOTrainer takes one step on it
    trainer = DPOTrainer(
        model=model,
        args=trl_args(DPOConfig, tmp_path / "dpo-run", learning_rate=1e-3),
        train_dataset=dataset,
        processing_class=chat_tokenizer,
    )
    assert trainer.train_dataset.num_rows == dataset.num_rows
    result = trainer.train()

    # Then the loss is a number and the weights moved
    assert result.global_step == 1
    assert math.isfinite(result.training_loss)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses and all(math.isfinite(loss) for loss in losses)
    changed = [name for name, param in trainer.model.named_parameters() if not torch.equal(param, before[name])]
    assert changed
