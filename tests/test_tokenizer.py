from lcmvideo.models.tokenizer import VOCAB_SIZE, load_tokenizer


def test_real_clip_vocabulary():
    tok = load_tokenizer()
    assert len(tok) == VOCAB_SIZE == 49408
    # ids of the public CLIP ViT-L/14 tokenizer (openai/clip-vit-large-patch14)
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok.model_max_length == 77
    assert tok.pad_token_id == tok.eos_token_id == 49407
    padded = tok("a cat", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[-1] == 49407
