"""Randomly initialised vision-language models of standard architectures, built from config (no download).

They produce nonsense, but they go through exactly the loading and generation path a real BLIP or LLaVA
checkpoint takes (AutoProcessor, AutoModelForImageTextToText, chat template, batched generate).
"""

from __future__ import annotations

from pathlib import Path

WORDS = ("a photo of the dog cat car red blue green on with and an in is this image picture small big "
         "here original alt-text rewrite it into one caption that true to keep what gets right correct").split()
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
                 "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }}{% endif %}{% endfor %} "
                 "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def _vocab(specials: list[str]) -> dict[str, int]:
    tokens = specials + list(dict.fromkeys(WORDS)) + [c for c in "abcdefghijklmnopqrstuvwxyz" if c not in WORDS]
    tokens += [".", ",", ":", "-", '"', "!", "?", "'"]
    return {t: i for i, t in enumerate(tokens)}


def build_blip(out: Path) -> Path:
    """BlipForConditionalGeneration (an image-to-text captioner, BERT-style text decoder), 32 px, random."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    vocab = _vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"])
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]")
    torch.manual_seed(0)
    config = BlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, bos_token_id=vocab["[DEC]"],
                         pad_token_id=vocab["[PAD]"], sep_token_id=vocab["[SEP]"], eos_token_id=vocab["[SEP]"]),
        projection_dim=32)
    BlipForConditionalGeneration(config).save_pretrained(out)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(out)
    return out


def build_llava(out: Path) -> Path:
    """LlavaForConditionalGeneration (a chat model: CLIP vision tower, projector, Llama decoder), 32 px, random."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    vocab = _vocab(["<pad>", "<unk>", "<s>", "</s>", "<image>", "USER", "ASSISTANT"])
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                     pre_tokenizers.Punctuation()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                        bos_token="<s>", eos_token="</s>",
                                        extra_special_tokens={"image_token": "<image>"})
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8, projection_dim=32),
        text_config=dict(model_type="llama", vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=256, pad_token_id=vocab["<pad>"], bos_token_id=vocab["<s>"],
                         eos_token_id=vocab["</s>"]),
        image_token_index=vocab["<image>"], vision_feature_select_strategy="default", vision_feature_layer=-1)
    LlavaForConditionalGeneration(config).save_pretrained(out)
    LlavaProcessor(image_processor=CLIPImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False),
                   tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1,
                   chat_template=CHAT_TEMPLATE).save_pretrained(out)
    return out
