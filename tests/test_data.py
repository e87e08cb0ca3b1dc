"""The conversation data pipeline: LLaVA-format files, checked records, tokenized samples, batches, a tiny model."""
import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from compodistill.checkpoints import SYSTEM_PROMPT, make_processor, split_words
from compodistill.data import (ConversationDataset, DataCollator, DataError, check_data, image_token_count,
                               load_conversations, tokenize_record)
from compodistill.models import build_llava, preset_config, visual_token_count

Q1, A1, Q2, A2 = "what colour is the circle ?", "red .", "what shape is the circle ?", "a circle ."
TWO_TURNS = [{"from": "human", "value": Q1}, {"from": "gpt", "value": A1},
             {"from": "human", "value": Q2}, {"from": "gpt", "value": A2}]
WITH_IMAGE = [{"from": "human", "value": "<image>\n" + Q1}, *TWO_TURNS[1:]]


def write(path, records):
    "Write records as JSON (`.json`) or JSONL (`.jsonl`); return the path."
    path = Path(path)
    text = "\n".join(json.dumps(r) for r in records) if path.suffix == ".jsonl" else json.dumps(records)
    path.write_text(text)
    return path


@pytest.fixture
def proc(tok):
    return make_processor(tok, preset_config("tiny", "student", len(tok), tok.image_token_id).vision_config)


@pytest.fixture
def folder(tmp_path):
    "An image folder with red.png, blue.png and a corrupt bad.png."
    d = tmp_path / "images"
    d.mkdir()
    for c in ("red", "blue"): Image.new("RGB", (40, 40), c).save(d / f"{c}.png")
    (d / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return d


def test_chat_labels_are_exactly_the_answers(tok, proc):
    s = tokenize_record({"conversations": TWO_TURNS}, proc)
    segments = [(split_words(SYSTEM_PROMPT) + ["user", ":", *split_words(Q1), "assistant", ":"], False),
                ([*split_words(A1), "</s>"], True),
                (["user", ":", *split_words(Q2), "assistant", ":"], False),
                ([*split_words(A2), "</s>"], True)]
    words = [w for seg, _ in segments for w in seg]
    supervised = [sup for seg, sup in segments for _ in seg]
    ids = s["input_ids"].tolist()
    assert tok.convert_ids_to_tokens(ids) == words
    assert s["labels"].tolist() == [i if sup else -100 for i, sup in zip(ids, supervised)]
    assert s["attention_mask"].tolist() == [1] * len(words)
    assert "pixel_values" not in s


def test_a_template_without_answer_markers_is_an_error_not_a_blank_sample(tok, proc):
    proc.chat_template = proc.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    with pytest.raises(DataError, match="no supervised token: .*{% generation %}"):
        tokenize_record({"conversations": TWO_TURNS}, proc)


def test_image_placeholders_are_unsupervised_and_match_the_processor(tok, proc):
    image = Image.new("RGB", (40, 40), "red")
    s = tokenize_record({"conversations": WITH_IMAGE}, proc, image)
    ids = s["input_ids"]
    is_img = ids == tok.image_token_id
    assert is_img.sum() == 16 == image_token_count(proc)
    assert (s["labels"][is_img] == -100).all()
    start = int(is_img.nonzero()[0])
    assert tok.convert_ids_to_tokens(ids[start - 2:start].tolist()) == ["user", ":"]  # the placeholder opens the turn
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": Q1}]},
                {"role": "assistant", "content": A1}, {"role": "user", "content": Q2},
                {"role": "assistant", "content": A2}]
    expanded = proc(text=proc.apply_chat_template(messages), images=image, return_tensors="pt")
    assert ids.tolist() == expanded["input_ids"][0].tolist()
    assert torch.equal(s["pixel_values"], expanded["pixel_values"][0])


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_image_token_count_is_the_vision_towers(tok, preset):
    cfg = preset_config(preset, "student", len(tok), tok.image_token_id)
    assert image_token_count(make_processor(tok, cfg.vision_config)) == visual_token_count(cfg.vision_config)
    assert visual_token_count(cfg.vision_config) == (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2


def test_placeholder_after_the_question_moves_to_the_front(proc):
    after = [{"from": "human", "value": Q1 + "\n<image>"}, *TWO_TURNS[1:]]
    image = Image.new("RGB", (40, 40))
    assert torch.equal(tokenize_record({"conversations": after}, proc, image)["input_ids"],
                       tokenize_record({"conversations": WITH_IMAGE}, proc, image)["input_ids"])


def test_system_turn_replaces_the_default_prompt(tok, proc):
    conv = [{"from": "system", "value": "the assistant is polite ."}, *TWO_TURNS]
    words = tok.convert_ids_to_tokens(tokenize_record({"conversations": conv}, proc)["input_ids"].tolist())
    assert words[:7] == ["the", "assistant", "is", "polite", ".", "user", ":"]


def test_plain_template_supervises_caption_and_eos_only(tok, proc):
    rec = {"conversations": [{"from": "human", "value": "describe the image .\n<image>"},
                             {"from": "gpt", "value": "a red circle ."}]}
    s = tokenize_record(rec, proc, Image.new("RGB", (40, 40)), template="plain")
    caption = tok("a red circle .", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert s["input_ids"].tolist() == [tok.image_token_id] * 16 + caption
    assert s["labels"].tolist() == [-100] * 16 + caption


def test_truncation_never_cuts_the_image_block(tok, proc, tmp_path, folder):
    image = Image.new("RGB", (40, 40))
    full = tokenize_record({"conversations": WITH_IMAGE}, proc, image, max_length=None)
    n = len(full["input_ids"])
    cut = tokenize_record({"conversations": WITH_IMAGE}, proc, image, max_length=n - 5)
    assert cut["input_ids"].tolist() == full["input_ids"][:n - 5].tolist()
    assert (cut["input_ids"] == tok.image_token_id).sum() == 16
    img_end = int((full["input_ids"] == tok.image_token_id).nonzero()[-1]) + 1
    with pytest.raises(DataError, match=f"image block ends at token {img_end}, beyond max_length {img_end - 1}"):
        tokenize_record({"conversations": WITH_IMAGE}, proc, image, max_length=img_end - 1)
    # an image in a later turn is not silently dropped by truncation either
    late = [*TWO_TURNS[:2], {"from": "human", "value": "<image>\n" + Q2}, TWO_TURNS[3]]
    with pytest.raises(DataError, match="too long"):
        tokenize_record({"conversations": late}, proc, image, max_length=len(full["input_ids"]) - 20)
    with pytest.raises(DataError, match="no supervised token"):
        tokenize_record({"conversations": WITH_IMAGE}, proc, image, max_length=img_end + 3)
    # through the dataset, the error names file and record
    f = write(tmp_path / "long.json", [{"id": "long-1", "image": "red.png", "conversations": WITH_IMAGE}])
    ds = ConversationDataset(f, proc, folder, max_length=img_end - 1)
    with pytest.raises(DataError, match=r"long\.json: record #0 \(id 'long-1'\): too long"):
        ds[0]


GOOD = {"id": "ok-1", "image": "red.png", "conversations": WITH_IMAGE}
BAD = {  # name: (record, kind, text in the message)
    "unknown key": ({**GOOD, "url": "x"}, "malformed record", "unknown keys ['url']"),
    "missing conversations": ({"id": GOOD["id"], "image": "red.png"}, "malformed record",
                              "missing keys ['conversations']"),
    "wrong type": ({**GOOD, "conversations": [{"from": "human", "value": 3}, TWO_TURNS[1]]}, "malformed record",
                   "'value' must be a string"),
    "turn not a dict": ({**GOOD, "conversations": ["hi"]}, "malformed record", "turn 0 must be"),
    "image not a string": ({**GOOD, "image": ["red.png"]}, "malformed record", "'image' must be a path string"),
    "unknown role": ({**GOOD, "conversations": [{"from": "user", "value": "<image> hi"}, TWO_TURNS[1]]},
                     "malformed record", "unknown role 'user'"),
    "not alternating": ({**GOOD, "conversations": [WITH_IMAGE[0], WITH_IMAGE[0], TWO_TURNS[1]]}, "malformed record",
                        "turn 1: expected a 'gpt' turn"),
    "no gpt turn": ({**GOOD, "conversations": WITH_IMAGE[:1]}, "no gpt turn", "no 'gpt' turn"),
    "placeholder without image": ({"id": GOOD["id"], "conversations": WITH_IMAGE}, "image placeholder mismatch",
                                  "placeholder(s) but no 'image'"),
    "image without placeholder": ({**GOOD, "conversations": TWO_TURNS}, "image placeholder mismatch",
                                  "an image but 0 <image> placeholders"),
    "two placeholders": ({**GOOD, "conversations": [{"from": "human", "value": "<image> <image> hi"}, TWO_TURNS[1]]},
                         "image placeholder mismatch", "an image but 2"),
    "placeholder in an answer": ({**GOOD, "conversations": [WITH_IMAGE[0], {"from": "gpt", "value": "<image>"}]},
                                 "image placeholder mismatch", "outside a human turn"),
    "missing image": ({**GOOD, "image": "nope.png"}, "missing image", "nope.png does not exist"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_records_raise_with_file_record_and_problem(case, proc, tmp_path, folder):
    record, kind, text = BAD[case]
    f = write(tmp_path / "data.jsonl", [{**GOOD, "id": "ok-0"}, record])
    with pytest.raises(DataError) as err:
        ConversationDataset(f, proc, folder)
    msg = str(err.value)
    assert msg.startswith(f"{f}: record #1 (id 'ok-1'): {kind}: ") and text in msg, msg
    assert err.value.kind == kind and err.value.index == 1
    report = check_data(f, folder)  # the checker finds the same problem and only that one
    assert [(e.index, e.kind) for e in report.problems] == [(1, kind)]


def test_corrupt_image_is_found_when_opened(proc, tmp_path, folder):
    f = write(tmp_path / "c.json", [GOOD, {**GOOD, "id": "corrupt-7", "image": "bad.png"}])
    ds = ConversationDataset(f, proc, folder)  # exists, so the up-front check passes
    assert len(ds) == 2 and "pixel_values" in ds[0]
    with pytest.raises(DataError, match=r"c\.json: record #1 \(id 'corrupt-7'\): corrupt image: .*bad\.png cannot be"):
        ds[1]
    assert check_data(f, folder).problems == []
    assert [e.kind for e in check_data(f, folder, open_images=True).problems] == ["corrupt image"]


def test_unreadable_files_name_the_line_or_record(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"id": "a", "conversations": []}\n{"id": "b", "conv')
    with pytest.raises(DataError, match=r"x\.jsonl: unreadable file: invalid JSON on line 2"):
        load_conversations(tmp_path / "x.jsonl")
    (tmp_path / "y.json").write_text('[{"id": "a", "conversations": []}, "just text"]')
    with pytest.raises(DataError, match=r"y\.json: record #1: malformed record: not a JSON object"):
        load_conversations(tmp_path / "y.json")
    (tmp_path / "z.json").write_text("[]")
    with pytest.raises(DataError, match="no records"):
        load_conversations(tmp_path / "z.json")
    with pytest.raises(FileNotFoundError, match="no such conversation file"):
        load_conversations(tmp_path / "missing.json")


def test_json_and_jsonl_load_the_same(tmp_path):
    recs = [GOOD, {"id": 3, "conversations": TWO_TURNS}]
    a, b = load_conversations(write(tmp_path / "a.json", recs)), load_conversations(write(tmp_path / "b.jsonl", recs))
    assert a[:] == b[:] and len(a) == 2 and a[1]["image"] is None and a[1]["id"] == 3


def test_skip_policy_counts_and_reports_once(proc, tmp_path, folder, caplog):
    recs = [GOOD, {**GOOD, "id": "gone", "image": "gone.png"}, {"id": "t", "conversations": TWO_TURNS},
            {**GOOD, "id": "q", "conversations": WITH_IMAGE[:1]}, {**GOOD, "id": "c", "image": "bad.png"},
            {**GOOD, "id": "m", "image": "gone2.png"}]
    f = write(tmp_path / "mix.json", recs)
    with caplog.at_level(logging.WARNING, logger="compodistill.data"):
        ds = ConversationDataset(f, proc, folder, on_error="skip")
    assert ds.report.counts == {"missing image": 2, "no gpt turn": 1}
    assert len(ds) == 3 and ds.indices == [0, 2, 4]
    summary = [r.getMessage() for r in caplog.records]
    assert len(summary) == 1 and "6 records, 3 bad" in summary[0] and "missing image: 2" in summary[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="compodistill.data"):
        epochs = [[ds[i] for i in range(len(ds))] for _ in range(2)]
    # the corrupt image is replaced by the next good record, counted and logged once over two epochs
    assert ds.report.counts == {"missing image": 2, "no gpt turn": 1, "corrupt image": 1}
    assert len(caplog.records) == 1 and "(id 'c'): corrupt image" in caplog.records[0].getMessage()
    assert all(torch.equal(e[2]["input_ids"], e[0]["input_ids"]) for e in epochs)
    # a file with no good record at all is an error even when skipping
    with pytest.raises(DataError, match=r"all\.json: no usable record: all 2 records are bad"):
        ConversationDataset(write(tmp_path / "all.json", [recs[1], recs[3]]), proc, folder, on_error="skip")
    # the default policy stops at the first bad record and says how many more there are
    with pytest.raises(DataError, match=r"record #1 \(id 'gone'\): missing image: .*\(and 2 more bad records"):
        ConversationDataset(f, proc, folder)


def test_text_only_and_plain_through_the_dataset(tok, proc, tmp_path, folder):
    f = write(tmp_path / "p.json", [{**GOOD, "conversations": WITH_IMAGE[:2]},
                                    {"id": "t", "conversations": TWO_TURNS[:2]}])
    ds = ConversationDataset(f, proc, folder, template="plain")
    assert ds[0]["input_ids"].tolist()[:16] == [tok.image_token_id] * 16
    assert "pixel_values" not in ds[1]
    bad = write(tmp_path / "p2.json", [{"id": "many", "conversations": TWO_TURNS}])
    with pytest.raises(DataError, match=r"p2\.json: record #0 \(id 'many'\): malformed record: the plain template"):
        ConversationDataset(bad, proc, template="plain")[0]
    with pytest.raises(FileNotFoundError, match="image folder .*nowhere does not exist"):
        ConversationDataset(f, proc, tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown template"):
        ConversationDataset(f, proc, folder, template="vicuna")
    with pytest.raises(ValueError, match="on_error"):
        ConversationDataset(f, proc, folder, on_error="ignore")


def _samples():
    t = lambda *xs: torch.tensor(xs)
    return [dict(input_ids=t(5, 6, 7), attention_mask=t(1, 1, 1), labels=t(-100, 6, 7)),
            dict(input_ids=t(8), attention_mask=t(1), labels=t(8), pixel_values=torch.ones(3, 2, 2))]


def test_collator_pads_right_and_left(tok):
    right = DataCollator(tok)(_samples())
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]] and tok.pad_token_id == 0
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert right["pixel_values"].shape == (1, 3, 2, 2)
    left = DataCollator(tok, padding_side="left")(_samples())
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert left["labels"].tolist() == [[-100, 6, 7], [-100, -100, 8]]
    assert "pixel_values" not in DataCollator(tok)(_samples()[:1])
    tok.pad_token = None
    with pytest.raises(ValueError, match="no pad token"):
        DataCollator(tok)


def _model_and_data(tok, proc, tmp_path, folder):
    recs = [{"id": "r", "image": "red.png", "conversations": WITH_IMAGE},
            {"id": "t", "conversations": TWO_TURNS},
            {"id": "b", "image": "blue.png",
             "conversations": [{"from": "human", "value": "<image>\nwhat colour is the square ?"},
                               {"from": "gpt", "value": "blue ."}]},
            {"id": "t2", "conversations": TWO_TURNS[:2]}]
    ds = ConversationDataset(write(tmp_path / "train.json", recs), proc, folder)
    return build_llava(preset_config("tiny", "student", len(tok), tok.image_token_id), seed=0), ds


def test_mixed_text_and_image_batch_runs_through_the_model(tok, proc, tmp_path, folder):
    model, ds = _model_and_data(tok, proc, tmp_path, folder)
    batch = DataCollator(proc)([ds[1], ds[0], ds[3], ds[2]])
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    with torch.no_grad(): out = model(**batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(out.loss)
    # the image actually reaches the model: other pixels, other logits on the image sample only
    batch2 = {**batch, "pixel_values": batch["pixel_values"].flip(0)}
    with torch.no_grad(): out2 = model(**batch2)
    assert not torch.allclose(out.logits[1], out2.logits[1]) and torch.allclose(out.logits[0], out2.logits[0])


def test_a_few_training_steps_lower_the_loss(tok, proc, tmp_path, folder):
    model, ds = _model_and_data(tok, proc, tmp_path, folder)
    model.train()
    loader = torch.utils.data.DataLoader(ds, batch_size=2, shuffle=False, collate_fn=DataCollator(proc))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def epoch_loss():
        with torch.no_grad(): return sum(model(**b).loss.item() for b in loader) / len(loader)

    before = epoch_loss()
    for _ in range(4):
        for batch in loader:
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad()
    assert epoch_loss() < before - 0.3
