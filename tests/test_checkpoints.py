"""Tokenizer, chat template, processor, assembling from parts, and checkpoint save/load."""
import json

import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoProcessor, LlavaForConditionalGeneration

from compodistill.checkpoints import (IMAGE_TOKEN, _load_vision_tower, assemble_llava, load_llava, make_processor,
                                      save_llava, save_random_parts, word_tokenizer)
from compodistill.compat import IncompatiblePairError, check_compatible
from compodistill.models import (CompoDistillLlavaForConditionalGeneration, WideProjector, build_llava, build_pair,
                                 dummy_batch, preset_config, set_projector, visual_token_count)

MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour is the circle?"}]},
            {"role": "assistant", "content": "red"},
            {"role": "user", "content": "what shape is left of the square?"},
            {"role": "assistant", "content": "circle"}]


def _supervised(tok, messages):
    enc = tok.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    return tok.convert_ids_to_tokens([i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m])


def test_assistant_mask_covers_exactly_the_answers_and_eos(tok):
    assert _supervised(tok, MESSAGES) == ["red", "</s>", "circle", "</s>"]


def test_chat_template_text(tok):
    text = tok.apply_chat_template(MESSAGES[:1], tokenize=False, add_generation_prompt=True)
    assert text.endswith("USER: <image>\nwhat colour is the circle? ASSISTANT:")
    assert text.startswith("A chat between a curious user")


def test_processor_expands_image_to_patch_count(tok):
    cfg = preset_config("small", "student", vocab_size=len(tok), image_token_id=tok.image_token_id)
    proc = make_processor(tok, cfg.vision_config)
    text = proc.apply_chat_template(MESSAGES[:1], add_generation_prompt=True)
    enc = proc(images=Image.new("RGB", (100, 80), "blue"), text=text, return_tensors="pt")
    assert (enc["input_ids"] == tok.image_token_id).sum().item() == visual_token_count(cfg.vision_config) == 64
    assert enc["pixel_values"].shape == (1, 3, 64, 64)
    assert enc["pixel_values"].min() >= -1 and enc["pixel_values"].max() <= 1


def test_processor_round_trip(tok, tmp_path):
    cfg = preset_config("tiny", "student", vocab_size=len(tok), image_token_id=tok.image_token_id)
    proc = make_processor(tok, cfg.vision_config)
    proc.save_pretrained(tmp_path)
    again = AutoProcessor.from_pretrained(tmp_path)
    text = proc.apply_chat_template(MESSAGES)
    image = Image.new("RGB", (32, 32), "red")
    a, b = proc(images=image, text=text, return_tensors="pt"), again(images=image, text=text, return_tensors="pt")
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])
    assert again.chat_template == proc.chat_template


def _same(module, reference, prefix=""):
    sd = module.state_dict()
    return len(sd) > 0 and all(torch.equal(v, reference[prefix + k]) for k, v in sd.items())


def test_assemble_reproduces_the_parts_weights_exactly(tmp_path):
    tok = word_tokenizer(["red", "circle"])          # saved with the LLM, without <image>
    llm_dir, vision_dir = save_random_parts(tmp_path, tok, "tiny", seed=3)
    model, proc = assemble_llava(llm_dir, vision_dir)
    lm = AutoModelForCausalLM.from_pretrained(llm_dir).state_dict()
    assert _same(model.model.language_model, lm, "model.") and _same(model.lm_head, lm, "lm_head.")
    assert _same(model.model.vision_tower, _load_vision_tower(vision_dir, None, "sdpa").state_dict())
    assert model.config.text_config is model.model.language_model.config
    assert model.config.image_token_id == proc.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def test_assemble_resizes_embeddings_when_the_image_token_is_new(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    raw = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "red": 2}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="</s>", pad_token="</s>")
    llm_dir, vision_dir = save_random_parts(tmp_path, tok, "tiny")
    model, proc = assemble_llava(llm_dir, vision_dir)
    assert model.config.text_config.vocab_size == len(proc.tokenizer) == 4
    assert model.config.image_token_id == 3


def test_assembled_model_runs_saves_and_reloads_identically(tmp_path):
    tok = word_tokenizer(["red", "circle", "what", "is", "this", "?"])
    model, proc = assemble_llava(*save_random_parts(tmp_path / "parts", tok, "tiny"))
    enc = proc(images=Image.new("RGB", (40, 40), "red"), return_tensors="pt",
               text=proc.apply_chat_template(MESSAGES[:1], add_generation_prompt=True))
    with torch.no_grad(): before = model(**enc).logits
    path = save_llava(model, proc, tmp_path / "ckpt")
    assert (path / "model.safetensors").is_file() and not list(path.glob("*.bin"))
    plain = LlavaForConditionalGeneration.from_pretrained(path)        # no compodistill needed to load it
    reloaded, reproc = load_llava(path)
    with torch.no_grad():
        assert torch.equal(reloaded(**enc).logits, before)
        assert torch.equal(plain(**enc).logits, before)
    assert reproc.chat_template == proc.chat_template
    out = reloaded.generate(**enc, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 3


def test_save_replaces_atomically_and_keeps_the_old_checkpoint_on_failure(tok, tmp_path):
    cfg = preset_config("tiny", "student", vocab_size=len(tok), image_token_id=tok.image_token_id)
    proc = make_processor(tok, cfg.vision_config)
    first, second = build_llava(cfg, seed=0), build_llava(cfg, seed=1)
    path = save_llava(first, proc, tmp_path / "ckpt")
    save_llava(second, proc, path)
    w = "model.language_model.embed_tokens.weight"
    assert torch.equal(load_llava(path)[0].state_dict()[w], second.state_dict()[w])

    class Broken:
        def save_pretrained(self, d): raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"): save_llava(first, Broken(), path)
    assert torch.equal(load_llava(path)[0].state_dict()[w], second.state_dict()[w])
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["ckpt"]


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"): load_llava(tmp_path / "nothing")
    llm_dir, vision_dir = save_random_parts(tmp_path, word_tokenizer(["red"]), "tiny")
    with pytest.raises(ValueError, match=f"{llm_dir}/config.json: model_type is 'qwen2'"): load_llava(llm_dir)
    with pytest.raises(ValueError, match="is not a vision tower"): assemble_llava(llm_dir, llm_dir)


def test_load_own_type_and_older_wide_exports(tok, tmp_path):
    "`compodistill_llava` checkpoints load with their class; a wide export written as `llava` (before that type) still loads."
    cfg = preset_config("tiny", "student", vocab_size=len(tok), image_token_id=tok.image_token_id)
    model = set_projector(build_llava(cfg, seed=0), WideProjector(cfg.vision_config.hidden_size, 48, cfg.text_config.hidden_size))
    batch = dummy_batch(model.config)
    with torch.no_grad(): before = model(**batch).logits
    path = save_llava(model, make_processor(tok, cfg.vision_config), tmp_path / "wide")
    again, _ = load_llava(path)
    assert type(again) is CompoDistillLlavaForConditionalGeneration
    with torch.no_grad(): assert torch.equal(again(**batch).logits, before)
    conf = json.loads((path / "config.json").read_text())
    conf.update(model_type="llava", architectures=["LlavaForConditionalGeneration"])
    (path / "config.json").write_text(json.dumps(conf))
    old, _ = load_llava(path)
    assert type(old) is LlavaForConditionalGeneration and type(old.model.multi_modal_projector) is WideProjector
    with torch.no_grad(): assert torch.equal(old(**batch).logits, before)

def test_tokenizer_mismatch_is_named(tok):
    teacher, student = build_pair("tiny", vocab_size=len(tok), image_token_id=tok.image_token_id)
    cfg = teacher.config.vision_config
    other = word_tokenizer(["red", "circle", "triangle"])
    with pytest.raises(IncompatiblePairError, match="tokenizers differ"):
        check_compatible(teacher, student, make_processor(tok, cfg), make_processor(other, cfg))
    check_compatible(teacher, student, make_processor(tok, cfg), make_processor(tok, cfg))


def test_the_bare_template_holds_the_turns_alone_and_supervises_only_the_answers():
    from compodistill.checkpoints import BARE_TEMPLATE, TEMPLATES
    tok = word_tokenizer("colour circle red ?".split(), TEMPLATES["bare"])
    turns = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "colour circle ?"}]},
             {"role": "assistant", "content": "red"}, {"role": "user", "content": "colour circle ?"},
             {"role": "assistant", "content": "red"}]
    out = tok.apply_chat_template(turns, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert tok.convert_ids_to_tokens(out["input_ids"]) == ["<image>", "colour", "circle", "?", "red", "</s>",
                                                           "colour", "circle", "?", "red", "</s>"]
    assert out["assistant_masks"] == [0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1]
    assert tok.apply_chat_template(turns[:1], tokenize=False, add_generation_prompt=True) == "<image>\ncolour circle ? "
    assert tok.chat_template == BARE_TEMPLATE and word_tokenizer(["a"]).chat_template == TEMPLATES["chat"]
