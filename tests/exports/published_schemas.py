"""Published schemas of three public preference/conversation datasets, kept as plain Python constants.

These are the column layouts of lmsys/chatbot_arena_conversations (the 33k Chatbot Arena release),
OpenAssistant/oasst1 (flat messages and the nested ``*.trees.jsonl`` export) and TRL's documented
conversational preference format. They are transcribed by hand from the sources named in the comment above
each constant (dataset cards, the FastChat and Open-Assistant repositories, the TRL docs and the trl
package), so that the peer-check test (tests/exports/test_peer_schemas.py) can compare our export rows with
them without network access. Type strings are short descriptions, not library dtypes.
"""

# ---------------------------------------------------------------------------------------------------------------
# 1. lmsys/chatbot_arena_conversations (33,000 rows, single "train" split)
# ---------------------------------------------------------------------------------------------------------------

# Source: the dataset card's `dataset_info.features` YAML, README.md of
# https://huggingface.co/datasets/lmsys/chatbot_arena_conversations (revision 1b6335d, "Update README.md" by
# lmzheng; read through a mirror, since the page itself is gated). Order as on the card. The release was made
# with FastChat fastchat/serve/monitor/dataset_release_scripts/arena_33k/upload_hf_dataset.py
# (Dataset.from_list over the cleaned battle JSON), and merge_field.py there adds `toxic_chat_tag`.
CHATBOT_ARENA_CONVERSATIONS_FEATURES = {
    "question_id": "string",
    "model_a": "string",
    "model_b": "string",
    "winner": "string",  # one of CHATBOT_ARENA_WINNER_VALUES
    "judge": "string",  # anonymized user id; FastChat writes f"arena_user_{user_id}"
    "conversation_a": "list[{content: string, role: string}]",
    "conversation_b": "list[{content: string, role: string}]",
    "turn": "int64",
    "anony": "bool",
    "language": "string",
    "tstamp": "float64",
    "openai_moderation": "struct{categories: struct[bool], category_scores: struct[float64], flagged: bool}",
    "toxic_chat_tag": (
        "struct{roberta-large: {flagged: bool, probability: float64}, t5-large: {flagged: bool, score: float64}}"
    ),
}

# Sub-keys of the two struct columns, from the same card.
CHATBOT_ARENA_MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
CHATBOT_ARENA_TOXIC_CHAT_TAG_KEYS = ("roberta-large", "t5-large")

# Keys of one message in conversation_a / conversation_b. The card's YAML lists them sorted (content, role);
# the card text calls it "OpenAI API JSON format", i.e. {"role": ..., "content": ...}. The role values
# ("user" / "assistant") are not listed in the card's schema and are not recorded here as confirmed.
CHATBOT_ARENA_MESSAGE_KEYS = ("role", "content")

# Source: lm-sys/FastChat fastchat/serve/monitor/clean_battle_data.py, the `convert_type` mapping
# {"leftvote": "model_a", "rightvote": "model_b", "tievote": "tie", "bothbad_vote": "tie (bothbad)"}
# (the same mapping is in fastchat/serve/monitor/vote_time_stats/clean_battle.py).
CHATBOT_ARENA_WINNER_VALUES = ("model_a", "model_b", "tie", "tie (bothbad)")

# ---------------------------------------------------------------------------------------------------------------
# 2. OpenAssistant/oasst1
# ---------------------------------------------------------------------------------------------------------------

# Source: the dataset card's `dataset_info.features` YAML, README.md of https://huggingface.co/datasets/OpenAssistant/oasst1
# (e.g. revision 37d790373da332a4c8be24bd29ec1550e7f04c3f); same columns in the same order in OpenAssistant/oasst2.
# These are the columns of the flat Hugging Face (parquet) release, one row per message. The card gives plain
# dtypes only; the "| null" notes come from the Optional fields of ExportMessageNode (see below).
# In the *.jsonl(.gz) exports (LAION-AI/Open-Assistant oasst-data/oasst_data/schemas.py, ExportMessageNode)
# the same names are used but `emojis` is dict[str, int], `labels` is dict[str, {value: float | None, count: int}],
# `created_date` is a datetime, and nodes may also carry `events` and (in trees) `replies`.
OASST1_MESSAGE_FIELDS = {
    "message_id": "string",
    "parent_id": "string | null",  # null for the root prompt of a tree
    "user_id": "string",
    "created_date": "string",  # ISO timestamp as text in the HF release
    "text": "string",
    "role": "string",  # one of OASST1_ROLES
    "lang": "string",
    "review_count": "int32",
    "review_result": "bool",
    "deleted": "bool",
    "rank": "int32 | null",  # only on siblings that were ranked; 0 = most preferred
    "synthetic": "bool",
    "model_name": "string | null",
    "detoxify": "struct{toxicity, severe_toxicity, obscene, identity_attack, insult, threat, sexual_explicit: float64}",
    "message_tree_id": "string",
    "tree_state": "string",
    "emojis": "sequence[{name: string, count: int32}]",
    "labels": "sequence[{name: string, value: float64, count: int32}]",
}

# Source: OpenAssistant/oasst1 README ("All messages have a role which can either be "assistant" or "prompter"";
# roles strictly alternate along a thread from the prompt to a leaf).
OASST1_ROLES = ("prompter", "assistant")

# Source: LAION-AI/Open-Assistant oasst-data/oasst_data/schemas.py, class ExportMessageTree
# (message_tree_id: str, tree_state: Optional[str], prompt: Optional[ExportMessageNode], origin: Optional[str]),
# and the card's "JSON Example: Conversation Tree" for *.trees.jsonl.gz (e.g. 2023-04-12_oasst_ready.trees.jsonl.gz).
# `origin` is an optional fourth key in newer schemas.py versions; older versions and the card example omit it,
# so it is not part of the required keys below.
OASST1_TREE_KEYS = ("message_tree_id", "tree_state", "prompt")

# In a tree export `prompt` is an ExportMessageNode and every node has `replies: list[ExportMessageNode] | None`
# (recursive). schemas.py notes that message_tree_id and tree_state are always None on nodes inside a tree
# (they live on the outer tree object); they are only filled in the flat *.messages.jsonl.gz files.
OASST1_TREE_MESSAGE_NESTING = {
    "root_key": "prompt",
    "children_key": "replies",
    "children_type": "list[message] | null",
    "recursive": True,
    "node_fields_null_in_trees": ("message_tree_id", "tree_state"),
}

# ---------------------------------------------------------------------------------------------------------------
# 3. TRL preference formats
# ---------------------------------------------------------------------------------------------------------------

# Source: huggingface/trl docs/source/dataset_formats.md, "Preference" section, conversational format with
# explicit prompt (recommended). trl.data_utils.is_conversational(example) returns True for this dict
# (test_peer_schemas checks it with the trl of requirements-dev.txt).
TRL_CONVERSATIONAL_PREFERENCE_EXAMPLE = {
    "prompt": [{"role": "user", "content": "What color is the sky?"}],
    "chosen": [{"role": "assistant", "content": "It is blue."}],
    "rejected": [{"role": "assistant", "content": "It is green."}],
}

# Source: same doc, "Preference" and "Unpaired preference" sections. trl's
# trl.data_utils.unpair_preference_dataset turns the example above into columns ["prompt", "completion", "label"]
# (label True for the chosen row, False for the rejected one).
TRL_PREFERENCE_KEYS = ("prompt", "chosen", "rejected")
TRL_UNPAIRED_PREFERENCE_KEYS = ("prompt", "completion", "label")

# Public functions defined in trl.data_utils (1.13.0 and 1.16.0 alike): apply_chat_template, extract_prompt,
# get_dataset_column_names, is_conversational, is_conversational_from_value, maybe_apply_chat_template,
# maybe_convert_to_chatml, maybe_extract_prompt, maybe_unpair_preference_dataset, pack_dataset,
# prepare_multimodal_messages, prepare_multimodal_messages_vllm, unpair_preference_dataset.
# is_conversational takes one of "prompt", "chosen", "rejected", "completion", "messages" that is present
# (set.pop(), so any one of them) and returns True when it is a list whose first item is a dict with a "role" key.
# Re-exported at top level (trl.is_conversational, trl.apply_chat_template, trl.maybe_apply_chat_template,
# trl.unpair_preference_dataset, trl.maybe_unpair_preference_dataset, trl.extract_prompt, trl.maybe_extract_prompt).
TRL_DATA_UTILS_VERSION_CHECKED = "1.16.0"
