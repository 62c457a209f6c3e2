"""The dataset card (README.md) and manifest (manifest.json) written beside every export.

`SelectionStats` is fed one conversation at a time while the rows are written, so the counts
and agreement figures cost no second pass and no memory that grows with the study: agreement
is kept as Krippendorff value patterns, whose number is bounded by the taxonomy, not the data.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import yaml

from annotate.models import Study
from exports.formats import SCHEMAS, column_description
from exports.selection import ConversationData, ExportParams, Selection, split_shares
from labeling import agreement
from labeling.models import Label
from workers.models import ModelConfig

APP_VERSION = "0.5.0"
# The rows' schema version, in the manifest: 2 added UUIDs, language, numeric strength and pair tallies,
# made segments SDPO segments and arena sides each model's own conversation.
SCHEMA_VERSION = 2

FORMAT_SUMMARY = {
    "dpo": "Pairwise preferences in TRL's conversational format: the whole conversation so far as `prompt`, "
    "one assistant message each as `chosen` and `rejected`.",
    "kto": "Unpaired desirable/undesirable replies in TRL's conversational KTO format (`prompt`, `completion`, "
    "`label`).",
    "reward": "Reward-model pairs with implicit prompts: the full transcript ending in the chosen reply against "
    "the one ending in the rejected reply.",
    "tree": "One record per conversation with every branch: turns with parent ids, sibling ranks, tags, links, "
    "votes, the outcome survey and timings.",
    "arena": "Battles between the models that wrote competing replies, Chatbot Arena style.",
    "multiturn": "Per reply on the lived path, a multi-turn-aware reward and its components (immediate "
    "preference, later implicit feedback, grounding acts, outcome).",
    "segments": "SDPO segments (arXiv:2501.01821): each starts at a reply the user then reacted to as an error; "
    "`rejected` is that reply and what followed it, `chosen` a better reply from the same point (a sibling "
    "candidate, or the reply that repaired the error). `--segments after-error` gives the earlier pairs after "
    "the error instead.",
}


@dataclass
class SelectionStats:
    conversations: int = 0
    completed: int = 0
    turns: int = 0
    replies: int = 0
    comparisons: int = 0
    tags: int = 0
    raters: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)
    choices: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    vote_patterns: Counter[tuple[str, ...]] = field(default_factory=Counter)
    tag_patterns: Counter[tuple[frozenset[Hashable], ...]] = field(default_factory=Counter)
    # For the card's prose only (not the manifest): who did what, in which years, each model in how many conversations.
    live_raters: set[str] = field(default_factory=set)
    reviewers: set[str] = field(default_factory=set)
    years: set[int] = field(default_factory=set)
    model_conversations: Counter[str] = field(default_factory=Counter)

    def observe(self, conv: ConversationData, sel: Selection, rows: list[dict[str, Any]]) -> None:
        """Add one conversation's figures, as far as `rows` (the rows it gave) cover it: the card describes
        exactly what was exported, whatever the filters (`--model`, `--rater`, `--min-agreement`).

        A conversation that gave no row is not counted. Of one that did: the replies and models that pass the
        model filter; the votes the rows name (`comparison_id`, or a tree's `votes`), or, for a format whose
        rows name none (multiturn), every vote the rater filter keeps; the tags on its turns (the selection
        keeps only the filtered raters' tags), not those on replies of other models. Vote agreement is over
        the branch points of those votes, each with every kept vote cast there; both agreement figures use
        the definitions the study dashboard uses (`labeling.agreement.vote_units`, `tag_units`)."""
        if not rows:
            return
        self.conversations += 1
        self.completed += conv.status == "completed"
        self.turns += len(conv.turns)
        self.years.add(conv.started_at.year)
        if not sel.params.raters or conv.rater_username in sel.params.raters:
            self.raters.add(conv.rater)
            self.live_raters.add(conv.rater)
        models_here: set[str] = set()
        left_out: set[int] = set()  # replies of models the filter leaves out
        for turn in conv.turns.values():
            if turn.role == "assistant" and not turn.is_rewrite:
                if sel.params.models and not sel.keeps_models(turn.model):
                    left_out.add(turn.id)
                    continue
                self.replies += 1
                if turn.model:
                    self.models.add(turn.model)
                    models_here.add(turn.model)
        self.model_conversations.update(models_here)
        named = _named_votes(rows)
        kept = [v for v in conv.votes if sel.keeps_vote(v)]
        if named is not None:
            units = {v.parent_id for v in kept if v.id in named}
            counted = [v for v in kept if v.id in named]
        else:
            units = {v.parent_id for v in kept}
            counted = kept
        for vote in counted:
            self.comparisons += 1
            self.choices[vote.choice] += 1
            self.raters.add(vote.rater)
            if vote.task == "review":
                self.reviewers.add(vote.rater)
        votes = agreement.vote_units(
            (v.parent_id, v.rater, agreement.vote_code(v.choice, _position(conv, v.chosen_id)))
            for v in kept
            if v.parent_id in units
        )
        for coded in votes.values():
            self.vote_patterns[tuple(sorted(coded.values()))] += 1
        # Not the review tags of a reviewer whose review expired: they coded part of it and left (as the dashboard).
        tags = [
            tag
            for turn_id, found in conv.tags.items()
            if turn_id not in left_out
            for tag in found
            if tag.task != "review" or tag.rater not in conv.reviewers_gone
        ]
        for tag in tags:
            self.tags += 1
            self.labels[tag.label] += 1
            self.raters.add(tag.rater)
            if tag.task == "review":
                self.reviewers.add(tag.rater)
        # The reviewers covering the conversation coded every turn they were shown (user turns, and finished
        # replies: those gone on from, or all with `review_all_branches`), a turn left untagged as "no label";
        # the rule the dashboard applies in SQL (`labeling.dashboard._coded_turns`).
        lived = {turn.id for turn in conv.lived_path()}  # the replies gone on from are the path's
        shown = [
            turn.id
            for turn in conv.turns.values()
            if turn.id not in left_out
            and (turn.role == "user" or (turn.status == "done" and (sel.study.review_all_branches or turn.id in lived)))
        ]
        covered = [(turn_id, reviewer) for reviewer in conv.reviewers for turn_id in shown]
        sets = agreement.tag_units(covered, ((tag.turn_id, tag.rater, tag.label) for tag in tags))
        for coded_sets in sets.values():
            self.tag_patterns[tuple(sorted(coded_sets.values(), key=lambda labels: sorted(map(str, labels))))] += 1

    def merge(self, other: SelectionStats) -> None:
        """Add the figures of another, disjoint set of conversations (a part of a split export)."""
        for name in ("conversations", "completed", "turns", "replies", "comparisons", "tags"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for names in ("raters", "models", "live_raters", "reviewers", "years"):
            getattr(self, names).update(getattr(other, names))
        for counter in ("choices", "labels", "vote_patterns", "tag_patterns", "model_conversations"):
            getattr(self, counter).update(getattr(other, counter))

    def vote_alpha(self) -> float | None:
        return agreement.alpha_from_patterns(self.vote_patterns)

    def tag_alpha(self) -> float | None:
        return agreement.alpha_from_patterns(self.tag_patterns, agreement.masi_distance)

    def as_manifest(self) -> dict[str, Any]:
        return {
            "conversations": self.conversations,
            "completed_conversations": self.completed,
            "turns": self.turns,
            "model_replies": self.replies,
            "comparisons": self.comparisons,
            "confirmed_tags": self.tags,
            "raters": len(self.raters),
            "models": sorted(self.models),
            "choices": dict(sorted(self.choices.items())),
            "vote_alpha": _round(self.vote_alpha()),
            "vote_units": sum(self.vote_patterns.values()),
            "tag_alpha_masi": _round(self.tag_alpha()),
            "tag_units": sum(self.tag_patterns.values()),
        }


def _named_votes(rows: list[dict[str, Any]]) -> set[int] | None:
    """The ids of the votes `rows` come from (a pair's `comparison_id`, a tree's `votes`); None when the
    format's rows name no vote."""
    named: set[int] = set()
    found = False
    for row in rows:
        if "comparison_id" in row:
            found = True
            if row["comparison_id"] is not None:
                named.add(row["comparison_id"])
            else:  # an aggregated row stands for several votes
                named.update(row.get("comparison_ids") or ())
        if isinstance(row.get("votes"), list):
            found = True
            named.update(vote["comparison_id"] for vote in row["votes"])
    return named if found else None


def _position(conv: ConversationData, turn_id: int | None) -> int | None:
    turn = conv.turns.get(turn_id) if turn_id is not None else None
    return turn.position if turn is not None else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def quality_manifest(sel: Selection) -> dict[str, Any]:
    """What quality control left out: raters excluded in the study (and their conversations), and whether
    their work is left out of this export (the default) or kept (`include_excluded`)."""
    return {
        "excluded_raters": sel.excluded_raters,
        "excluded_conversations": sel.excluded_conversations,
        "excluded_work_left_out": not sel.params.include_excluded,
        "attention_checks_left_out": True,
    }


def manifest_json(
    *,
    params: ExportParams,
    files: list[dict[str, Any]],
    stats: SelectionStats,
    quality: dict[str, Any] | None = None,
) -> str:
    """No export time in it: the same data and parameters give the same manifest."""
    manifest = {
        "app": "commonground",
        "app_version": APP_VERSION,
        "schema": f"commonground/{params.format}/{SCHEMA_VERSION}",
        "format": params.format,
        "files": files,
        "parameters": params.as_manifest(),
        "selection": stats.as_manifest(),
    }
    if quality is not None:
        manifest["quality_control"] = quality
    return json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _figure(value: float | None, units: int) -> str:
    return "not measured (no unit judged by two raters)" if value is None else f"{value:.3f} over {units} units"


def card_markdown(*, sel: Selection, files: list[dict[str, Any]], stats: SelectionStats) -> str:
    """The dataset card: front matter for the Hugging Face Hub, then a section per question a
    reader of the dataset asks (how it was made, how much, how reliable, how to load it)."""
    params, study = sel.params, sel.study
    sections = [
        _front_matter(params, study, files),
        _collection(params, study),
        _collection_details(sel, stats),
        _counts(files, stats),
        _columns(params.format),
        _quality(sel),
        _agreement(stats),
        _taxonomy(sel.labels, stats),
        _limitations(sel.study, stats),
        _parameters(params),
        _loading(params, files[0]["path"]),  # the one-file example: the first split
        _licence(params),
        _citation(params, study, stats),
    ]
    return "\n".join(line for section in sections for line in section)


def _front_matter(params: ExportParams, study: Study, files: list[dict[str, Any]]) -> list[str]:
    """The YAML block the Hub and `datasets.load_dataset(<export dir>)` read: licence, tags, the data
    files as the dataset's config, and the features (column types) of the format's schema.

    Declared features are what make JSONL load whatever its null pattern: without them `datasets`
    infers each column's type from the file's first 10 MB, and a column that is null there (agreement,
    a span) fails to load where it is set. Dumped by a YAML library, so that free text (licence, study
    name) stays one string, whatever newlines or colons it holds.
    """
    header = {
        "license": params.licence,
        "pretty_name": f"{study.name}: {params.format}",
        "language": [study.language],
        "tags": ["preference", "multi-turn", "grounding", "commonground"],
        "configs": [
            {
                "config_name": params.format,
                "data_files": [{"split": file.get("split", "train"), "path": file["path"]} for file in files],
                "default": True,
            }
        ],
        "dataset_info": {"config_name": params.format, "features": features_yaml(SCHEMAS[params.format])},
    }
    return ["---", yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip("\n"), "---", ""]


# Arrow's names for its types where `datasets` names them otherwise (`Value(dtype)`); the rest agree.
_DTYPE_NAMES = {"double": "float64", "float": "float32", "halffloat": "float16"}


def features_yaml(schema: pa.Schema) -> list[dict[str, Any]]:
    """`schema` as the `features` list of a card's `dataset_info`, in the form `datasets` writes
    (`Features._to_yaml_list`) and the Hub reads; without importing `datasets`, a dev dependency."""
    return [{"name": column.name, **_feature_yaml(column.type)} for column in schema]


def _feature_yaml(dtype: pa.DataType) -> dict[str, Any]:
    if pa.types.is_struct(dtype):
        return {
            "struct": [
                {"name": dtype.field(i).name, **_feature_yaml(dtype.field(i).type)} for i in range(dtype.num_fields)
            ]
        }
    if pa.types.is_list(dtype):
        item = _feature_yaml(dtype.value_type)
        # A list of a plain type or of a struct is written in short (`list: string`, `list: [fields]`).
        only = next(iter(item)) if len(item) == 1 else None
        return {"list": item[only] if only in ("dtype", "struct") else item}
    if pa.types.is_nested(dtype) or pa.types.is_dictionary(dtype):
        raise TypeError(f"No dataset feature for the Arrow type {dtype}.")
    return {"dtype": _DTYPE_NAMES.get(str(dtype), str(dtype))}


def _collection(params: ExportParams, study: Study) -> list[str]:
    """Title, what the format holds, and how raters produced the data (with their instructions,
    if the study gave any): what a reader needs to judge what the labels mean."""
    lines = [
        f"# {study.name}: `{params.format}` export",
        "",
        FORMAT_SUMMARY[params.format],
        "",
        *_row_options(params),
        "## How it was collected",
        "",
        f"Raters held live conversations with language models in Common Ground (study `{study.slug}`). At each "
        f"user turn the app sampled {study.candidates_per_turn} candidate replies from the study's model pool "
        f"({'with model names' if study.show_model_names else 'shown blind'}, in random slots), the rater chose "
        "the better one (or a tie, both bad, or wrote a rewrite), and the conversation went on from the choice; "
        "the other replies stay as branches. Raters tagged "
        "grounding acts and implicit feedback signals on turns, live and in a review pass, and ended each "
        "conversation with an outcome survey (goal reached, felt understood).",
        "",
    ]
    if study.instructions:
        lines += ["Instructions given to raters:", "", *(f"> {line}" for line in study.instructions.splitlines()), ""]
    return lines


ROW_OPTIONS = {
    ("aggregate", "majority"): "Rows are aggregated (`--aggregate majority`): one per pair of replies judged at a "
    "branch point, over every kept vote (live and review), oriented by the most votes; pairs with as many votes "
    "each way are left out. `votes_for`, `votes_against`, `votes_tied` and `margin` give the tally, "
    "`comparison_ids` the votes; the single-vote columns are null.",
    ("aggregate", "mean-margin"): "Rows are aggregated (`--aggregate mean-margin`): one per pair of replies judged "
    "at a branch point, over every kept vote (live and review), oriented by the sign of the mean signed strength "
    "(`margin`: clear 1, slight 0.5, tie 0); pairs with a zero margin are left out. `comparison_ids` lists the "
    "votes; the single-vote columns are null.",
    ("segments", "after-error"): "Segments are the vote pairs at the branch point after an error "
    "(`--segments after-error`), not SDPO segments starting at the erroneous reply.",
    ("arena_history", "lived"): "Both sides of a battle hold the lived history (`--arena-history lived`), which may "
    "contain the other model's replies or a rater's rewrite; `own_history` says where it is each model's own.",
}


def _row_options(params: ExportParams) -> list[str]:
    """A paragraph for each non-default row option that changes what a row means."""
    options = params.as_manifest()
    return [line for (name, value), text in ROW_OPTIONS.items() if options.get(name) == value for line in (text, "")]


def _collection_details(sel: Selection, stats: SelectionStats) -> list[str]:
    """The study settings that shape the data, the models in the rows and how they sampled, and who judged:
    what a reader needs to compare this data with another study's."""
    study = sel.study
    configs = {config.name: config for config in ModelConfig.objects.filter(name__in=stats.models)}
    lines = [
        "### Study settings",
        "",
        "| setting | value |",
        "|---|---|",
        f"| candidate replies per user turn (K) | {study.candidates_per_turn} |",
        f"| user turns per conversation, at most | {study.max_user_turns} |",
        f"| after a tie or all bad (`tie_policy`) | `{study.tie_policy}`: {study.get_tie_policy_display()} |",
        f"| model names shown to raters | {'yes' if study.show_model_names else 'no (blind)'} |",
        f"| raters per scenario | {study.overlap} |",
        f"| reviewers per conversation (review overlap) | {study.review_overlap} |",
        f"| reviewers see every branch | {'yes' if study.review_all_branches else 'no (the lived path)'} |",
        f"| attention-check rate | {study.attention_check_rate:g} |",
        f"| tags required before a vote | {'yes' if study.tags_required_before_vote else 'no'} |",
        "",
        "### Models",
        "",
    ]
    if stats.models:
        # The config as it stands at export time; the parameters each reply was sampled with are in the
        # `tree` format's `params`, should a config have changed during the study.
        lines += ["| model config | backend | generation parameters | system prompt |", "|---|---|---|---|"]
        for name in sorted(stats.models):
            config = configs.get(name)
            if config is None:
                lines.append(f"| `{name}` | unknown | unknown | unknown |")
                continue
            sampled = json.dumps(config.effective_params(), sort_keys=True, ensure_ascii=False).replace("|", "\\|")
            lines.append(f"| `{name}` | {config.backend} | `{sampled}` | {'yes' if config.system_prompt else 'no'} |")
        lines += ["", "Generation parameters as the configs stand at export time; `tree` rows give each reply's own."]
    else:
        lines.append("No model reply is in the rows.")
    n = sel.excluded_raters
    lines += [
        "",
        "### Raters",
        "",
        f"- {len(stats.raters)} rater{'s' if len(stats.raters) != 1 else ''} in the rows: "
        f"{len(stats.live_raters)} holding conversations, {len(stats.reviewers)} reviewing (one person may do both).",
        f"- Quality control excluded {n} rater{'s' if n != 1 else ''} ({sel.excluded_conversations} "
        f"conversation{'s' if sel.excluded_conversations != 1 else ''}); see Quality control.",
        "",
    ]
    return lines


def _type_name(dtype: pa.DataType) -> str:
    """An Arrow type as a reader writes it: `list<struct<role: string, content: string>>`, `float64`."""
    if pa.types.is_struct(dtype):
        fields = (f"{dtype.field(i).name}: {_type_name(dtype.field(i).type)}" for i in range(dtype.num_fields))
        return f"struct<{', '.join(fields)}>"
    if pa.types.is_list(dtype):
        return f"list<{_type_name(dtype.value_type)}>"
    return _DTYPE_NAMES.get(str(dtype), str(dtype))


def _columns(fmt: str) -> list[str]:
    """One line per column of the format's schema (the one the Parquet writer and the front matter use)."""
    lines = ["## Columns", "", "| column | type | description |", "|---|---|---|"]
    for column in SCHEMAS[fmt]:
        description = (column_description(fmt, column.name) or "").replace("|", "\\|")
        lines.append(f"| `{column.name}` | `{_type_name(column.type)}` | {description} |")
    return [*lines, ""]


# Fewer raters than this, or conversations per model, and the card says the figures rest on little.
FEW_RATERS = 10
FEW_CONVERSATIONS = 5


def _limitations(study: Study, stats: SelectionStats) -> list[str]:
    """What the data cannot support: fixed caveats of the method, and those this export's figures show."""
    lines = [
        "## Limitations",
        "",
        "- Raters are study participants (possibly crowd workers) playing given scenarios, not users with "
        "their own needs, nor experts; their preferences need not be those of any population.",
        f"- One language: the study ran in `{study.language}` (declared by the researcher, in `language` above and in "
        "each row); no language is detected per row, so a rater writing in another language goes unnoticed.",
        "- A vote compares the candidates of one branch point only: preferences across branch points, raters "
        "or studies are not on one scale.",
        "- Model replies are those of the configs listed above, with their settings; other decoding or "
        "system prompts would give other replies.",
    ]
    raters = len(stats.raters)
    if raters < FEW_RATERS:
        lines.append(f"- Only {raters} rater{'s' if raters != 1 else ''}: the judgements reflect few people's views.")
    few = sorted(name for name in stats.models if stats.model_conversations[name] < FEW_CONVERSATIONS)
    if few:
        judged = ", ".join(f"`{name}` ({stats.model_conversations[name]})" for name in few)
        lines.append(f"- Models judged in fewer than {FEW_CONVERSATIONS} conversations: {judged}.")
    if stats.vote_alpha() is None:
        lines.append("- Vote agreement is not measured: no branch point in the rows has two raters' votes.")
    return [*lines, ""]


def _citation(params: ExportParams, study: Study, stats: SelectionStats) -> list[str]:
    """A BibTeX entry for the dataset: the study, the format, and the last year of collection in the rows."""
    year = max(stats.years) if stats.years else study.created_at.year
    key = re.sub(r"[^a-z0-9]+", "_", f"commonground {study.slug} {params.format} {year}".lower()).strip("_")
    name = re.sub(r"[{}\\\s]+", " ", study.name).strip()  # no brace or backslash to unbalance the entry
    return [
        "## Citation",
        "",
        "```bibtex",
        f"@misc{{{key},",
        f"  title = {{{name}: {params.format} export}},",
        f"  howpublished = {{Dataset collected and exported with Common Ground {APP_VERSION}, study {study.slug}}},",
        f"  year = {{{year}}},",
        "}",
        "```",
        "",
    ]


def _counts(files: list[dict[str, Any]], stats: SelectionStats) -> list[str]:
    """How much data there is (rows per data file: one per split), and from how many people and models."""
    return [
        "## Counts",
        "",
        "| | |",
        "|---|---|",
        *(f"| rows in `{file['path']}` | {file['rows']} |" for file in files),
        f"| conversations in the rows | {stats.conversations} ({stats.completed} completed) |",
        f"| turns | {stats.turns} |",
        f"| model replies | {stats.replies} |",
        f"| comparisons (votes) | {stats.comparisons} |",
        f"| confirmed tags | {stats.tags} |",
        f"| raters | {len(stats.raters)} |",
        f"| models | {', '.join(sorted(stats.models)) or '-'} |",
        "",
    ]


def _quality(sel: Selection) -> list[str]:
    """What quality control kept out of the data: excluded raters' work, planted attention checks."""
    n, conversations = sel.excluded_raters, sel.excluded_conversations
    if n == 0:
        excluded = "No rater of the study was excluded by quality control."
    elif sel.params.include_excluded:
        excluded = (
            f"{n} rater{'s' if n != 1 else ''} ({conversations} conversation{'s' if conversations != 1 else ''}) "
            "were excluded by quality control; this export keeps their work, as asked (`include_excluded`)."
        )
    else:
        excluded = (
            f"{n} rater{'s' if n != 1 else ''} excluded by quality control: their {conversations} "
            f"conversation{'s' if conversations != 1 else ''}, and their votes and tags on other conversations, "
            "are left out."
        )
    return [
        "## Quality control",
        "",
        f"- {excluded}",
        "- Planted attention-check replies (obviously broken replies shown to test raters' attention) and the "
        "votes that failed them are left out.",
        "",
    ]


def _agreement(stats: SelectionStats) -> list[str]:
    """How far raters agree on votes and tags: how much a single judgement can be trusted."""
    return [
        "## Agreement",
        "",
        f"- Votes (Krippendorff's α, nominal, over branch points with two or more votes): "
        f"{_figure(stats.vote_alpha(), sum(stats.vote_patterns.values()))}.",
        f"- Tags (Krippendorff's α with MASI distance over each rater's label set, turns tagged by two or more "
        f"raters): {_figure(stats.tag_alpha(), sum(stats.tag_patterns.values()))}.",
        "",
    ]


def _taxonomy(labels: list[Label], stats: SelectionStats) -> list[str]:
    """Every label of the study's taxonomy with its definition and use: the tags' vocabulary."""
    lines = [
        "## Taxonomy",
        "",
        "| label | kind | polarity | used | definition |",
        "|---|---|---|---|---|",
    ]
    for label in labels:
        definition = " ".join(label.definition.split()).replace("|", "\\|")
        lines.append(
            f"| `{label.name}` | {label.kind} | {label.polarity:+d} | {stats.labels[label.name]} | {definition} |"
        )
    return [*lines, ""]


def _parameters(params: ExportParams) -> list[str]:
    """The export's parameters as in the manifest, so that the card alone says how to redo it."""
    return [
        "## Export parameters",
        "",
        "```json",
        json.dumps(params.as_manifest(), indent=2, ensure_ascii=False),
        "```",
        "",
        "Schemas and definitions: `docs/exports.md` in the Common Ground repository. Raters appear under "
        "pseudonyms (`rater-<id>`).",
        "",
    ]


def _loading(params: ExportParams, data_file: str) -> list[str]:
    """How to load the export with `datasets`: the directory (the front matter gives the data file
    and its features), or the data file alone with those features passed explicitly."""
    loader = "parquet" if params.file_format == "parquet" else "json"
    return [
        "## Loading",
        "",
        "The front matter declares the data file and its features (column types), so `datasets` loads this "
        "directory with the right types. Loading the data file alone, pass the features: without them "
        "`datasets` infers a JSON column's type from the file's first 10 MB, and a column that is null there "
        "(`agreement`, a tag's span) fails to load where it is set. From this directory:",
        "",
        "```python",
        "import os",
        "",
        "from datasets import load_dataset, load_dataset_builder",
        "",
        "export_dir = os.getcwd()  # this card's directory",
        *_loading_splits(params),
        "",
        "features = load_dataset_builder(export_dir).info.features",
        f'ds = load_dataset("{loader}", data_files="{data_file}", features=features, split="{_first_split(params)}")',
        "```",
        "",
    ]


def _first_split(params: ExportParams) -> str:
    """The split of the first data file (the one the snippet loads alone): "train" unless `--split` named another."""
    return next((name for name, _ in split_shares(params.split)), "train")


def _loading_splits(params: ExportParams) -> list[str]:
    """The snippet's line loading the directory: one split, or every split of a `--split` export."""
    names = [name for name, _ in split_shares(params.split)]
    if not names:
        return ['ds = load_dataset(export_dir, split="train")']
    return [f"dsd = load_dataset(export_dir)  # a DatasetDict: {', '.join(names)}", f'ds = dsd["{names[0]}"]']


def _licence(params: ExportParams) -> list[str]:
    """The licence, flagged when nobody chose one (the default `other`)."""
    return [
        "## Licence",
        "",
        f"`{params.licence}`" + (" (set with `--licence` at export time)." if params.licence == "other" else "."),
        "",
    ]
