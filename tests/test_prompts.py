"""Prompt templates and the original's prompt ensembling (mean of un-normalised embeddings)."""
import pytest
import torch

from regionclip.clip import (
    PROMPT_TEMPLATES,
    TextTransformer,
    build_prompts,
    ensemble_text_embeddings,
    get_tokenizer,
    prompt_engineering,
)


@pytest.fixture(scope="module")
def text_tower():
    torch.manual_seed(0)
    tower = TextTransformer(width=64, heads=4, layers=2, embed_dim=32).eval()
    with torch.no_grad():  # non-trivial biases / norms so every part of the tower matters
        for name, tensor in tower.state_dict().items():
            if tensor.dim() == 1:
                tensor.add_(torch.randn_like(tensor) * 0.1)
    return tower


def test_templates():
    assert len(PROMPT_TEMPLATES) == 81
    assert PROMPT_TEMPLATES[:5] == ("{}.", "a photo of a {}.", "a bad photo of a {}.",
                                    "a photo of many {}.", "a sculpture of a {}.")
    assert PROMPT_TEMPLATES[-1] == "a tattoo of the {}."
    assert all(t.count("{}") == 1 for t in PROMPT_TEMPLATES)
    assert len(set(PROMPT_TEMPLATES)) == 81


def test_prompt_engineering():
    assert prompt_engineering("hot dog, frankfurter+bun", "a photo of a {}.") == \
        "a photo of a hot dog frankfurter bun."
    prompts = build_prompts("traffic light")
    assert len(prompts) == 81
    assert prompts[0] == "traffic light." and prompts[37] == "a traffic light in a video game."


def _independent_ensemble(tower, name):
    tokenizer = get_tokenizer()
    rows = []
    for template in PROMPT_TEMPLATES:
        prompt = template.replace("{}", name.replace(",", "").replace("+", " "))
        ids = ([tokenizer.sot_token_id] + tokenizer.encode(prompt) + [tokenizer.eot_token_id])[:77]
        tokens = torch.zeros(1, 77, dtype=torch.long)
        tokens[0, :len(ids)] = torch.tensor(ids)
        with torch.no_grad():
            rows.append(tower.encode_text(tokens)[0])
    return torch.stack(rows).sum(dim=0) / len(rows)


def test_ensemble_equals_mean_of_unnormalised_embeddings(text_tower):
    long_name = "dog " * 80  # every prompt is cut at 77 tokens
    names = ["person", "hot dog, sausage", long_name]
    expected = torch.stack([_independent_ensemble(text_tower, n) for n in names])
    for batch_size in (50, 400):  # one name per call; several names per call
        ours = ensemble_text_embeddings(text_tower.encode_text, names, batch_size=batch_size)
        assert ours.shape == (3, 32)
        assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-6)
    # The normalise-average-renormalise recipe of OpenAI gives something else.
    assert not torch.allclose(ours.norm(dim=-1), torch.ones(3), atol=1e-3)


def test_without_prompt_ensemble_uses_raw_text(text_tower):
    names = ["person", "a red car"]
    with torch.no_grad():
        expected = text_tower.encode_text(get_tokenizer().tokenize(names))
    ours = ensemble_text_embeddings(text_tower, names, prompt_ensemble=False)
    assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-6)


def test_progress_bar_and_errors(text_tower, capsys):
    ensemble_text_embeddings(text_tower.encode_text, ["cat", "dog"], progress=True)
    assert "concept embeddings" in capsys.readouterr().err
    with pytest.raises(ValueError, match="empty"):
        ensemble_text_embeddings(text_tower.encode_text, [])
    with pytest.raises(TypeError, match="one string"):
        ensemble_text_embeddings(text_tower.encode_text, "cat")
    with pytest.raises(ValueError, match=r"shape \(81,\)"):
        ensemble_text_embeddings(lambda tokens: tokens[:, 0].float(), ["cat"])
